"""The compress job's journal: rows, exclusive lock, crash safety."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from empcompress import runlock
from empcompress.errors import JournalLockedError, PipelineError
from empcompress.journal import (
    STATE_DONE,
    STATE_FAILED,
    GeneratedEntry,
    Journal,
    JournalEntry,
    ensure_not_locked,
    is_journal_dest,
    journal_path,
)


def _entry(rel_path: str, **changes: object) -> JournalEntry:
    entry = JournalEntry(
        rel_path=rel_path,
        category="movie",
        action="convert",
        state=STATE_DONE,
        source_size_bytes=1234,
        source_mtime_ns=5678,
        output_rel_path=rel_path + ".tif",
        source_sha256="ab" * 32,
        outcome="converted",
        output_size_bytes=99,
        output_sha256="cd" * 32,
        output_md5="ef" * 16,
        stored_dtype="uint8",
        decision="float32 values are exact integers",
        codec="deflate, huffman-only",
        message="",
        attempts=1,
        elapsed_seconds=0.5,
    )
    return replace(entry, **changes)  # type: ignore[arg-type]


def test_rows_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    with Journal.open(tmp_path, source="/src") as journal:
        first = journal.record(_entry("a/movie é 1.mrc"))
        journal.record(_entry("b.txt", action="copy", outcome="copied", output_rel_path="b.txt"))
        journal.record(_entry("c.mrc", state=STATE_FAILED, message="cannot be read (Permission denied)"))
        assert first.updated_at > 0
    assert is_journal_dest(tmp_path)
    with Journal.open(tmp_path, source="/src") as journal:
        entries = journal.entries()
        assert list(entries) == ["a/movie é 1.mrc", "b.txt", "c.mrc"]
        assert entries["a/movie é 1.mrc"] == first
        assert entries["c.mrc"].state == STATE_FAILED
        assert journal.get("missing") is None
        journal.remove("b.txt")
        assert journal.get("b.txt") is None
        # replacing a row keeps one row per file
        journal.record(_entry("c.mrc", attempts=2))
        assert journal.entries()["c.mrc"].attempts == 2


def test_generated_entries_round_trip(tmp_path: Path) -> None:
    with Journal.open(tmp_path, source="/src") as journal:
        journal.record_generated(
            GeneratedEntry(
                "set/gain-reference.mrc", "gain-reference", STATE_DONE, 10, "a" * 64, "b" * 32, '{"n": 3}'
            )
        )
        (entry,) = journal.generated_entries().values()
        assert entry.detail == {"n": 3}
        journal.remove_generated("set/gain-reference.mrc")
        assert journal.generated_entries() == {}


def test_a_second_open_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    with Journal.open(tmp_path, source="/src"):
        with pytest.raises(JournalLockedError) as raised:
            Journal.open(tmp_path, source="/src")
        message = str(raised.value)
        assert str(tmp_path) in message
        assert f"pid {os.getpid()}" in message
        assert "refused" in message
    # released on close
    Journal.open(tmp_path, source="/src").close()


def test_another_source_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path, source="/drive-a").close()
    with pytest.raises(PipelineError, match="made from /drive-a, not /drive-b"):
        Journal.open(tmp_path, source="/drive-b")
    # and the lock was released by the refusal
    Journal.open(tmp_path, source="/drive-a").close()


def test_a_corrupt_journal_gives_a_clear_error(tmp_path: Path) -> None:
    path = journal_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(PipelineError, match="journal cannot be opened"):
        Journal.open(tmp_path, source="/src")


_WRITER = textwrap.dedent(
    """
    import sys
    from empcompress.journal import Journal, JournalEntry
    journal = Journal.open(sys.argv[1], source="/src")
    print("locked", flush=True)
    index = 0
    while True:
        name = f"file-{index:06d}"
        journal.record(JournalEntry(name, "other", "copy", "done", index, index, name, message="x" * 200))
        index += 1
    """
)


def test_kill_9_leaves_a_consistent_journal_and_releases_the_lock(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(JournalLockedError):
            Journal.open(tmp_path, source="/src")
        time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with Journal.open(tmp_path, source="/src") as journal:
        entries = journal.entries()
    assert len(entries) > 0
    for index, (name, entry) in enumerate(sorted(entries.items())):
        # every committed row is whole, and rows were committed in order without gaps
        assert name == f"file-{index:06d}"
        assert entry.source_size_bytes == index and entry.message == "x" * 200
    # and the database passes SQLite's own check
    connection = sqlite3.connect(journal_path(tmp_path))
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()


# ---------------------------------------------------------------- shared file systems


def _mode(dest: Path) -> str:
    connection = sqlite3.connect(journal_path(dest))
    try:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        connection.close()


def test_the_journal_uses_a_rollback_journal_not_wal(tmp_path: Path) -> None:
    """WAL needs one host's shared memory (unsafe on NFS and Lustre); an old WAL journal is converted."""
    path = journal_path(tmp_path)
    path.parent.mkdir(parents=True)
    old = sqlite3.connect(path)
    old.execute("PRAGMA journal_mode=WAL")
    old.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    old.execute("INSERT INTO meta VALUES ('source', '/src')")
    old.commit()
    old.close()
    assert _mode(tmp_path) == "wal"
    with Journal.open(tmp_path, source="/src") as journal:
        journal.record(_entry("a.mrc"))
        assert journal.get_meta("source") == "/src"
    assert _mode(tmp_path) == "delete"
    assert not list(path.parent.glob("*-wal")) and not list(path.parent.glob("*-shm"))
    with Journal.open(tmp_path, source="/src") as journal:
        assert list(journal.entries()) == ["a.mrc"]


def test_a_batch_commits_once_and_keeps_what_was_recorded_when_the_block_fails(tmp_path: Path) -> None:
    with Journal.open(tmp_path, source="/src") as journal:
        with journal.batch():
            journal.record(_entry("a.mrc"))
            journal.record(_entry("b.mrc"))
            with journal.batch():  # nested: the same transaction
                journal.record(_entry("c.mrc"))
            reader = sqlite3.connect(journal_path(tmp_path), timeout=0.1)
            assert reader.execute("SELECT COUNT(*) FROM files").fetchone()[0] == 0  # not committed yet
            reader.close()
        with pytest.raises(KeyboardInterrupt), journal.batch():
            journal.record(_entry("d.mrc"))
            raise KeyboardInterrupt  # a stop: the row of a finished output is kept
    with Journal.open(tmp_path, source="/src") as journal:
        assert list(journal.entries()) == ["a.mrc", "b.mrc", "c.mrc", "d.mrc"]


def test_the_journal_never_leaves_its_process(tmp_path: Path) -> None:
    import pickle

    with Journal.open(tmp_path, source="/src") as journal:
        with pytest.raises(TypeError, match="never sent to a worker"):
            pickle.dumps(journal)
        journal._pid = -1  # as seen from a forked child
        with pytest.raises(PipelineError, match="only by the process that opened it"):
            journal.record(_entry("a.mrc"))
        journal._pid = os.getpid()


def _owner(dest: Path) -> dict[str, object]:
    return json.loads((dest / ".empcompress" / runlock.OWNER_FILENAME).read_text(encoding="utf-8"))


def _write_owner(dest: Path, **record: object) -> None:
    state = dest / ".empcompress"
    state.mkdir(parents=True, exist_ok=True)
    (state / runlock.OWNER_FILENAME).write_text(json.dumps(record), encoding="utf-8")


def test_the_owner_file_names_host_pid_and_boot_and_goes_on_close(tmp_path: Path) -> None:
    with Journal.open(tmp_path, source="/src"):
        owner = _owner(tmp_path)
        assert owner["host"] == socket.gethostname() and owner["pid"] == os.getpid()
        assert owner["boot_id"] == runlock.boot_id()
    assert not (tmp_path / ".empcompress" / runlock.OWNER_FILENAME).exists()
    assert sorted(p.name for p in (tmp_path / ".empcompress").iterdir()) == ["journal.sqlite", "lock"]


def test_without_flock_the_owner_file_alone_refuses_a_second_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lustre mounted with noflock (flock fails) or localflock (flock not seen by other nodes)."""

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    with Journal.open(tmp_path, source="/src"):
        with pytest.raises(JournalLockedError, match=f"pid {os.getpid()} on "):
            Journal.open(tmp_path, source="/src")
        with pytest.raises(JournalLockedError):
            ensure_not_locked(tmp_path)
    Journal.open(tmp_path, source="/src").close()


def test_a_run_on_another_host_is_refused_and_never_taken_over(tmp_path: Path) -> None:
    _write_owner(
        tmp_path, host="node-17", pid=os.getpid(), boot_id="x", started=time.time() - 86400 * 30, token="t"
    )
    for attempt in (lambda: Journal.open(tmp_path, source="/src"), lambda: ensure_not_locked(tmp_path)):
        with pytest.raises(JournalLockedError) as raised:
            attempt()
        message = str(raised.value)
        assert "on node-17" in message and f"remove {tmp_path}/.empcompress/lock.owner" in message
    assert _owner(tmp_path)["host"] == "node-17"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_owner_files_of_this_host_are_taken_over_only_when_provably_dead(tmp_path: Path) -> None:
    host, boot = socket.gethostname(), runlock.boot_id()
    if not boot:
        pytest.skip("no boot id on this system (/proc/sys/kernel/random/boot_id)")
    now = time.time()
    # a dead process of this boot
    _write_owner(tmp_path, host=host, pid=_dead_pid(), boot_id=boot, started=now, token="dead")
    with Journal.open(tmp_path, source="/src"):
        assert _owner(tmp_path)["pid"] == os.getpid()
    # a live process of this boot whose pid now belongs to a process started later (pid reused)
    _write_owner(
        tmp_path, host=host, pid=os.getpid(), boot_id=boot, started=now, pid_start_ticks=1, token="reused"
    )
    Journal.open(tmp_path, source="/src").close()
    # an earlier boot of this host (written before this machine booted)
    _write_owner(tmp_path, host=host, pid=os.getpid(), boot_id="earlier", started=0.0, token="boot")
    Journal.open(tmp_path, source="/src").close()
    # another machine under the same name (other boot id, written since this one booted): refused
    _write_owner(tmp_path, host=host, pid=1, boot_id="other-machine", started=now, token="twin")
    with pytest.raises(JournalLockedError):
        Journal.open(tmp_path, source="/src")
    # this very process, alive: refused (an unreadable owner file too)
    _write_owner(
        tmp_path,
        host=host,
        pid=os.getpid(),
        boot_id=boot,
        started=now,
        pid_start_ticks=runlock.process_start_ticks(os.getpid()),
        token="alive",
    )
    with pytest.raises(JournalLockedError):
        Journal.open(tmp_path, source="/src")
    (tmp_path / ".empcompress" / runlock.OWNER_FILENAME).write_bytes(b"\xff not json")
    with pytest.raises(JournalLockedError, match="another process"):
        Journal.open(tmp_path, source="/src")


_HOLDER_WITHOUT_FLOCK = textwrap.dedent(
    """
    import sys, time
    from empcompress import runlock
    runlock._flock = lambda state_dir, dest: None  # another node: its flock is not seen here
    from empcompress.journal import Journal
    journal = Journal.open(sys.argv[1], source=sys.argv[2])
    print("locked", flush=True)
    time.sleep(120)
    """
)


def test_a_second_compress_from_another_process_is_refused_without_flock(tmp_path: Path) -> None:
    source = tmp_path / "drive"
    source.mkdir()
    (source / "a.txt").write_text("a", encoding="utf-8")
    dest = tmp_path / "bag"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER_WITHOUT_FLOCK, str(dest), str(source.resolve())],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        done = subprocess.run(
            [sys.executable, "-m", "empcompress", "compress", str(source), str(dest)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert "another empcompress run is using this destination" in done.stderr
        assert f"pid {holder.pid} on {socket.gethostname()}" in done.stderr
        assert not (dest / "data" / "a.txt").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its owner file is stale (this host, pid gone) and taken over
    Journal.open(dest, source=str(source.resolve())).close()
