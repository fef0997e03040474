"""The run lock of a destination: one ``compress`` at a time on a DEST, also on shared file systems.

Two locks, both taken by :func:`acquire` and released by :meth:`RunLock.release`:

1. an ``flock`` on ``DEST/.empcompress/lock``: the kernel drops it when the process dies (even
   on ``kill -9``), so on a local disk a dead run never blocks the next one. On network file
   systems it is not enough: ``flock`` is node-local on Lustre mounted with ``localflock``, fails
   on ``noflock`` mounts, and on some NFS setups is not seen by other clients;
2. an **owner file** ``DEST/.empcompress/lock.owner`` created atomically (written under a unique
   name, then ``link()``-ed to its final name, which fails if the name exists: atomic on NFS v2-4,
   Lustre, GPFS and local disks), holding the owner's host name, pid, the process's start time
   and the machine's boot id. Every file system that keeps names consistent between clients sees
   it, whatever its locking.

An owner file left by a run that died is *stale* and is taken over only when that is provably
safe: it was written on this host (same host name) and either the same boot (same boot id) with
its process gone (no such pid, or a pid reused by a process that started later), or a boot that
ended before this one started (other boot id, written before this machine booted). An owner file
from another host is never taken over automatically: the message names the host and pid and says
how to remove it once that run is known to be gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from .errors import JournalLockedError, PipelineError

__all__ = ["LOCK_FILENAME", "OWNER_FILENAME", "RunLock", "acquire", "check_free"]

LOCK_FILENAME = "lock"
OWNER_FILENAME = "lock.owner"
_FLOCK_UNSUPPORTED = {errno.ENOLCK, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


@dataclass
class RunLock:
    """A held run lock (flock handle, when the file system gave one, and our owner file)."""

    state_dir: Path
    handle: TextIO | None
    token: str

    def release(self) -> None:
        owner = self.state_dir / OWNER_FILENAME
        if _read_owner(owner).get("token") == self.token:
            with contextlib.suppress(OSError):
                owner.unlink()
        if self.handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return ""


def boot_time() -> float:
    """When this machine booted (seconds since the epoch; 0 when unknown)."""
    try:
        for line in Path("/proc/stat").read_text(encoding="ascii").splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0.0


def process_start_ticks(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 when unknown or gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _this_owner(token: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start_ticks": process_start_ticks(os.getpid()),
        "boot_id": boot_id(),
        "started": time.time(),
        "token": token,
    }


def _read_owner(path: Path) -> dict[str, Any]:
    """The owner file's record ({} when there is none; {"unreadable": True} when it cannot be parsed)."""
    try:
        with open(path, "rb") as handle:  # a small file of ours; a directory or other oddity fails here
            data = handle.read(4096)
    except FileNotFoundError:
        return {}
    except OSError:
        return {"unreadable": True}
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"unreadable": True}
    return record if isinstance(record, dict) else {"unreadable": True}


def describe(owner: dict[str, Any]) -> str:
    if not owner or owner.get("unreadable"):
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))
    return f"pid {owner.get('pid')} on {owner.get('host')}, started {started}"


def is_stale(owner: dict[str, Any], *, now_boot_id: str, now_boot_time: float, host: str) -> bool:
    """Whether an owner file was left by a run that provably no longer runs (see the module's doc)."""
    if not owner or owner.get("unreadable") or owner.get("host") != host:
        return False
    try:
        pid = int(owner["pid"])
        started = float(owner["started"])
    except (KeyError, TypeError, ValueError):
        return False
    if owner.get("boot_id") and now_boot_id and owner["boot_id"] != now_boot_id:
        # another boot of this host, or another machine under the same name: only a lock written
        # before this machine booted is certainly dead
        return bool(now_boot_time) and started < now_boot_time
    if not owner.get("boot_id") or not now_boot_id:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, someone else's
    ticks = int(owner.get("pid_start_ticks") or 0)
    now_ticks = process_start_ticks(pid)
    return bool(ticks and now_ticks and now_ticks != ticks)  # the pid was reused by another process


def _refusal(dest: Path, owner: dict[str, Any], state_dir: Path) -> JournalLockedError:
    holder = describe(owner)
    hint = ""
    if owner.get("host") != socket.gethostname():  # another host's (or an unreadable) owner file
        hint = (
            f"; if no empcompress runs there any more (the host crashed), remove "
            f"{state_dir / OWNER_FILENAME} and run again"
        )
    return JournalLockedError(
        f"{dest}: another empcompress run is using this destination ({holder}); two runs on one "
        f"destination are refused: wait for it to finish or stop it, then run again{hint}"
    )


def _flock(state_dir: Path, dest: Path) -> TextIO | None:
    """The flock on ``lock``, or None where the file system does not support flock."""
    path = state_dir / LOCK_FILENAME
    try:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held while the run holds DEST)
    except OSError as error:
        raise PipelineError(f"{path}: cannot lock the destination ({error.strerror})") from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise _refusal(dest, _read_owner(state_dir / OWNER_FILENAME), state_dir) from None
    except OSError as error:
        handle.close()
        if error.errno in _FLOCK_UNSUPPORTED:
            return None  # e.g. Lustre mounted with noflock: the owner file alone keeps runs apart
        raise PipelineError(f"{path}: cannot lock the destination ({error.strerror})") from None
    return handle


def _create_owner(state_dir: Path, record: dict[str, Any]) -> bool:
    """Create the owner file atomically with its content; False when it exists already."""
    owner = state_dir / OWNER_FILENAME
    temporary = state_dir / f"{OWNER_FILENAME}.{record['token']}"
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, owner)
        except FileExistsError:
            return False
        except OSError:
            # NFS: the link may have been made while its reply was lost; the link count tells
            if os.stat(temporary).st_nlink != 2:
                raise
        return True
    except OSError as error:
        raise PipelineError(f"{owner}: cannot lock the destination ({error.strerror})") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()


def _remove_stale(state_dir: Path, stale: dict[str, Any]) -> None:
    """Move a stale owner file away, and put it back if what was moved is not the one judged stale."""
    owner = state_dir / OWNER_FILENAME
    aside = state_dir / f"{OWNER_FILENAME}.stale-{secrets.token_hex(6)}"
    try:
        os.rename(owner, aside)
    except FileNotFoundError:
        return
    if _read_owner(aside).get("token") != stale.get("token"):  # another run took it over meanwhile
        with contextlib.suppress(OSError):
            os.link(aside, owner)
    with contextlib.suppress(OSError):
        aside.unlink()


def acquire(state_dir: Path, *, dest: Path) -> RunLock:
    """Take DEST's run lock; :class:`JournalLockedError` when another run holds it."""
    handle = _flock(state_dir, dest)
    token = secrets.token_hex(8)
    try:
        for _ in range(3):
            if _create_owner(state_dir, _this_owner(token)):
                return RunLock(state_dir=state_dir, handle=handle, token=token)
            owner = _read_owner(state_dir / OWNER_FILENAME)
            if not owner:
                continue  # released meanwhile
            stale = is_stale(
                owner, now_boot_id=boot_id(), now_boot_time=boot_time(), host=socket.gethostname()
            )
            if not stale:
                raise _refusal(dest, owner, state_dir)
            _remove_stale(state_dir, owner)
        raise _refusal(dest, _read_owner(state_dir / OWNER_FILENAME), state_dir)
    except BaseException:
        if handle is not None:
            handle.close()
        raise


def check_free(state_dir: Path, *, dest: Path) -> None:
    """Raise :class:`JournalLockedError` now if another run holds DEST (takes nothing)."""
    if not state_dir.is_dir():
        return
    handle = _flock(state_dir, dest) if (state_dir / LOCK_FILENAME).is_file() else None
    try:
        owner = _read_owner(state_dir / OWNER_FILENAME)
        if owner and not is_stale(
            owner, now_boot_id=boot_id(), now_boot_time=boot_time(), host=socket.gethostname()
        ):
            raise _refusal(dest, owner, state_dir)
    finally:
        if handle is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()
