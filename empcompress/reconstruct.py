"""Reading our TIFF stacks back and rebuilding the source MRC bytes from them.

:class:`CompressedMovie` opens a TIFF written by empcompress, checks that its
pages match the record in the first page's description, and turns each decoded
page back into the exact bytes the source MRC file held for that frame. Both
verification and restore are built on it, so what verification proves is what
restore does.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
import tifffile

from . import kernels
from .errors import NotOurTiffError, RestoreError, VerificationError
from .gain import GainExceptions, GainRecord, load_reference_for
from .metadata import MovieRecord
from .mrc import pack_4bit, value_dtype_for

__all__ = ["CompressedMovie", "read_record"]


def read_record(path: str | os.PathLike[str]) -> MovieRecord:
    """The empcompress record of the TIFF at ``path`` (raises NotOurTiffError)."""
    with CompressedMovie(path) as movie:
        return movie.record


class CompressedMovie:
    """A TIFF stack written by empcompress, opened for reading."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int = 1,
        gain_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.threads = max(1, threads)
        self.gain_path = gain_path  # gain reference of gain-normalised storage, if not beside the TIFF
        self._gain: npt.NDArray[np.float32] | None = None
        self._exceptions: GainExceptions | None = None
        try:
            self._tiff = tifffile.TiffFile(self.path)
        except FileNotFoundError:
            raise NotOurTiffError(f"{self.path}: no such file") from None
        except (tifffile.TiffFileError, ValueError, OSError) as error:
            raise NotOurTiffError(f"{self.path}: not a readable TIFF file ({error})") from None
        try:
            pages = self._tiff.pages
            first = pages.first
            self.record = MovieRecord.from_json(first.description, path_name=str(self.path))
            self.n_pages = len(pages)
        except NotOurTiffError:
            self._tiff.close()
            raise
        except Exception as error:
            self._tiff.close()
            raise NotOurTiffError(f"{self.path}: cannot read the TIFF structure ({error})") from None
        source = self.record.source
        if self.n_pages != source.nz:
            self._tiff.close()
            raise NotOurTiffError(
                f"{self.path}: has {self.n_pages} pages but its record says {source.nz} frames; "
                "the file is damaged"
            )
        self.source_dtype = value_dtype_for(
            mode=source.mode, byte_order=source.byte_order, bytes_are_signed=source.bytes_are_signed
        )
        self.stored_dtype = np.dtype(self.record.storage.stored_dtype)
        self.gain_record: GainRecord | None = None
        if self.record.storage.gain is not None:
            try:
                self.gain_record = GainRecord.from_dict(self.record.storage.gain, name=str(self.path))
            except Exception:
                self._tiff.close()
                raise
            if self.gain_record.kind == "gain-normalised" and source.mode != 2:
                self._tiff.close()
                raise RestoreError(f"{self.path}: gain-normalised storage of a mode-{source.mode} movie")

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
        gain = load_reference_for(self.gain_record, self.path, self.gain_path)
        if gain.shape != self.frame_shape:
            raise RestoreError(
                f"{self.path}: its gain reference is {gain.shape}, frames are {self.frame_shape}"
            )
        self._exceptions = GainExceptions.decode(
            self.gain_record.exceptions,
            n_frames=self.record.source.nz,
            n_pixels=gain.size,
            name=str(self.path),
        )
        if self._exceptions.n_exceptions != self.gain_record.n_exceptions:
            raise RestoreError(f"{self.path}: the record's exception count does not match its exception list")
        self._gain = gain

    def __enter__(self) -> CompressedMovie:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._tiff.close()

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.record.source.ny, self.record.source.nx)

    def read_stored_frame(self, index: int) -> npt.NDArray[np.generic]:
        """Decode page ``index`` from disk (TIFF row order, stored dtype)."""
        page = self._tiff.pages[index]
        assert isinstance(page, tifffile.TiffPage)
        try:
            array = page.asarray(maxworkers=self.threads)
        except Exception as error:
            raise VerificationError(
                f"{self.path}: page {index} cannot be decoded ({error}); the file is damaged"
            ) from None
        if array.shape != self.frame_shape or array.dtype != self.stored_dtype:
            raise VerificationError(
                f"{self.path}: page {index} is {array.shape} {array.dtype}, the record says "
                f"{self.frame_shape} {self.stored_dtype}; the file is damaged"
            )
        return array

    def source_values(
        self, stored: npt.NDArray[np.generic], *, index: int | None = None
    ) -> npt.NDArray[np.generic]:
        """Source values (MRC row order, native byte order) from stored frame ``index``.

        Gain-normalised storage needs ``index`` (for the frame's exceptions).
        """
        out = np.empty(self.frame_shape, dtype=self.source_dtype.newbyteorder("="))
        if self.needs_gain:
            if index is None:
                raise ValueError("gain-normalised frames need their index")
            self.load_gain()
            assert self._gain is not None and self._exceptions is not None
            kernels.gain_apply(stored, self._gain, out)  # type: ignore[arg-type]
            return self._exceptions.patch(index, out)
        return kernels.flip_cast(stored, out)

    def source_frame_bytes(
        self, stored: npt.NDArray[np.generic], *, index: int | None = None
    ) -> npt.NDArray[np.uint8]:
        """The exact bytes the source MRC held for this frame (``index``: see :meth:`source_values`)."""
        values = self.source_values(stored, index=index)
        if self.record.source.mode == 101:
            return pack_4bit(values.astype(np.uint8)).reshape(-1)
        if not self.source_dtype.isnative:
            values = values.astype(self.source_dtype)
        return values.reshape(-1).view(np.uint8)

    def iter_source_frame_bytes(self) -> Iterator[npt.NDArray[np.uint8]]:
        for index in range(self.n_pages):
            yield self.source_frame_bytes(self.read_stored_frame(index), index=index)
