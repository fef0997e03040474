"""The file rules every stage shares: temporary-file-then-rename, hashing, opening untrusted files.

One owner per rule:

- :func:`temporary_output` / :func:`commit_output` (and :func:`write_bytes_atomically`):
  every file empcompress writes appears under its final name only complete and
  fsync'ed. The temporary name is short (``.empcompress-tmp-<pid>-<random>``) and in
  the final file's folder, so it never makes a path longer than the final name allows
  and the rename is atomic.
- :func:`file_digests`: sha256 (and md5) of a file in one read.
- :func:`open_regular`: open a file we did not write (a drive, a received bag) only if
  it is a regular file, without following a symbolic link and without blocking on a
  FIFO or a device.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import secrets
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, cast

__all__ = [
    "TEMP_MARKER",
    "HASH_CHUNK_BYTES",
    "is_temporary_name",
    "temporary_path_for",
    "temporary_output",
    "commit_output",
    "sync_file_system",
    "write_bytes_atomically",
    "fsync_directory",
    "file_digests",
    "file_sha256",
    "NotRegularFileError",
    "open_regular",
]

#: Every temporary file we write starts with this (hidden, short, fixed length after it).
TEMP_MARKER = ".empcompress-tmp-"
HASH_CHUNK_BYTES = 8 << 20


def is_temporary_name(name: str) -> bool:
    """Whether a file name is one of our temporary names."""
    return name.startswith(TEMP_MARKER)


def temporary_path_for(final_path: str | os.PathLike[str]) -> Path:
    """A hidden, unique, short temporary name in the final file's folder (at most 40 bytes)."""
    final = Path(final_path)
    return final.with_name(f"{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(6)}")


@contextlib.contextmanager
def temporary_output(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final_path``; whatever happens, it does not outlive the block.

    The caller renames it into place with :func:`commit_output` once verified. An ``OSError``
    that names no file, or names the temporary, is raised again naming ``final_path``.
    """
    temporary = temporary_path_for(final_path)
    try:
        yield temporary
    except OSError as error:
        # name the file the user knows (a full disk, a write refused), never our hidden temporary name
        unnamed = error.filename is None or os.fspath(error.filename) == os.fspath(temporary)
        if not unnamed or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror or str(error), os.fspath(final_path)) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (best effort where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        handle = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def commit_output(
    temporary: str | os.PathLike[str], final_path: str | os.PathLike[str], *, durable: bool = True
) -> None:
    """fsync the verified temporary file and atomically rename it to its final name.

    ``durable=False`` renames without the two fsyncs: for many small files, whose caller makes
    them durable together with :func:`sync_file_system` before anything records them as done.
    """
    if durable:
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(temporary, final_path)
    if durable:
        fsync_directory(Path(final_path).parent)


def sync_file_system(paths: Sequence[str | os.PathLike[str]]) -> None:
    """Make everything written to the files ``paths`` (and their folders) durable, at once.

    Linux: one ``syncfs`` of the file system holding them (one flush for a whole batch instead of
    two fsyncs per file); elsewhere, or if that fails, each file and folder is fsync'ed. Raises
    ``OSError`` when the data cannot be made durable.
    """
    if not paths:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        handle = os.open(Path(paths[0]).parent, os.O_RDONLY)
        try:
            if libc.syncfs(handle) == 0:
                return
        finally:
            os.close(handle)
    for path in paths:
        with open(path, "rb") as reader:
            os.fsync(reader.fileno())
    for directory in {Path(path).parent for path in paths}:
        fsync_directory(directory)


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a small file through a temporary name (never half-written under ``path``)."""
    with temporary_output(path) as temporary:
        with open(temporary, "xb") as handle:
            handle.write(data)
        commit_output(temporary, path)


def file_digests(
    path: str | os.PathLike[str],
    *,
    algorithms: Sequence[str] = ("sha256", "md5"),
    progress: Callable[[str, int], None] | None = None,
    handle: BinaryIO | None = None,
) -> dict[str, str]:
    """``{algorithm: hex digest}`` of a file, read once in chunks (or of an open ``handle``)."""
    hashers = [hashlib.new(algorithm) for algorithm in algorithms]
    with contextlib.ExitStack() as stack:
        reader = cast(
            io.BufferedIOBase, handle if handle is not None else stack.enter_context(open(path, "rb"))
        )
        try:  # a small file gets a small buffer (zeroing 8 MiB per file cost more than hashing it)
            size_bytes = os.fstat(reader.fileno()).st_size
        except (OSError, AttributeError, io.UnsupportedOperation):
            size_bytes = HASH_CHUNK_BYTES
        buffer = bytearray(min(HASH_CHUNK_BYTES, max(size_bytes + 1, 64 << 10)))
        view = memoryview(buffer)
        while n_read := reader.readinto(buffer):
            chunk = view[:n_read]
            for hasher in hashers:
                hasher.update(chunk)
            if progress is not None:
                progress("checksums", n_read)
    return {algorithm: hasher.hexdigest() for algorithm, hasher in zip(algorithms, hashers, strict=True)}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a file (hex)."""
    return file_digests(path, algorithms=("sha256",))["sha256"]


class NotRegularFileError(OSError):
    """A path names a symbolic link, a folder, a FIFO, a device or a socket, not a regular file."""


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file (no link followed, never blocks).

    Raises :class:`NotRegularFileError` (an ``OSError``) for anything else, and the
    usual ``OSError`` when it cannot be opened. Opening a FIFO with ``O_NONBLOCK``
    returns at once, and the file type is checked on the open descriptor before a
    single byte is read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NotRegularFileError(
                errno.ELOOP, "is a symbolic link, not a regular file", str(path)
            ) from None
        raise
    try:
        mode = os.fstat(descriptor).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(errno.EINVAL, "is not a regular file", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
