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
from .metadata import MovieRecord
from .mrc import pack_4bit, value_dtype_for

__all__ = ["CompressedMovie", "read_record"]


def read_record(path: str | os.PathLike[str]) -> MovieRecord:
    """The empcompress record of the TIFF at ``path`` (raises NotOurTiffError)."""
    with CompressedMovie(path) as movie:
        return movie.record


class CompressedMovie:
    """A TIFF stack written by empcompress, opened for reading."""

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        self.path = Path(path)
        self.threads = max(1, threads)
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
        if self.record.storage.gain is not None:
            self._tiff.close()
            raise RestoreError(
                f"{self.path}: gain-normalised storage needs a gain reference; not supported here"
            )

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

    def source_values(self, stored: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
        """Source values (MRC row order, native byte order) from a stored frame."""
        out = np.empty(self.frame_shape, dtype=self.source_dtype.newbyteorder("="))
        return kernels.flip_cast(stored, out)

    def source_frame_bytes(self, stored: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
        """The exact bytes the source MRC held for this frame."""
        values = self.source_values(stored)
        if self.record.source.mode == 101:
            return pack_4bit(values.astype(np.uint8)).reshape(-1)
        if not self.source_dtype.isnative:
            values = values.astype(self.source_dtype)
        return values.reshape(-1).view(np.uint8)

    def iter_source_frame_bytes(self) -> Iterator[npt.NDArray[np.uint8]]:
        for index in range(self.n_pages):
            yield self.source_frame_bytes(self.read_stored_frame(index))
