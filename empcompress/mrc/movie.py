"""The frame reader: :class:`MrcMovie`, an open MRC movie read frame by frame into reused buffers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from ..errors import TruncatedFileError
from ..frame_buffers import frame_buffer
from .header import HEADER_SIZE_BYTES, open_mrc, read_header
from .nibbles import unpack_4bit
from .readahead import (
    DIRECT_BLOCK_BYTES,
    PAGE_BYTES,
    _DirectReader,
    _Prefetcher,
    cached_page_count,
    page_cache_counted,
    read_ahead_window_bytes,
)


class MrcMovie:
    """An open MRC movie, read frame by frame.

    Use as a context manager. ``read_raw_frame`` returns the frame's bytes as
    stored; ``read_frame`` returns its values (shape ``(ny, nx)``, MRC row order,
    dtype :attr:`MrcHeader.value_dtype`). Both reuse an internal buffer unless
    ``out`` is given, so copy a frame you want to keep.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        self._handle: BinaryIO | None = open_mrc(self.path)
        # the movie's own frame buffer, with a block of slack on either side for direct reads
        self._buffer: npt.NDArray[np.uint8] | None = None  # allocated on first use, let go on close
        self._prefetcher: _Prefetcher | None = None  # started on the first hint, stopped on close
        self._direct: _DirectReader | None = None  # opened by the first read_ahead, closed on close
        self._direct_refused = False  # O_DIRECT refused here: read_ahead hints instead
        self._page_cache_counted: bool | None = None  # cachestat tells this file's pages: asked once
        self._reading_ahead: tuple[int, Future[bool]] | None = None  # (frame, read) into the own buffer

    def __enter__(self) -> MrcMovie:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._direct is not None:  # stops and waits for a read into the buffer, then closes its descriptor
            self._direct.close()
            self._direct = None
        self._reading_ahead = None
        self._buffer = None
        if self._prefetcher is not None:  # before the descriptor it uses is closed
            self._prefetcher.close()
            self._prefetcher = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _file(self) -> BinaryIO:
        if self._handle is None:
            raise ValueError(f"{self.path}: the movie is closed")
        return self._handle

    def read_header_bytes(self) -> bytes:
        """The 1024-byte main header exactly as stored."""
        handle = self._file()
        handle.seek(0)
        return handle.read(HEADER_SIZE_BYTES)

    def read_extended_header_bytes(self) -> bytes:
        """The extended header exactly as stored (may be empty)."""
        handle = self._file()
        handle.seek(HEADER_SIZE_BYTES)
        return handle.read(self.header.extended_header_size_bytes)

    def read_raw_frame(
        self, index: int, *, out: npt.NDArray[np.uint8] | None = None
    ) -> npt.NDArray[np.uint8]:
        """The stored bytes of frame ``index`` (a flat uint8 array)."""
        header = self.header
        if not 0 <= index < header.nz:
            raise IndexError(f"{self.path}: frame {index} out of range 0..{header.nz - 1}")
        handle = self._file()
        if out is None:
            if self._finish_read_ahead() == index:
                return self._own_frame(index)  # read directly, all of it
            buffer = self._own_frame(index)
        else:
            buffer = out
        handle.seek(header.data_offset_bytes + index * header.frame_size_bytes)
        with self._exactly(handle.fileno()):
            n_read = handle.readinto(buffer.data)  # type: ignore[attr-defined]
        if n_read != header.frame_size_bytes:
            raise TruncatedFileError(
                f"{self.path}: frame {index} is incomplete ({n_read} of "
                f"{header.frame_size_bytes} bytes); the file changed or is truncated"
            )
        return buffer

    def _own_frame(self, index: int) -> npt.NDArray[np.uint8]:
        """Frame ``index``'s place in the movie's own buffer: as far into its first block as the frame's
        offset is into its block, so that the whole blocks around it can be read directly."""
        header = self.header
        if self._buffer is None:
            self._buffer = frame_buffer(header.frame_size_bytes + 3 * DIRECT_BLOCK_BYTES, np.uint8)
        offset = header.data_offset_bytes + index * header.frame_size_bytes
        start = self._first_block_start() + offset % DIRECT_BLOCK_BYTES
        return self._buffer[start : start + header.frame_size_bytes]

    def _first_block_start(self) -> int:
        assert self._buffer is not None
        return -self._buffer.ctypes.data % DIRECT_BLOCK_BYTES

    def _finish_read_ahead(self) -> int | None:
        """Wait for the read ahead into the movie's own buffer, if any: the frame it holds whole, or None."""
        if self._reading_ahead is None:
            return None
        index, reading = self._reading_ahead
        complete = reading.result()  # (kept until it is done: close waits for it in any case)
        self._reading_ahead = None
        return index if complete else None

    def read_ahead(self, index: int) -> None:
        """Read frame ``index`` into the movie's own buffer now, in the background: the caller is done
        with the frame the last ``read_raw_frame`` without ``out`` returned (it is overwritten).

        The read pass calls it once it has hashed and stored a frame, so that the next frame is read
        while this one is encoded. A frame not in the page cache is read with ``O_DIRECT`` where the
        file system takes it (past the page cache: no page-cache fill and no copy by the kernel, see
        :class:`_DirectReader`); otherwise the frame is hinted to the kernel (:meth:`prefetch`).
        ``read_raw_frame(index)`` without ``out`` then returns it, waiting if needed; it reads the
        frame itself if the direct read failed or another frame is asked for, so what it returns is
        always the file's bytes as a plain read gives them. One read ahead at a time: a new call
        first waits for the one before.
        """
        header = self.header
        if not 0 <= index < header.nz:
            return
        self._finish_read_ahead()
        offset = header.data_offset_bytes + index * header.frame_size_bytes
        reader = self._direct_reader()
        if reader is None or self._cached_page_count(offset, header.frame_size_bytes) != 0:
            self.prefetch(index)  # (the rest of a frame partly cached is read through the page cache)
            return
        head_bytes = offset % DIRECT_BLOCK_BYTES
        self._own_frame(index)  # (allocates the buffer)
        assert self._buffer is not None
        start = self._first_block_start()
        length = -(-(head_bytes + header.frame_size_bytes) // DIRECT_BLOCK_BYTES) * DIRECT_BLOCK_BYTES
        into = memoryview(self._buffer)[start : start + length]  # type: ignore[arg-type]
        reading = reader.start(into, offset - head_bytes, head_bytes + header.frame_size_bytes)
        self._reading_ahead = (index, reading)

    def _cached_page_count(self, offset: int, size_bytes: int) -> int | None:
        """How many pages of the frame of ``size_bytes`` at ``offset`` are found in the page cache; None
        where it cannot be told. The pages looked at are those wholly the frame's (its neighbours share
        the others), or for a frame with none, the page holding its last byte.

        Direct reads are only for frames none of which is cached: a frame read through the page cache
        before (or the part of one the kernel read ahead) is not read from the device again. Every
        page is counted where the kernel tells (:func:`page_cache_counted`, asked once per movie);
        else the first, middle and last are probed with 1-byte reads that may not wait
        (``RWF_NOWAIT``). A probe that misses starts reading its page, and on a loaded machine that
        read may be done before the probe returns: the probe then finds the page it brought in
        itself, and the frame is read through the page cache (slower, never wrong)."""
        descriptor = self._file().fileno()
        end = offset + size_bytes
        first = min(-(-offset // PAGE_BYTES) * PAGE_BYTES, end - 1)
        last = max(end // PAGE_BYTES * PAGE_BYTES - 1, first)
        if self._page_cache_counted is None:
            with self._exactly(descriptor):  # (its one page)
                self._page_cache_counted = page_cache_counted(descriptor)
        if self._page_cache_counted:
            counted = cached_page_count(descriptor, first, last + 1 - first)
            if counted is not None:
                return counted
        probe = bytearray(1)
        cached = 0
        # last first: a probe that misses may start reading pages after its own
        with self._exactly(descriptor):
            for at in (last, offset + size_bytes // 2, first):
                try:
                    cached += os.preadv(descriptor, [probe], at, os.RWF_NOWAIT) == 1
                except BlockingIOError:  # EAGAIN: not in the page cache
                    continue
                except (OSError, AttributeError):  # no RWF_NOWAIT here
                    return None
        return cached

    @contextlib.contextmanager
    def _exactly(self, descriptor: int) -> Iterator[None]:
        """Once frames are read ahead directly, a read through the page cache reads only what it asks
        for (``POSIX_FADV_RANDOM``): the kernel's own read-ahead would bring in the next frame, which a
        direct read then reads from the device a second time."""
        if self._direct is None or self._direct.refused:
            yield
            return
        with contextlib.suppress(OSError):
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_RANDOM)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_NORMAL)

    def _direct_reader(self) -> _DirectReader | None:
        if self._direct is None and not self._direct_refused:
            try:
                self._direct = _DirectReader(self._file().fileno())
            except (OSError, AttributeError):  # refused (tmpfs, some file systems), no /proc, no O_DIRECT
                self._direct_refused = True
        if self._direct is not None and self._direct.refused:
            return None
        return self._direct

    def prefetch(self, index: int) -> None:
        """Ask the kernel to read frame ``index`` now (``posix_fadvise(WILLNEED)``), if it can.

        The read pass calls it for the next frame before working on the current one when it reads
        into buffers of its own (hashing on a helper thread; else :meth:`read_ahead`), and
        :meth:`read_ahead` where the frame is cached or ``O_DIRECT`` is refused, so that reading
        from a cold disk overlaps the work (the kernel's own read-ahead is far smaller than a
        frame). The hints go from a helper thread, one read-ahead window at a time (see
        :class:`_Prefetcher`); a new call supersedes an unfinished one. Only a hint: nothing is
        read into the process, and nothing changes if the platform has no ``posix_fadvise``.
        """
        header = self.header
        if not 0 <= index < header.nz or not hasattr(os, "posix_fadvise"):
            return
        if self._prefetcher is None:
            self._prefetcher = _Prefetcher(self._file().fileno(), read_ahead_window_bytes(self.path))
        self._prefetcher.hint(
            header.data_offset_bytes + index * header.frame_size_bytes, header.frame_size_bytes
        )

    def values_from_raw(self, raw: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
        """View (or, for mode 101, unpack) raw frame bytes as values of shape (ny, nx)."""
        header = self.header
        if header.mode == 101:
            return unpack_4bit(raw.reshape(header.ny, (header.nx + 1) // 2), nx=header.nx)
        return raw.view(header.value_dtype).reshape(header.ny, header.nx)

    def read_frame(self, index: int) -> npt.NDArray[np.generic]:
        """Values of frame ``index``, shape (ny, nx), MRC row order."""
        return self.values_from_raw(self.read_raw_frame(index))

    def read_rows(
        self, index: int, row_start: int, row_stop: int, *, out: npt.NDArray[np.uint8] | None = None
    ) -> npt.NDArray[np.generic]:
        """Values of rows ``row_start:row_stop`` of frame ``index``, shape (rows, nx), MRC row order.

        Only those rows are read (a frame's rows are contiguous, mode-101 rows padded to a
        byte). Into ``out`` (flat uint8 of the rows' stored size) when given, else a new buffer.
        """
        header = self.header
        if not 0 <= index < header.nz:
            raise IndexError(f"{self.path}: frame {index} out of range 0..{header.nz - 1}")
        if not 0 <= row_start < row_stop <= header.ny:
            raise IndexError(f"{self.path}: rows {row_start}:{row_stop} out of range 0:{header.ny}")
        row_size_bytes = header.frame_size_bytes // header.ny
        size_bytes = (row_stop - row_start) * row_size_bytes
        if out is not None and (out.dtype != np.uint8 or out.shape != (size_bytes,)):
            raise ValueError(f"a buffer for {row_stop - row_start} rows is {size_bytes} uint8 bytes")
        buffer = np.empty(size_bytes, dtype=np.uint8) if out is None else out
        handle = self._file()
        handle.seek(header.data_offset_bytes + index * header.frame_size_bytes + row_start * row_size_bytes)
        n_read = handle.readinto(buffer.data)  # type: ignore[attr-defined]
        if n_read != size_bytes:
            raise TruncatedFileError(
                f"{self.path}: rows {row_start}:{row_stop} of frame {index} are incomplete ({n_read} of "
                f"{size_bytes} bytes); the file changed or is truncated"
            )
        n_rows = row_stop - row_start
        if header.mode == 101:
            return unpack_4bit(buffer.reshape(n_rows, row_size_bytes), nx=header.nx)
        return buffer.view(header.value_dtype).reshape(n_rows, header.nx)

    def iter_frames(self) -> Iterator[npt.NDArray[np.generic]]:
        for index in range(self.header.nz):
            yield self.read_frame(index)
