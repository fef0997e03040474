"""Reading frames ahead: hints to the kernel (``posix_fadvise``), ``O_DIRECT`` reads past the page cache,
and what of a file the page cache holds (``cachestat``).

Used by :class:`~empcompress.mrc.movie.MrcMovie` (``prefetch``, ``read_ahead``); helper threads,
one per movie and kind, that the movie closes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import platform
import stat
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

#: The read-ahead window assumed where the file system does not say (Linux's default).
DEFAULT_READ_AHEAD_BYTES = 128 * 1024
#: Largest piece of a frame hinted at once (a window of more than this is unusual).
MAX_PREFETCH_PIECE_BYTES = 16 << 20


def read_ahead_window_bytes(path: str | os.PathLike[str]) -> int:
    """The read-ahead window of the device or file system holding ``path`` (``read_ahead_kb``).

    Linux reads at most this much (or the device's largest request, if larger) per
    ``posix_fadvise(WILLNEED)`` call, whatever length the call names: hints are given in
    pieces of this size. :data:`DEFAULT_READ_AHEAD_BYTES` where it is not known.
    """
    try:
        device = os.stat(path).st_dev
    except OSError:
        return DEFAULT_READ_AHEAD_BYTES
    name = f"{os.major(device)}:{os.minor(device)}"
    for candidate in (  # the backing device (also network file systems), a disk, a partition's disk
        f"/sys/class/bdi/{name}/read_ahead_kb",
        f"/sys/dev/block/{name}/queue/read_ahead_kb",
        f"/sys/dev/block/{name}/../queue/read_ahead_kb",
    ):
        try:
            window_bytes = int(Path(candidate).read_text().strip()) * 1024
        except (OSError, ValueError):
            continue
        if window_bytes > 0:
            return min(window_bytes, MAX_PREFETCH_PIECE_BYTES)
    return DEFAULT_READ_AHEAD_BYTES


#: Size of the pages the page cache holds (4 KiB on most machines; 16 or 64 KiB on some ARM and POWER).
PAGE_BYTES = mmap.PAGESIZE

#: Linux's ``cachestat`` system call (Linux 6.5+), numbered from the table most architectures share.
_CACHESTAT_SYSCALL = 451
#: The machines (``platform.machine()``) whose Linux takes that number (alpha and MIPS number it otherwise).
_CACHESTAT_MACHINES = frozenset(
    {
        "x86_64",
        "i386",
        "i686",
        "aarch64",
        "armv6l",
        "armv7l",
        "armv8l",
        "riscv64",
        "ppc64le",
        "ppc64",
        "s390x",
        "loongarch64",
    }
)


class _CachestatRange(ctypes.Structure):
    _fields_ = [("offset_bytes", ctypes.c_uint64), ("length_bytes", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


class _CachestatCall:
    """``cachestat(2)`` through the C library, or nothing where this kernel or platform has none."""

    def __init__(self) -> None:
        self.missing = not sys.platform.startswith("linux") or platform.machine() not in _CACHESTAT_MACHINES
        self._syscall: Callable[..., int] | None = None

    def count(self, descriptor: int, offset_bytes: int, length_bytes: int) -> int | None:
        if self.missing:
            return None
        if self._syscall is None:
            try:
                function = ctypes.CDLL(None, use_errno=True).syscall
            except (OSError, AttributeError):
                self.missing = True
                return None
            function.restype = ctypes.c_long
            self._syscall = function
        span = _CachestatRange(offset_bytes, length_bytes)
        found = _Cachestat()
        result = self._syscall(
            ctypes.c_long(_CACHESTAT_SYSCALL),
            ctypes.c_int(descriptor),
            ctypes.byref(span),
            ctypes.byref(found),
            ctypes.c_uint(0),
        )
        if result != 0:
            if ctypes.get_errno() == errno.ENOSYS:  # before Linux 6.5: never ask again
                self.missing = True
            return None
        return int(found.nr_cache)


_cachestat = _CachestatCall()


def cached_page_count(descriptor: int, offset_bytes: int, length_bytes: int) -> int | None:
    """How many pages of ``length_bytes`` at ``offset_bytes`` of the open file are in the page cache,
    pages being read into it included, from Linux's ``cachestat``: it reads nothing and changes nothing.

    None where it cannot be told: Linux before 6.5 or another platform; a file the process may not
    write, from Linux 6.14 (and kernels given that fix: the page-cache state only of files one owns or
    may write, as for ``mincore``); a seccomp filter that refuses the call. A file system whose pages
    are another file's counts none of them (overlayfs): see :func:`page_cache_counted`.
    """
    if length_bytes <= 0:  # (a length of 0 means "to the end of the file" to cachestat)
        return 0
    return _cachestat.count(descriptor, offset_bytes, length_bytes)


def page_cache_counted(descriptor: int) -> bool:
    """Whether :func:`cached_page_count` tells what the page cache holds of this open file: its first
    page, read now (an MRC file's header, just read: no I/O), is counted. False where the kernel cannot
    count, and on a file system whose pages are another file's (overlayfs counts none)."""
    try:
        if not os.pread(descriptor, 1, 0):
            return False
    except OSError:
        return False
    return bool(cached_page_count(descriptor, 0, 1))


class _Prefetcher:
    """Hints one frame at a time to the kernel from a helper thread, piece by piece.

    ``posix_fadvise(WILLNEED)`` is partly synchronous (it waits while the device's queue is
    full) and Linux reads at most one read-ahead window per call (measured: 8 of a 64 MiB
    frame), so the whole frame is hinted window by window, off the caller's thread. Nothing
    is read into the process: the kernel fills its page cache, and the caller's own read of
    the frame (the only one) then finds it there. A new hint supersedes an unfinished one.
    """

    def __init__(self, descriptor: int, piece_bytes: int) -> None:
        self.descriptor = descriptor
        self.piece_bytes = piece_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="empcompress-prefetch")
        self._generation = 0
        self._lock = threading.Lock()

    def hint(self, offset: int, size_bytes: int) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._pool.submit(self._advise, generation, offset, size_bytes)

    def _advise(self, generation: int, offset: int, size_bytes: int) -> None:
        end = offset + size_bytes
        for start in range(offset, end, self.piece_bytes):
            if self._generation != generation:  # superseded, or closing
                return
            with contextlib.suppress(OSError):
                os.posix_fadvise(
                    self.descriptor, start, min(self.piece_bytes, end - start), os.POSIX_FADV_WILLNEED
                )

    def close(self) -> None:
        """Stop hinting and wait for the helper: the descriptor may be closed after this."""
        with self._lock:
            self._generation += 1
        self._pool.shutdown(wait=True, cancel_futures=True)


#: Alignment of ``O_DIRECT`` reads: file offset, length and memory (4 KiB covers 512-byte and 4 KiB devices).
DIRECT_BLOCK_BYTES = 4096
#: Largest piece of a frame read with ``O_DIRECT`` at once: closing stops a read between pieces.
DIRECT_PIECE_BYTES = 32 << 20


class _DirectReader:
    """Reads into the movie's own buffer from a helper thread with ``O_DIRECT``: past the page cache.

    A cold source read through the page cache costs the kernel a page-cache fill (one 4 KiB folio
    per page where the read-ahead hints bring it in) and a copy to the process; read directly, the
    device writes into the buffer and neither happens (benchmarks/results-superres.md: a third of a
    warm read's CPU time). Its own descriptor, opened again from the movie's (the same file, checked);
    raises ``OSError`` where the file system refuses ``O_DIRECT``. A read that fails in any way, or
    that the device does not take (``EINVAL``: alignment), returns False and turns direct reads off
    for the movie: the caller then reads the frame as before.
    """

    def __init__(self, descriptor: int) -> None:
        direct = os.open(f"/proc/self/fd/{descriptor}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            opened, original = os.fstat(direct), os.fstat(descriptor)
            if (opened.st_dev, opened.st_ino) != (original.st_dev, original.st_ino) or not stat.S_ISREG(
                opened.st_mode
            ):
                raise OSError("reopened for O_DIRECT, the descriptor is not the movie's file")
        except BaseException:
            os.close(direct)
            raise
        self.descriptor = direct
        self.refused = False
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="empcompress-direct")

    def start(self, into: memoryview, offset: int, need_bytes: int) -> Future[bool]:
        """Read from ``offset`` (block-aligned) into ``into`` (block-aligned, whole blocks) in the background.

        The future is True once the first ``need_bytes`` are in, False if they could not be read.
        """
        return self._pool.submit(self._read, into, offset, need_bytes)

    def _read(self, into: memoryview, offset: int, need_bytes: int) -> bool:
        done = 0
        while done < need_bytes:
            if self._stopping or self.refused:
                return False
            try:
                n_read = os.preadv(self.descriptor, [into[done : done + DIRECT_PIECE_BYTES]], offset + done)
            except OSError:
                self.refused = True
                return False
            if n_read <= 0:  # past the end: the file shrank (the buffered read says so)
                return False
            done += n_read
        return True

    def close(self) -> None:
        """Stop between pieces and wait for the helper, then close the descriptor."""
        self._stopping = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        os.close(self.descriptor)
