"""Counts, gain-normalised or float: what a sample of a movie holds.

:func:`classify_movie` streams its sample by row bands (:func:`~.estimate.gain_bands`),
so its memory does not grow with the number of sampled frames nor, beyond one band, with
the frame size: one band's rows of one frame, one band's gain partial (20 bytes a pixel)
and that band's finished gain (5 bytes a pixel) at a time; see :func:`classify_movie`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..frame_buffers import frame_buffer
from ..gainref import exception_counts
from ..mrc import MrcMovie
from .estimate import (
    GainBand,
    finalize_gain,
    gain_bands,
    gain_partial_from_movie,
    sample_frame_indices,
)
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
        raw = movie.read_raw_frame(index, out=frame_buffer(movie.header.frame_size_bytes, np.uint8))
        values = movie.values_from_raw(raw)
        frames.append(values if values.dtype.isnative else values.astype(values.dtype.newbyteorder("=")))
    return frames


def integral_frames(frames: Sequence[npt.NDArray[np.generic]]) -> bool:
    return all(frame.dtype.kind in "iu" or kernels.float_frame_stats(frame)[0] for frame in frames)


def _band_rows(
    movie: MrcMovie, band: GainBand, indices: Sequence[int], buffer: npt.NDArray[np.uint8]
) -> Iterator[npt.NDArray[np.generic]]:
    """The band's rows of each frame of ``indices`` in turn, each read into ``buffer`` (so one at a time)."""
    size_bytes = (band.stop - band.start) * (movie.header.frame_size_bytes // movie.header.ny)
    for index in indices:
        yield movie.read_rows(index, band.start, band.stop, out=buffer[:size_bytes])


def _float32_band_rows(
    movie: MrcMovie, band: GainBand, indices: Sequence[int], buffer: npt.NDArray[np.uint8]
) -> Iterator[npt.NDArray[np.float32]]:
    """:func:`_band_rows` of a float32 (mode 2) movie, in native byte order."""
    for values in _band_rows(movie, band, indices, buffer):
        yield values.astype(np.float32, copy=False)


def _band_buffer(movie: MrcMovie, bands: Sequence[GainBand]) -> npt.NDArray[np.uint8]:
    """A read buffer for the tallest band's rows."""
    row_size_bytes = movie.header.frame_size_bytes // movie.header.ny
    return np.empty(max(band.stop - band.start for band in bands) * row_size_bytes, dtype=np.uint8)


def _integral_sample(movie: MrcMovie, indices: Sequence[int], bands: Sequence[GainBand]) -> bool:
    """Every value of the sampled frames is an integer; stops at the first band that is not."""
    if not indices:
        return True
    buffer = _band_buffer(movie, bands)
    for index in indices:
        for band in bands:
            for values in _band_rows(movie, band, (index,), buffer):
                if not kernels.float_frame_stats(values)[0]:
                    return False
    return True


def _given_gain_exceptions(
    movie: MrcMovie, indices: Sequence[int], bands: Sequence[GainBand], gain: npt.NDArray[np.float32]
) -> tuple[int, int]:
    """(values ``gain`` does not reproduce, values) of the sampled frames, band by band."""
    buffer = _band_buffer(movie, bands)
    n_bad = n_values = 0
    for band in bands:
        bad, values = exception_counts(
            _float32_band_rows(movie, band, indices, buffer), gain[band.start : band.stop]
        )
        n_bad += bad
        n_values += values
    return n_bad, n_values


@dataclass(frozen=True)
class _SelfConsistency:
    """How well a gain estimated from the sample itself explains it, summed over bands."""

    n_bad: int  # sampled values the estimated gain does not reproduce
    n_values: int
    n_reliable: int  # pixels whose gain two distinct values confirm
    n_hit: int

    @property
    def fraction(self) -> float:
        return self.n_bad / max(1, self.n_values)

    @property
    def confirmed(self) -> float:
        return self.n_reliable / max(1, self.n_hit)


def _self_consistency(
    path: str | os.PathLike[str], n_sample_frames: int | None, bands: Sequence[GainBand]
) -> _SelfConsistency:
    """Per band: a partial from the band's rows of the sample, finalized, then the rows read again to count
    the values the band's gain does not reproduce. Each value and pixel belongs to one band, so the
    sums are exactly those of the whole frames.
    """
    n_bad = n_values = n_reliable = n_hit = 0
    with MrcMovie(path) as movie:
        indices = sample_frame_indices(movie.header.nz, n_sample_frames)
        for band in bands:
            partial = gain_partial_from_movie(path, max_frames=n_sample_frames, rows=band.rows)
            estimate = finalize_gain(partial)
            del partial  # the band's gain (5 bytes a pixel) and not its partial (20) while counting
            buffer = _band_buffer(movie, (band,))
            bad, values = exception_counts(_float32_band_rows(movie, band, indices, buffer), estimate.gain)
            n_bad += bad
            n_values += values
            n_reliable += estimate.n_reliable
            n_hit += estimate.n_hit
            del estimate, buffer  # nothing of this band held while the next one's partial is built
    return _SelfConsistency(n_bad, n_values, n_reliable, n_hit)


def classify_movie(
    path: str | os.PathLike[str],
    *,
    gain: npt.NDArray[np.float32] | None = None,
    n_sample_frames: int = DEFAULT_SAMPLE_FRAMES,
    n_bands: int | None = None,
) -> MovieClass:
    """Counts, gain-normalised or float, from ``n_sample_frames`` frames spread over the movie.

    With ``gain`` (float32, MRC row order) the movie is gain-normalised only if
    that gain reproduces all but :data:`MAX_EXCEPTION_FRACTION` of the sampled
    values; a movie from another gain is "float". Without, a gain is estimated
    from the sample itself and must both reproduce the values and be confirmed
    (two distinct values) at :data:`MIN_RELIABLE_FRACTION` of the hit pixels;
    a sample too sparse to confirm it is grown 4x at a time, up to every frame.

    The sample is streamed by the row bands of :func:`~.estimate.gain_bands`
    (``n_bands`` of them, or as few as keep each within ``MAX_BAND_PIXELS``):
    the integral check stops at the first band that is not; a given gain counts
    its exceptions band by band; an estimated gain is built, finalized and
    tried band by band, reading each band's rows of the sample twice. Memory
    is at most one band's partial and gain (25 bytes a band pixel) plus one
    band's rows and exception lists, whatever the number of sampled frames.
    """
    name = str(path)
    with MrcMovie(path) as movie:
        header = movie.header
        indices = sample_frame_indices(header.nz, n_sample_frames)
        n = len(indices)
        bands = gain_bands(header.frame_shape, n_bands=n_bands) if indices else ()
        integral = header.value_dtype.kind in "iu" or _integral_sample(movie, indices, bands)
        if integral:
            return MovieClass(
                name, "counts", f"the {n} sampled frames hold integers only: raw counts, no gain", n
            )
        if header.mode != 2:
            return MovieClass(name, "float", f"{header.value_dtype.name} values are not integers", n)
        if gain is not None:
            if gain.shape != header.frame_shape:
                return MovieClass(
                    name, "float", f"the gain's shape {gain.shape} is not the frames' {header.frame_shape}", n
                )
            n_bad, n_values = _given_gain_exceptions(
                movie, indices, bands, np.ascontiguousarray(gain, dtype=np.float32)
            )
            fraction = n_bad / max(1, n_values)
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
                f"the gain reproduces only {100 * (1 - fraction):.2f}% of sampled values: "
                f"not this movie's gain",
                n,
                fraction,
            )
    n_requested = n_sample_frames
    while True:
        consistency = _self_consistency(path, n_requested, bands)
        fraction, confirmed = consistency.fraction, consistency.confirmed
        if fraction > MAX_EXCEPTION_FRACTION or confirmed >= MIN_RELIABLE_FRACTION or n >= header.nz:
            break
        n_requested = 4 * n  # sparse frames: look at more of them
        n = len(sample_frame_indices(header.nz, n_requested))
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
