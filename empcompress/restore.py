"""Restore: rebuild the original MRC file, byte for byte, from one of our TIFF stacks."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import kernels
from .errors import RestoreError
from .reconstruct import CompressedMovie
from .write import commit_output, temporary_output

__all__ = ["RestoreResult", "restore_movie"]

ProgressCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class RestoreResult:
    tiff_path: str
    output_path: str
    size_bytes: int
    sha256: str


def restore_movie(
    tiff_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    threads: int = 1,
    progress: ProgressCallback | None = None,
    gain_path: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
) -> RestoreResult:
    """Write the original MRC file recorded in ``tiff_path`` to ``output_path``.

    The file appears under its name only if its sha256 equals the recorded one.
    Gain-normalised storage needs its gain reference: ``gain_path``, or the
    recorded file, read only when it lies inside ``root`` (default: the TIFF's own
    folder, or its bag's whole payload; see
    :func:`empcompress.gain.resolve_reference`); its sha256 is checked.
    The TIFF's tags are not checked here (``verify`` does that): what is written is
    proven by the recorded sha256 alone.
    """
    tiff_path, output_path = Path(tiff_path), Path(output_path)
    if output_path.exists() and not overwrite:
        raise RestoreError(f"{output_path}: already exists; choose another name or pass --overwrite")
    if output_path.exists() and output_path.resolve() == tiff_path.resolve():
        raise RestoreError(f"{output_path}: is the TIFF being restored; choose another output name")
    if not output_path.parent.is_dir():
        raise RestoreError(f"{output_path.parent}: the output directory does not exist")
    with (
        CompressedMovie(tiff_path, threads=threads, gain_path=gain_path, root=root) as movie,
        kernels.kernel_threads(
            kernels.threads_for_frame_bytes(movie.record.source.nx * movie.record.source.ny * 4, threads)
        ),
        temporary_output(output_path) as temporary,
    ):
        movie.load_gain()
        record = movie.record.source
        digest = hashlib.sha256()
        size_bytes = 0
        with open(temporary, "wb") as handle:
            for chunk in (record.header_bytes, record.extended_header_bytes):
                handle.write(chunk)
                digest.update(chunk)
                size_bytes += len(chunk)
            for frame_bytes in movie.iter_source_frame_bytes():
                handle.write(frame_bytes.data)
                digest.update(frame_bytes.data)
                size_bytes += frame_bytes.size
                if progress is not None:
                    progress("restore", frame_bytes.size)
        if digest.hexdigest() != record.sha256 or size_bytes != record.size_bytes:
            raise RestoreError(
                f"{tiff_path}: the rebuilt file does not match the recorded sha256 "
                f"({digest.hexdigest()} != {record.sha256}); the TIFF is damaged"
            )
        commit_output(temporary, output_path)
    return RestoreResult(str(tiff_path), str(output_path), size_bytes, record.sha256)
