"""Estimate a gain: mergeable per-pixel partials of sampled frames, finalized into a float32 gain."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..errors import GainError
from ..mrc import MrcHeader, MrcMovie

# ---------------------------------------------------------------- estimation


@dataclass(frozen=True, eq=False)
class GainPartial:
    """Mergeable per-pixel gain summary of some frames of one or more movies."""

    kept: npt.NDArray[np.float32]  # (ny, nx, K) smallest distinct positive values, +inf padded
    n_kept: npt.NDArray[np.uint8]  # (ny, nx)
    n_hits: npt.NDArray[np.uint16]  # (ny, nx) positive values seen, saturating
    flags: npt.NDArray[np.uint8]  # (ny, nx) GAIN_FLAG_INVALID where a negative/-0.0/NaN/inf was seen
    n_frames: int
    sources: tuple[str, ...] = ()

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (int(self.n_kept.shape[0]), int(self.n_kept.shape[1]))


@dataclass(frozen=True, eq=False)
class GainEstimate:
    """A finalized gain: float32, MRC row order, with per-pixel status and counts."""

    gain: npt.NDArray[np.float32]
    status: npt.NDArray[np.uint8]  # kernels.GAIN_UNHIT / RELIABLE / UNCONFIRMED / EXCEPTION
    n_reliable: int
    n_unconfirmed: int
    n_exception: int
    n_unhit: int
    n_frames: int
    sources: tuple[str, ...] = ()

    @property
    def n_pixels(self) -> int:
        return int(self.gain.size)

    @property
    def n_hit(self) -> int:
        return self.n_reliable + self.n_unconfirmed + self.n_exception


def empty_gain_partial(frame_shape: tuple[int, int], *, sources: tuple[str, ...] = ()) -> GainPartial:
    ny, nx = frame_shape
    return GainPartial(
        kept=np.full((ny, nx, kernels.GAIN_SUMMARY_KEPT), np.inf, dtype=np.float32),
        n_kept=np.zeros((ny, nx), dtype=np.uint8),
        n_hits=np.zeros((ny, nx), dtype=np.uint16),
        flags=np.zeros((ny, nx), dtype=np.uint8),
        n_frames=0,
        sources=sources,
    )


def gain_partial_from_frames(
    frames: Sequence[npt.NDArray[np.float32]], *, sources: tuple[str, ...] = ()
) -> GainPartial:
    """A partial from float32 frames in memory (MRC row order)."""
    if not frames:
        raise GainError("no frames to estimate a gain from")
    partial = empty_gain_partial((int(frames[0].shape[0]), int(frames[0].shape[1])), sources=sources)
    for frame in frames:
        kernels.gain_summary_update(frame, partial.kept, partial.n_kept, partial.n_hits, partial.flags)
    return GainPartial(partial.kept, partial.n_kept, partial.n_hits, partial.flags, len(frames), sources)


def sample_frame_indices(n_frames: int, n_sample: int | None) -> list[int]:
    """``n_sample`` frame indices spread evenly over the movie (all frames for None)."""
    if n_sample is None or n_sample >= n_frames:
        return list(range(n_frames))
    if n_sample < 1:
        raise ValueError(f"the number of sample frames must be at least 1, not {n_sample}")
    return sorted({round(float(i)) for i in np.linspace(0, n_frames - 1, n_sample)})


def _require_float32(header: MrcHeader, path: str | os.PathLike[str], what: str) -> None:
    if header.mode != 2:
        raise GainError(
            f"{path}: MRC mode {header.mode} ({header.value_dtype.name}) holds no gain-normalised float32 "
            f"values; {what} needs float32 (mode 2) movies"
        )


def gain_partial_from_movie(path: str | os.PathLike[str], *, max_frames: int | None = None) -> GainPartial:
    """Gain summary of one float32 movie: all frames, or ``max_frames`` spread evenly.

    The caller decides which movies share a gain (do not mix in raw-count
    movies or movies from another session; :func:`classify_movie` tells).
    """
    with MrcMovie(path) as movie:
        header = movie.header
        _require_float32(header, path, "a gain estimate")
        partial = empty_gain_partial(header.frame_shape, sources=(str(path),))
        indices = sample_frame_indices(header.nz, max_frames)
        for index in indices:
            values = movie.read_frame(index)
            kernels.gain_summary_update(values, partial.kept, partial.n_kept, partial.n_hits, partial.flags)
    return GainPartial(
        partial.kept, partial.n_kept, partial.n_hits, partial.flags, len(indices), (str(path),)
    )


def merge_gain_partials(a: GainPartial, b: GainPartial, *, into_first: bool = False) -> GainPartial:
    """Merge two partials. Associative and commutative.

    Neither is modified, unless ``into_first``: then ``a``'s arrays become the
    result (no third partial in memory: 20 bytes a pixel, 1.9 GB for a K3
    super-resolution frame), for a reduction where each partial is used once.
    """
    if a.frame_shape != b.frame_shape:
        raise GainError(
            f"cannot merge gain summaries of {a.frame_shape[1]}x{a.frame_shape[0]} and "
            f"{b.frame_shape[1]}x{b.frame_shape[0]} frames: movies of one gain have one frame size"
        )
    if into_first:
        n_kept = kernels.gain_summary_merge_into(a.kept, b.kept)
        # saturating add in uint16, without a full-size uint32 temporary
        np.add(a.n_hits, np.minimum(b.n_hits, np.uint16(65535) - a.n_hits), out=a.n_hits)
        np.bitwise_or(a.flags, b.flags, out=a.flags)
        return GainPartial(a.kept, n_kept, a.n_hits, a.flags, a.n_frames + b.n_frames, a.sources + b.sources)
    kept, n_kept = kernels.gain_summary_merge(a.kept, b.kept)
    n_hits = np.minimum(a.n_hits.astype(np.uint32) + b.n_hits, 65535).astype(np.uint16)
    return GainPartial(
        kept, n_kept, n_hits, a.flags | b.flags, a.n_frames + b.n_frames, a.sources + b.sources
    )


def finalize_gain(partial: GainPartial) -> GainEstimate:
    """The per-pixel float32 gain of a (merged) partial; see :func:`kernels.gain_finalize`."""
    gain, status = kernels.gain_finalize(partial.kept, partial.n_kept, partial.flags)
    counts = np.bincount(status.reshape(-1), minlength=4)
    return GainEstimate(
        gain=gain,
        status=status,
        n_reliable=int(counts[kernels.GAIN_RELIABLE]),
        n_unconfirmed=int(counts[kernels.GAIN_UNCONFIRMED]),
        n_exception=int(counts[kernels.GAIN_EXCEPTION]),
        n_unhit=int(counts[kernels.GAIN_UNHIT]),
        n_frames=partial.n_frames,
        sources=partial.sources,
    )


def estimate_gain(paths: Sequence[str | os.PathLike[str]], *, max_frames: int | None = None) -> GainEstimate:
    """Estimate one gain from several movies (serially; the pipeline does the same on Dask)."""
    if not paths:
        raise GainError("no movies to estimate a gain from")
    merged: GainPartial | None = None
    for path in paths:
        partial = gain_partial_from_movie(path, max_frames=max_frames)
        merged = partial if merged is None else merge_gain_partials(merged, partial)
    assert merged is not None
    return finalize_gain(merged)
