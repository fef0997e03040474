"""Counts, gain-normalised or float: what a sample of a movie holds."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..gainref import exception_fraction
from ..mrc import MrcMovie
from .estimate import finalize_gain, gain_partial_from_frames, sample_frame_indices
from .limits import (
    DEFAULT_SAMPLE_FRAMES,
    MAX_EXCEPTION_FRACTION,
    MIN_RELIABLE_FRACTION,
)


@dataclass(frozen=True)
class MovieClass:
    """What a sample of a movie says it holds."""

    path: str
    kind: str  # "counts" | "gain-normalised" | "float"
    reason: str
    n_sampled_frames: int
    exception_fraction: float | None = None  # of sampled values under the gain tried


def read_sample_frames(movie: MrcMovie, n_sample_frames: int | None) -> list[npt.NDArray[np.generic]]:
    """Evenly spaced frames, each in its own array (native byte order)."""
    frames = []
    for index in sample_frame_indices(movie.header.nz, n_sample_frames):
        raw = movie.read_raw_frame(index, out=np.empty(movie.header.frame_size_bytes, dtype=np.uint8))
        values = movie.values_from_raw(raw)
        frames.append(values if values.dtype.isnative else values.astype(values.dtype.newbyteorder("=")))
    return frames


def integral_frames(frames: Sequence[npt.NDArray[np.generic]]) -> bool:
    return all(frame.dtype.kind in "iu" or kernels.float_frame_stats(frame)[0] for frame in frames)


def classify_movie(
    path: str | os.PathLike[str],
    *,
    gain: npt.NDArray[np.float32] | None = None,
    n_sample_frames: int = DEFAULT_SAMPLE_FRAMES,
) -> MovieClass:
    """Counts, gain-normalised or float, from ``n_sample_frames`` frames spread over the movie.

    With ``gain`` (float32, MRC row order) the movie is gain-normalised only if
    that gain reproduces all but :data:`MAX_EXCEPTION_FRACTION` of the sampled
    values; a movie from another gain is "float". Without, a gain is estimated
    from the sample itself and must both reproduce the values and be confirmed
    (two distinct values) at :data:`MIN_RELIABLE_FRACTION` of the hit pixels;
    a sample too sparse to confirm it is grown 4x at a time, up to every frame.
    """
    name = str(path)
    with MrcMovie(path) as movie:
        header = movie.header
        frames = read_sample_frames(movie, n_sample_frames)
    n = len(frames)
    if header.value_dtype.kind in "iu" or integral_frames(frames):
        return MovieClass(
            name, "counts", f"the {n} sampled frames hold integers only: raw counts, no gain", n
        )
    if header.mode != 2:
        return MovieClass(name, "float", f"{header.value_dtype.name} values are not integers", n)
    values = [frame.astype(np.float32, copy=False) for frame in frames]
    if gain is not None:
        if gain.shape != header.frame_shape:
            return MovieClass(
                name, "float", f"the gain's shape {gain.shape} is not the frames' {header.frame_shape}", n
            )
        fraction = exception_fraction(values, np.ascontiguousarray(gain, dtype=np.float32))
        if fraction <= MAX_EXCEPTION_FRACTION:
            return MovieClass(
                name,
                "gain-normalised",
                f"the gain reproduces {100 * (1 - fraction):.3f}% of sampled values",
                n,
                fraction,
            )
        return MovieClass(
            name,
            "float",
            f"the gain reproduces only {100 * (1 - fraction):.2f}% of sampled values: not this movie's gain",
            n,
            fraction,
        )
    while True:
        estimate = finalize_gain(gain_partial_from_frames(values))
        fraction = exception_fraction(values, estimate.gain)
        confirmed = estimate.n_reliable / max(1, estimate.n_hit)
        if fraction > MAX_EXCEPTION_FRACTION or confirmed >= MIN_RELIABLE_FRACTION or n >= header.nz:
            break
        with MrcMovie(path) as movie:  # sparse frames: look at more of them
            values = [f.astype(np.float32, copy=False) for f in read_sample_frames(movie, 4 * n)]
        n = len(values)
    if fraction > MAX_EXCEPTION_FRACTION:
        return MovieClass(
            name,
            "float",
            f"no per-pixel gain makes the values integral counts ({100 * fraction:.2f}% of sampled values "
            f"are not reproduced): genuinely non-integer data",
            n,
            fraction,
        )
    if confirmed < MIN_RELIABLE_FRACTION:
        return MovieClass(
            name,
            "float",
            f"too few pixels ({100 * confirmed:.2f}% of those hit) confirm a gain in {n} sampled frames "
            f"to call the values counts x gain",
            n,
            fraction,
        )
    return MovieClass(
        name,
        "gain-normalised",
        f"a per-pixel gain reproduces {100 * (1 - fraction):.3f}% of sampled values and is confirmed at "
        f"{100 * confirmed:.1f}% of hit pixels",
        n,
        fraction,
    )
