"""Estimate a gain: mergeable per-pixel partials of sampled frames, finalized into a float32 gain.

A partial is 20 bytes a pixel (1.9 GB for a K3 super-resolution frame), so big
frames are estimated by *bands*: ranges of rows of the gain (:func:`gain_bands`).
Every step is per pixel, so each band's partials are built, merged and finalized
on their own, and only the finished gain (5 bytes a pixel) is assembled whole
(:func:`assemble_gain_estimate`): the result is the same bit for bit. Frames of
4096x4096 pixels and smaller are one band.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..errors import GainError
from ..mrc import MrcHeader, MrcMovie, read_header

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


#: Most pixels of a band. A band's partial is 20 bytes a pixel (4 kept float32 values, n_kept,
#: n_hits uint16, flags): at most 320 MiB. 4096x4096 frames are one band.
MAX_BAND_PIXELS = 4096 * 4096

Rows = tuple[int, int]  # (start, stop)


@dataclass(frozen=True)
class GainBand:
    """Rows ``start:stop`` of a gain of ``frame_shape`` (rows, columns)."""

    start: int
    stop: int
    frame_shape: tuple[int, int]

    @property
    def rows(self) -> Rows:
        return (self.start, self.stop)


def gain_bands(frame_shape: tuple[int, int], *, n_bands: int | None = None) -> tuple[GainBand, ...]:
    """The row bands a gain of ``frame_shape`` is estimated by, top to bottom, of near-equal heights.

    As few as keep every band within :data:`MAX_BAND_PIXELS` (one for 4096x4096
    and smaller frames), or ``n_bands`` (at most one a row).
    """
    ny, nx = frame_shape
    if ny < 1 or nx < 1:
        raise GainError(f"no gain bands for an empty {nx}x{ny} frame")
    if n_bands is None:
        n_bands = math.ceil(ny / max(1, MAX_BAND_PIXELS // nx))
    if n_bands < 1:
        raise ValueError(f"the number of gain bands must be at least 1, not {n_bands}")
    n_bands = min(n_bands, ny)
    height, n_taller = divmod(ny, n_bands)
    bands = []
    start = 0
    for index in range(n_bands):
        stop = start + height + (1 if index < n_taller else 0)
        bands.append(GainBand(start, stop, (ny, nx)))
        start = stop
    return tuple(bands)


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


def gain_partial_from_movie(
    path: str | os.PathLike[str],
    *,
    max_frames: int | None = None,
    rows: Rows | None = None,
    columns: Rows | None = None,
) -> GainPartial:
    """Gain summary of one float32 movie: all frames, or ``max_frames`` spread evenly.

    The caller decides which movies share a gain (do not mix in raw-count
    movies or movies from another session; :func:`classify_movie` tells).
    ``rows`` and ``columns`` (``(start, stop)``) limit it to that part of each
    frame: only those rows are read; a column range reads whole rows.
    """
    with MrcMovie(path) as movie:
        header = movie.header
        _require_float32(header, path, "a gain estimate")
        ny, nx = header.frame_shape
        row_start, row_stop = (0, ny) if rows is None else rows
        column_start, column_stop = (0, nx) if columns is None else columns
        if not (0 <= row_start < row_stop <= ny and 0 <= column_start < column_stop <= nx):
            raise ValueError(
                f"{path}: rows {row_start}:{row_stop}, columns {column_start}:{column_stop} are not "
                f"within its {nx}x{ny} frames"
            )
        whole_rows = column_start == 0 and column_stop == nx
        partial = empty_gain_partial((row_stop - row_start, column_stop - column_start), sources=(str(path),))
        indices = sample_frame_indices(header.nz, max_frames)
        buffer = None
        if rows is not None and (row_start, row_stop) != (0, ny):
            buffer = np.empty((row_stop - row_start) * (header.frame_size_bytes // ny), dtype=np.uint8)
        for index in indices:
            if buffer is None:
                values = movie.read_frame(index)[row_start:row_stop]
            else:
                values = movie.read_rows(index, row_start, row_stop, out=buffer)
            if not whole_rows:
                values = np.ascontiguousarray(values[:, column_start:column_stop])
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
    # one byte a pixel at a time (bincount would make an 8-byte-a-pixel copy of the status)
    counts = [int(np.count_nonzero(status == code)) for code in range(4)]
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


def assemble_gain_estimate(bands: Iterable[GainEstimate], *, frame_shape: tuple[int, int]) -> GainEstimate:
    """The whole estimate from its bands' (top to bottom, as :func:`gain_bands` gives them).

    A single band covering the frame is returned as it is; otherwise the bands
    are copied into the whole gain one at a time (an iterator of bands holds one).
    """
    ny, nx = frame_shape
    iterator = iter(bands)
    first = next(iterator, None)
    if first is None:
        raise GainError(f"no bands to assemble a {nx}x{ny} gain from")
    if first.gain.shape == (ny, nx) and next(iterator, None) is None:
        return first
    n_frames, sources = first.n_frames, first.sources
    gain = np.empty((ny, nx), dtype=np.float32)
    status = np.empty((ny, nx), dtype=np.uint8)
    counts = [0, 0, 0, 0]  # indexed by status code
    row = 0
    for band in itertools.chain((first,), iterator):
        band_rows, band_columns = band.gain.shape
        if band_columns != nx or row + band_rows > ny:
            raise GainError(
                f"a gain band of {band_columns}x{band_rows} pixels does not fit at row {row} "
                f"of a {nx}x{ny} gain"
            )
        if (band.n_frames, band.sources) != (n_frames, sources):
            raise GainError("the bands of one gain were estimated from different frames")
        gain[row : row + band_rows] = band.gain
        status[row : row + band_rows] = band.status
        counts[kernels.GAIN_UNHIT] += band.n_unhit
        counts[kernels.GAIN_RELIABLE] += band.n_reliable
        counts[kernels.GAIN_UNCONFIRMED] += band.n_unconfirmed
        counts[kernels.GAIN_EXCEPTION] += band.n_exception
        row += band_rows
    if row != ny:
        raise GainError(f"the gain bands cover {row} of the {ny} rows of a {nx}x{ny} gain")
    return GainEstimate(
        gain=gain,
        status=status,
        n_reliable=counts[kernels.GAIN_RELIABLE],
        n_unconfirmed=counts[kernels.GAIN_UNCONFIRMED],
        n_exception=counts[kernels.GAIN_EXCEPTION],
        n_unhit=counts[kernels.GAIN_UNHIT],
        n_frames=n_frames,
        sources=sources,
    )


def estimate_gain(
    paths: Sequence[str | os.PathLike[str]], *, max_frames: int | None = None, n_bands: int | None = None
) -> GainEstimate:
    """Estimate one gain from several movies (serially; the pipeline does the same on Dask).

    Band by band (:func:`gain_bands`): memory is two band partials and the gain.
    """
    if not paths:
        raise GainError("no movies to estimate a gain from")
    frame_shape = read_header(paths[0]).frame_shape
    for path in paths[1:]:
        shape = read_header(path).frame_shape
        if shape != frame_shape:
            raise GainError(
                f"cannot merge gain summaries of {frame_shape[1]}x{frame_shape[0]} and {shape[1]}x{shape[0]} "
                f"frames ({path}): movies of one gain have one frame size"
            )

    def band_partials(band: GainBand) -> Iterator[GainPartial]:
        for path in paths:
            yield gain_partial_from_movie(path, max_frames=max_frames, rows=band.rows)

    return banded_estimate(frame_shape, band_partials, n_bands=n_bands)


def banded_estimate(
    frame_shape: tuple[int, int],
    band_partials: Callable[[GainBand], Iterable[GainPartial]],
    *,
    n_bands: int | None = None,
) -> GainEstimate:
    """A gain built band by band (:func:`gain_bands`) from each band's partials, merged in turn.

    Memory: the merged partial and one more of a band, and the gain; never a whole-frame partial.
    """

    def band_estimates() -> Iterator[GainEstimate]:
        for band in gain_bands(frame_shape, n_bands=n_bands):
            merged: GainPartial | None = None
            for partial in band_partials(band):
                merged = partial if merged is None else merge_gain_partials(merged, partial, into_first=True)
                del partial  # one partial and the merged one at a time, never three
            if merged is None:
                raise GainError("no movies to estimate a gain from")
            estimate = finalize_gain(merged)
            del merged  # not held while the next band is read
            yield estimate
            del estimate

    return assemble_gain_estimate(band_estimates(), frame_shape=frame_shape)
