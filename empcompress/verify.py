"""Verification: decode a TIFF stack from disk and prove it rebuilds its source exactly.

Every page is decoded and turned back into the source frame's bytes; the rebuilt
file (header, extended header, frames) must hash to the sha256 recorded at
conversion. With a source file at hand, every frame and both headers are also
compared byte for byte against it (so -0.0 and NaN payloads count).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import VerificationError
from .mrc import MrcMovie
from .reconstruct import CompressedMovie

__all__ = ["VerifyResult", "verify_tiff"]

ProgressCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class VerifyResult:
    """What a verification checked."""

    path: str
    n_frames: int
    source_sha256: str
    source_size_bytes: int
    compared_with_source: bool


def verify_tiff(
    path: str | os.PathLike[str],
    *,
    against: str | os.PathLike[str] | None = None,
    threads: int = 1,
    progress: ProgressCallback | None = None,
    gain_path: str | os.PathLike[str] | None = None,
) -> VerifyResult:
    """Decode every page of ``path`` and check that it rebuilds the source exactly.

    Gain-normalised storage needs its gain reference: ``gain_path``, or the
    recorded file beside the TIFF. Raises :class:`VerificationError` naming the
    first differing frame.
    """
    path = Path(path)
    with CompressedMovie(path, threads=threads, gain_path=gain_path) as movie:
        movie.load_gain()
        record = movie.record.source
        source = MrcMovie(against) if against is not None else None
        # With threads to spare, frame i is hashed while frame i+1 is decoded (hashlib releases
        # the GIL; each rebuilt frame is a fresh array, and updates stay in frame order).
        hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify-hash") if threads > 1 else None
        hashing: Future[None] | None = None
        try:
            digest = hashlib.sha256()
            header, extended = record.header_bytes, record.extended_header_bytes
            digest.update(header)
            digest.update(extended)
            size_bytes = len(header) + len(extended)
            if source is not None:
                _compare_headers(path, source, header, extended)
            for index in range(movie.n_pages):
                rebuilt = movie.source_frame_bytes(movie.read_stored_frame(index), index=index)
                if hasher is None:
                    digest.update(rebuilt.data)
                else:
                    if hashing is not None:
                        hashing.result()
                    hashing = hasher.submit(digest.update, rebuilt.data)
                size_bytes += rebuilt.size
                if source is not None:
                    original = source.read_raw_frame(index)
                    if not _same_bytes(original, rebuilt):
                        n_bytes = int(np.count_nonzero(original != rebuilt))
                        raise VerificationError(
                            f"{path}: frame {index} differs from {source.path} in {n_bytes} bytes; "
                            f"the output is not a faithful copy"
                        )
                if progress is not None:
                    progress("verify", rebuilt.size)
            if hashing is not None:
                hashing.result()
        finally:
            if hasher is not None:
                hasher.shutdown(wait=True, cancel_futures=True)
            if source is not None:
                source.close()
        if size_bytes != record.size_bytes or digest.hexdigest() != record.sha256:
            raise VerificationError(
                f"{path}: the rebuilt MRC file ({size_bytes} bytes, sha256 {digest.hexdigest()[:16]}...) "
                f"does not match the recorded source ({record.size_bytes} bytes, sha256 "
                f"{record.sha256[:16]}...); the file is damaged or the source changed during conversion"
            )
        return VerifyResult(
            path=str(path),
            n_frames=movie.n_pages,
            source_sha256=record.sha256,
            source_size_bytes=record.size_bytes,
            compared_with_source=source is not None,
        )


def _same_bytes(first: npt.NDArray[np.uint8], second: npt.NDArray[np.uint8]) -> bool:
    """Whether two flat byte arrays are identical; compares 8 bytes at a time (3x faster than uint8)."""
    if first.shape != second.shape:
        return False
    if not (first.flags.c_contiguous and second.flags.c_contiguous):
        return bool(np.array_equal(first, second))
    n_words = first.size // 8 * 8
    return bool(
        np.array_equal(first[:n_words].view(np.uint64), second[:n_words].view(np.uint64))
        and np.array_equal(first[n_words:], second[n_words:])
    )


def _compare_headers(path: Path, source: MrcMovie, header: bytes, extended: bytes) -> None:
    if source.read_header_bytes() != header:
        raise VerificationError(f"{path}: the recorded MRC header differs from {source.path}'s")
    if source.read_extended_header_bytes() != extended:
        raise VerificationError(f"{path}: the recorded extended header differs from {source.path}'s")
