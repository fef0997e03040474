"""Reading our TIFF stacks back and rebuilding the source MRC bytes from them.

:class:`CompressedMovie` opens a TIFF written by empcompress, checks that its
pages match the record in the first page's description, and turns each decoded
page back into the exact bytes the source MRC file held for that frame. Both
verification and restore are built on it, so what verification proves is what
restore does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
import tifffile

from . import kernels
from .errors import EmpCompressError, GainError, InputError, NotOurTiffError, RecordError, VerificationError
from .files import NotRegularFileError, open_regular
from .frame_buffers import frame_buffer
from .gain import GainExceptions, GainRecord, load_reference_for
from .metadata import MovieRecord
from .mrc import pack_4bit, value_dtype_for
from .record import parse_record

__all__ = ["CompressedMovie", "SourceRebuilder", "read_record", "quiet_tifffile", "open_input_file"]

#: Bytes of strips tifffile reads from the file at a time while decoding a page: below glibc's
#: mmap threshold once it has risen (see :meth:`CompressedMovie.read_stored_frame`).
READ_PIECE_BYTES = 4 << 20
#: Bytes of source values :class:`SourceRebuilder` rebuilds at a time (a band of whole rows): each
#: piece is hashed while it is still in cache, and no frame-sized rebuild buffer is needed (a float32
#: super-resolution frame is 377 MB, mapped afresh and zeroed by the kernel in every conversion). Below
#: glibc's mmap threshold (:mod:`empcompress.malloc_policy`).
REBUILD_PIECE_BYTES = 4 << 20

_QUIET_LOCK = threading.Lock()
_QUIET_DEPTH = 0
_QUIET_SAVED_LEVEL = logging.NOTSET


@contextlib.contextmanager
def quiet_tifffile() -> Iterator[None]:
    """Keep tifffile's own log lines (warnings about damaged files) off the terminal.

    We report a damaged file ourselves, in one ``Error:`` line that names it; the
    ``tifffile`` logger is raised above CRITICAL while any thread is inside.
    """
    global _QUIET_DEPTH, _QUIET_SAVED_LEVEL
    logger = logging.getLogger("tifffile")
    with _QUIET_LOCK:
        if _QUIET_DEPTH == 0:
            _QUIET_SAVED_LEVEL = logger.level
            logger.setLevel(logging.CRITICAL + 1)
        _QUIET_DEPTH += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_DEPTH -= 1
            if _QUIET_DEPTH == 0:
                logger.setLevel(_QUIET_SAVED_LEVEL)


def open_input_file(path: Path, *, error: type[InputError] = InputError) -> BinaryIO:
    """Open a file the user named, following links, only if it ends at a regular file.

    Never blocks on a FIFO or a device; raises ``error`` naming the file otherwise.
    """
    try:
        return open_regular(os.path.realpath(path))
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except NotRegularFileError:
        kind = "a directory" if path.is_dir() else "not a regular file (a FIFO, device or socket)"
        raise error(f"{path}: is {kind}; give a TIFF or MRC file") from None
    except OSError as failure:
        raise error(f"{path}: cannot be read ({failure.strerror or failure})") from None


def read_record(path: str | os.PathLike[str]) -> MovieRecord:
    """The validated empcompress record of the TIFF at ``path``.

    Raises NotOurTiffError (no record) or RecordError (a damaged record).
    """
    with CompressedMovie(path) as movie:
        return movie.record


class CompressedMovie:
    """A TIFF stack written by empcompress, opened for reading.

    The record is validated (:func:`empcompress.record.parse_record`) before
    anything is allocated from it; a gain reference is read only from inside
    ``root`` (default: the TIFF's own folder or its bag's payload; see
    :func:`empcompress.gain.resolve_reference`) unless ``gain_path`` names it explicitly.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int = 1,
        gain_path: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.threads = max(1, threads)
        self.gain_path = gain_path  # gain reference of gain-normalised storage, if not beside the TIFF
        self.root = root
        self._gain: npt.NDArray[np.float32] | None = None
        self._exceptions: GainExceptions | None = None
        self.handle = open_input_file(self.path, error=NotOurTiffError)
        try:
            with quiet_tifffile():
                self._tiff = tifffile.TiffFile(self.handle, name=self.path.name)
        except Exception as error:
            self.handle.close()
            raise NotOurTiffError(f"{self.path}: not a readable TIFF file ({_short(error)})") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        try:
            with quiet_tifffile():
                pages = self._tiff.pages
                description = pages.first.description
        except Exception as error:
            raise NotOurTiffError(f"{self.path}: cannot read the TIFF structure ({_short(error)})") from None
        self.description: str = description
        self.record = parse_record(description, path_name=str(self.path))
        source = self.record.source
        try:
            with quiet_tifffile():
                self.n_pages = len(pages)
        except Exception as error:
            raise VerificationError(
                f"{self.path}: cannot count the TIFF's pages ({_short(error)}); the file is damaged"
            ) from None
        if self.n_pages != source.nz:
            raise VerificationError(
                f"{self.path}: has {self.n_pages} pages but its record says {source.nz} frames; "
                "the file is damaged"
            )
        self.source_dtype = value_dtype_for(
            mode=source.mode, byte_order=source.byte_order, bytes_are_signed=source.bytes_are_signed
        )
        self.stored_dtype = np.dtype(self.record.storage.stored_dtype)
        self.gain_record: GainRecord | None = None
        if self.record.storage.gain is not None:
            self.gain_record = GainRecord.from_dict(self.record.storage.gain, name=str(self.path))

    @property
    def needs_gain(self) -> bool:
        """True for gain-normalised storage (restore needs the gain reference)."""
        return self.gain_record is not None and self.gain_record.kind == "gain-normalised"

    def load_gain(self) -> None:
        """Find and check the gain reference and decode the exception list (once).

        Raises :class:`GainError` when the reference is missing or is not the
        one recorded (sha256), so restore and verify fail before writing.
        """
        if not self.needs_gain or self._gain is not None:
            return
        assert self.gain_record is not None
        gain = load_reference_for(
            self.gain_record, self.path, self.gain_path, root=self.root, frame_shape=self.frame_shape
        )
        try:
            exceptions = GainExceptions.decode(
                self.gain_record.exceptions,
                n_frames=self.record.source.nz,
                n_pixels=gain.size,
                name=str(self.path),
            )
        except GainError as error:
            raise RecordError(f"{error} (storage.gain.exceptions)") from None
        if exceptions.n_exceptions != self.gain_record.n_exceptions:
            raise RecordError(f"{self.path}: the record's exception count does not match its exception list")
        self._exceptions = exceptions
        self._gain = gain

    def __enter__(self) -> CompressedMovie:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        tiff = getattr(self, "_tiff", None)
        if tiff is not None:
            with quiet_tifffile(), contextlib.suppress(Exception):
                tiff.close()
        self.handle.close()

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.record.source.ny, self.record.source.nx)

    def new_stored_frame(self) -> npt.NDArray[np.generic]:
        """An array for :meth:`read_stored_frame`'s ``out`` (one frame, stored dtype), poisoned (see
        :func:`~empcompress.frame_buffers.frame_buffer`): nothing left in it passes for a decoded frame."""
        return frame_buffer(self.frame_shape, self.stored_dtype, poisoned=True)

    def new_source_frame(self) -> npt.NDArray[np.generic]:
        """An array for :meth:`source_values`'s ``out`` (one frame, native source dtype), poisoned (see
        :func:`~empcompress.frame_buffers.frame_buffer`)."""
        return frame_buffer(self.frame_shape, self.source_dtype.newbyteorder("="), poisoned=True)

    def read_stored_frame(
        self, index: int, *, out: npt.NDArray[np.generic] | None = None
    ) -> npt.NDArray[np.generic]:
        """Decode page ``index`` from disk (TIFF row order, stored dtype), into ``out`` if given.

        ``out`` (from :meth:`new_stored_frame`) lets a caller reuse one array for every frame:
        a frame's array over glibc's mmap threshold is otherwise mapped and zeroed afresh.
        """
        if out is not None and (out.shape != self.frame_shape or out.dtype != self.stored_dtype):
            raise ValueError(
                f"out is {out.shape} {out.dtype}, a stored frame {self.frame_shape} {self.stored_dtype}"
            )
        try:
            with quiet_tifffile():
                page = self._tiff.pages[index]
                shape, dtype = (
                    (page.shape, page.dtype) if isinstance(page, tifffile.TiffPage) else (None, None)
                )
        except Exception as error:
            raise VerificationError(
                f"{self.path}: page {index} cannot be read ({_short(error)}); the file is damaged"
            ) from None
        # never decode (allocate) anything but the frame the record describes
        if shape != self.frame_shape or dtype != self.stored_dtype:
            raise VerificationError(
                f"{self.path}: page {index} is {shape} {dtype}, the record says "
                f"{self.frame_shape} {self.stored_dtype}; the file is damaged"
            )
        assert isinstance(page, tifffile.TiffPage)
        try:
            with quiet_tifffile():
                # the strips are read in pieces of READ_PIECE_BYTES (tifffile reads a page's whole
                # run of strips in one piece otherwise: a fresh, zeroed mapping per page)
                array = page.asarray(out=out, maxworkers=self.threads, buffersize=READ_PIECE_BYTES)
        except Exception as error:
            raise VerificationError(
                f"{self.path}: page {index} cannot be decoded ({_short(error)}); the file is damaged"
            ) from None
        if out is not None and array is not out:
            raise VerificationError(f"{self.path}: page {index} was not decoded into the buffer given")
        if array.shape != self.frame_shape or array.dtype != self.stored_dtype:
            raise VerificationError(
                f"{self.path}: page {index} is {array.shape} {array.dtype}, the record says "
                f"{self.frame_shape} {self.stored_dtype}; the file is damaged"
            )
        return array

    def source_values(
        self,
        stored: npt.NDArray[np.generic],
        *,
        index: int | None = None,
        out: npt.NDArray[np.generic] | None = None,
    ) -> npt.NDArray[np.generic]:
        """Source values (MRC row order, native byte order) from stored frame ``index``.

        Gain-normalised storage needs ``index`` (for the frame's exceptions). Into ``out``
        (from :meth:`new_source_frame`) if given, else a new array.
        """
        if out is None:
            out = self.new_source_frame()
        elif out.shape != self.frame_shape or out.dtype != self.source_dtype.newbyteorder("="):
            raise ValueError(
                f"out is {out.shape} {out.dtype}, a source frame {self.frame_shape} {self.source_dtype}"
            )
        if self.needs_gain:
            if index is None:
                raise ValueError("gain-normalised frames need their index")
            self.load_gain()
            assert self._gain is not None and self._exceptions is not None
            kernels.gain_apply(stored, self._gain, out)  # type: ignore[arg-type]
            return self._exceptions.patch(index, out)  # type: ignore[arg-type]
        return kernels.flip_cast(stored, out)

    def source_frame_bytes(
        self,
        stored: npt.NDArray[np.generic],
        *,
        index: int | None = None,
        out: npt.NDArray[np.generic] | None = None,
    ) -> npt.NDArray[np.uint8]:
        """The exact bytes the source MRC held for this frame (``index``, ``out``: see
        :meth:`source_values`); a view of ``out`` for native float and integer modes, a new
        array for mode 101 and other byte orders."""
        values = self.source_values(stored, index=index, out=out)
        if self.record.source.mode == 101:
            return pack_4bit(values.astype(np.uint8, copy=False)).reshape(-1)
        if not self.source_dtype.isnative:
            values = values.astype(self.source_dtype)
        return values.reshape(-1).view(np.uint8)

    def source_rebuilder(self, *, n_buffers: int) -> SourceRebuilder:
        """A :class:`SourceRebuilder` for this movie's frames, with ``n_buffers`` buffers used in turn."""
        return SourceRebuilder(self, n_buffers=n_buffers)

    def iter_source_frame_bytes(self) -> Iterator[npt.NDArray[np.uint8]]:
        """Every frame's source bytes in turn; each array is valid only until the next is asked for
        (one decode and one rebuild buffer serve every frame)."""
        stored, rebuilt = self.new_stored_frame(), self.new_source_frame()
        for index in range(self.n_pages):
            yield self.source_frame_bytes(self.read_stored_frame(index, out=stored), index=index, out=rebuilt)


class SourceRebuilder:
    """Rebuilds frames' source bytes in file order, piece by piece, into buffers used in turn.

    Plain storage of a native-byte-order float or integer source is rebuilt in bands of
    whole rows (:data:`REBUILD_PIECE_BYTES`): the MRC rows ``top .. top + n`` are the stored
    rows ``ny - top - n .. ny - top`` upside down, cast back. Gain-normalised storage, mode
    101 and other byte orders are rebuilt a whole frame at a time. Piece ``k`` (counted over
    all frames) is built in buffer ``k % n_buffers`` and stays valid until ``n_buffers`` more
    pieces have been asked for: a helper may hash one piece while the next is built.
    """

    def __init__(self, movie: CompressedMovie, *, n_buffers: int) -> None:
        self.movie = movie
        source = movie.record.source
        self.in_bands = not movie.needs_gain and source.mode != 101 and movie.source_dtype.isnative
        ny, nx = movie.frame_shape
        dtype = movie.source_dtype.newbyteorder("=")
        rows = max(1, min(ny, REBUILD_PIECE_BYTES // max(1, nx * dtype.itemsize))) if self.in_bands else ny
        self.buffers = [frame_buffer((rows, nx), dtype, poisoned=True) for _ in range(max(1, n_buffers))]
        self._made = 0

    def _next_buffer(self) -> npt.NDArray[np.generic]:
        buffer = self.buffers[self._made % len(self.buffers)]
        self._made += 1
        return buffer

    def pieces(self, stored: npt.NDArray[np.generic], *, index: int) -> Iterator[npt.NDArray[np.uint8]]:
        """The bytes the source MRC held for frame ``index`` (decoded as ``stored``), in file order."""
        if not self.in_bands:
            yield self.movie.source_frame_bytes(stored, index=index, out=self._next_buffer())
            return
        ny = self.movie.frame_shape[0]
        for top in range(0, ny, self.buffers[0].shape[0]):
            band = self._next_buffer()
            n_rows = min(band.shape[0], ny - top)
            values = kernels.flip_cast(stored[ny - top - n_rows : ny - top], band[:n_rows])
            yield values.reshape(-1).view(np.uint8)


def _short(error: BaseException) -> str:
    """One line about an exception from a library (for our one-line messages)."""
    if isinstance(error, EmpCompressError):
        return str(error)
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
