"""Group gain-normalised movies by the gain they share, wherever they sit on a drive.

A drive's gain-normalised movies come from one or more sessions, each with one
gain, and a movie may have been normalised with its session's gain in another
orientation (the field's most common gain mistake). Folders say nothing
reliable about which gain a movie shares, so grouping looks at the values:

1. **Reference candidates first.** A gain reference found on the drive (or one
   written by an earlier run) is tried on every movie: :func:`fit_reference`
   reads :data:`~.limits.ORIENT_SAMPLE_FRAMES` frames of the movie and tries the
   8 flips/rotations and the 2x size changes. A movie it reproduces joins that
   reference's group, with its own :class:`~empcompress.gainref.GainTransform`.
2. **Robust estimation for the rest.** Up to ``n_sample_movies`` movies are
   sampled; each gives its own estimate (:func:`movie_estimate`: frames read as
   classification does, growing the sample on sparse data). Two estimates are
   compared on the pixels both confirm (:func:`compare_estimates`): equal in one
   orientation (*agree*), different in all (*conflict*) or too little overlap to
   tell (*unknown*). :func:`choose_seed` takes the largest set of agreeing movies
   (with each one's orientation relative to a root movie); a movie that conflicts
   is never merged into the estimate, so one odd movie cannot spoil a group. The
   seed's partials, each turned into the root's orientation
   (:func:`orient_partial`), are merged and finalized into the group's gain, by
   row bands of the gain (:func:`~.estimate.gain_bands`: one for frames up to
   4096x4096) so that no step holds a whole super-resolution frame's partial.
3. **Every movie is then fitted** to that gain (:func:`fit_gain`); those it does
   not reproduce are grouped again from step 2, until every movie has a group or
   a round finds none (those movies are stored on their own terms: lossless
   float).

Everything here is plain NumPy over small frozen dataclasses; the pipeline runs
each step as Dask tasks (one per movie, or per pair of sampled movies), so the
client holds only the decisions, never a frame or a gain.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..errors import GainError
from ..gainref import ORIENTATION_CODES, TRANSFORMS, GainTransform, orient_gain, read_gain_reference
from ..mrc import MrcMovie, read_header
from .classify import read_sample_frames
from .estimate import (
    GainBand,
    GainEstimate,
    GainPartial,
    Rows,
    banded_estimate,
    estimate_gain,
    gain_partial_from_movie,
)
from .limits import MAX_EXCEPTION_FRACTION, MIN_RELIABLE_FRACTION, ORIENT_SAMPLE_FRAMES

__all__ = [
    "AGREE",
    "CONFLICT",
    "UNKNOWN",
    "MIN_OVERLAP_PIXELS",
    "MIN_AGREEMENT",
    "GainFit",
    "Comparison",
    "Seed",
    "movie_estimate",
    "movie_partial",
    "group_estimate",
    "root_frame_shape",
    "source_region",
    "compare_estimates",
    "compared_orientations",
    "comparison_from_counts",
    "choose_seed",
    "orient_partial",
    "fit_gain",
    "fit_reference",
    "inverse_orientation",
    "compose_orientations",
    "majority_frame",
]

AGREE, CONFLICT, UNKNOWN = "agree", "conflict", "unknown"
#: Two estimates are compared only where both confirm a gain at this many pixels or more.
MIN_OVERLAP_PIXELS = 200
#: Two estimates agree in an orientation when this fraction of their jointly confirmed pixels are
#: equal (one movie's estimate is a multiple of the true gain at a few percent of its confirmed
#: pixels when a pixel's smallest counts share a factor; two gains agree at about none).
MIN_AGREEMENT = 0.9
#: ... and conflict when they agree at fewer than this in every orientation.
MAX_CONFLICT_AGREEMENT = 0.5
_SWAPPING = ("rotate-90", "rotate-270", "transpose", "anti-transpose")
_INVERSE = {"rotate-90": "rotate-270", "rotate-270": "rotate-90"}


@dataclass(frozen=True)
class GainFit:
    """Whether a gain reproduces a movie's sampled values, and in which orientation."""

    path: str
    fits: bool
    transform: GainTransform | None
    exception_fraction: float
    n_sampled_frames: int
    reason: str


@dataclass(frozen=True)
class Comparison:
    """Two movies' estimates compared: ``second``'s gain is ``orientation`` applied to ``first``'s."""

    first: int
    second: int
    verdict: str  # AGREE | CONFLICT | UNKNOWN
    orientation: str  # an ORIENTATION_CODES value (meaningful for AGREE)
    n_overlap_pixels: int
    agreement: float  # best fraction of equal values over the overlap
    unreadable: tuple[int, ...] = ()  # of the two, the movies whose estimate could not be made


@dataclass(frozen=True)
class Seed:
    """The sampled movies whose estimates are merged, each with its orientation relative to the root."""

    members: tuple[tuple[int, str], ...]  # (index into the sample, orientation of its gain vs the root's)
    left_out: tuple[tuple[int, str], ...]  # (index, why it was not merged)


def inverse_orientation(code: str) -> str:
    """The flip/rotation that undoes ``code`` (every one is its own inverse but the quarter turns)."""
    return _INVERSE.get(code, code)


def _orient(array: npt.NDArray[np.generic], code: str) -> npt.NDArray[np.generic]:
    """``array`` (first two axes are rows, columns) under the flip/rotation ``code``."""
    if code == "identity":
        return array
    name = next(key for key, value in ORIENTATION_CODES.items() if value == code)
    transform = next(entry[3] for entry in TRANSFORMS if entry[0] == name)
    if array.ndim == 2:
        return np.ascontiguousarray(transform(array))  # type: ignore[arg-type]
    # per-pixel stacks (ny, nx, K): move the pixel axes, keep the last
    moved = np.stack([transform(array[..., k]) for k in range(array.shape[-1])], axis=-1)  # type: ignore[arg-type]
    return np.ascontiguousarray(moved)


def _float_frames(path: str | os.PathLike[str], n_frames: int | None) -> list[npt.NDArray[np.float32]]:
    with MrcMovie(path) as movie:
        if movie.header.mode != 2:
            raise GainError(f"{path}: MRC mode {movie.header.mode} holds no gain-normalised float32 values")
        return [frame.astype(np.float32, copy=False) for frame in read_sample_frames(movie, n_frames)]


def movie_partial(
    path: str | os.PathLike[str],
    *,
    n_sample_frames: int | None,
    orientation: str = "identity",
    band: GainBand | None = None,
) -> GainPartial:
    """A movie's gain partial from its sample frames, turned into another movie's orientation.

    ``orientation`` is how this movie's gain relates to the group's root (from
    :func:`choose_seed`); the partial is turned back by its inverse so that
    partials of one group merge pixel for pixel. ``band`` (rows of the turned
    gain, see :func:`~.estimate.gain_bands`) limits it to those rows: only the
    source rows they come from are read (for the quarter turns and transposes,
    whole frames are read and the columns they come from kept).
    """
    code = inverse_orientation(orientation)
    if band is None:
        partial = gain_partial_from_movie(path, max_frames=n_sample_frames)  # frame by frame
    else:
        frame_shape = read_header(path).frame_shape
        if root_frame_shape(frame_shape, orientation) != band.frame_shape:
            raise GainError(
                f"{path}: its {frame_shape[1]}x{frame_shape[0]} frames do not make a "
                f"{band.frame_shape[1]}x{band.frame_shape[0]} gain: movies of one gain have one frame size"
            )
        rows, columns = source_region(code, frame_shape, band.rows)
        partial = gain_partial_from_movie(path, max_frames=n_sample_frames, rows=rows, columns=columns)
    return orient_partial(partial, code)


def root_frame_shape(frame_shape: tuple[int, int], orientation: str) -> tuple[int, int]:
    """The shape of a movie's partial of ``frame_shape`` frames turned into the root's orientation."""
    ny, nx = frame_shape
    return (nx, ny) if inverse_orientation(orientation) in _SWAPPING else (ny, nx)


def source_region(code: str, frame_shape: tuple[int, int], band: Rows) -> tuple[Rows | None, Rows | None]:
    """The source (rows, columns) whose pixels rows ``band`` of the frame under ``code`` are made of."""
    ny, nx = frame_shape
    swapping = code in _SWAPPING
    # where each row of the turned frame comes from: a source row, or a source column when swapping
    probe = np.arange(nx)[None, :] if swapping else np.arange(ny)[:, None]
    origin = _orient(probe, code)[:, 0]
    start, stop = band
    if not 0 <= start < stop <= origin.size:
        raise ValueError(f"rows {start}:{stop} are not within a {origin.size}-row gain")
    low, high = int(origin[start:stop].min()), int(origin[start:stop].max()) + 1
    assert high - low == stop - start  # flips and turns keep a band of rows (columns) together
    return (None, (low, high)) if swapping else ((low, high), None)


def orient_partial(partial: GainPartial, code: str) -> GainPartial:
    """The partial of the same frames under the flip/rotation ``code``."""
    if code == "identity":
        return partial
    return GainPartial(
        kept=_orient(partial.kept, code),  # type: ignore[arg-type]
        n_kept=_orient(partial.n_kept, code),  # type: ignore[arg-type]
        n_hits=_orient(partial.n_hits, code),  # type: ignore[arg-type]
        flags=_orient(partial.flags, code),  # type: ignore[arg-type]
        n_frames=partial.n_frames,
        sources=partial.sources,
    )


def movie_estimate(
    path: str | os.PathLike[str], *, n_sample_frames: int, max_frames: int | None = None
) -> GainEstimate:
    """One movie's own gain estimate, from a sample grown 4x at a time until it confirms enough pixels.

    The same rule as classification: stop once :data:`MIN_RELIABLE_FRACTION` of
    the hit pixels are confirmed (two distinct values), or at ``max_frames`` (all
    frames when None).
    """
    n_frames = n_sample_frames
    with MrcMovie(path) as movie:
        n_total = movie.header.nz
    while True:
        # band by band, frame by frame: memory is the gain (5 bytes a pixel) and one band's partial
        estimate = estimate_gain([path], max_frames=n_frames)
        confirmed = estimate.n_reliable / max(1, estimate.n_hit)
        n_read = min(n_frames, n_total)
        grown = 4 * n_read
        if confirmed >= MIN_RELIABLE_FRACTION or n_read >= n_total or (max_frames and grown > max_frames):
            return estimate
        del estimate  # not two gains at once
        n_frames = grown


def group_estimate(
    members: Sequence[tuple[str | os.PathLike[str], str]],
    *,
    n_sample_frames: int | None,
    n_bands: int | None = None,
) -> GainEstimate:
    """The gain of movies merged in the root's orientation: ``members`` are (path, orientation).

    Band by band (:func:`~.estimate.gain_bands`), as the pipeline does on Dask:
    memory is two band partials and the gain.
    """
    if not members:
        raise GainError("no movies to estimate a gain from")
    frame_shape = root_frame_shape(read_header(members[0][0]).frame_shape, members[0][1])

    def band_partials(band: GainBand) -> Iterator[GainPartial]:
        for path, orientation in members:
            yield movie_partial(path, n_sample_frames=n_sample_frames, orientation=orientation, band=band)

    return banded_estimate(frame_shape, band_partials, n_bands=n_bands)


def compare_estimates(
    first: GainEstimate, second: GainEstimate, *, indices: tuple[int, int] = (0, 0)
) -> Comparison:
    """Is ``second``'s gain ``first``'s in one of the 8 orientations? Compared where both confirm it."""
    shape = first.gain.shape
    counts: list[tuple[str, int, int]] = []
    # memory: the two estimates and two masks (views of the turned first estimate, not copies)
    second_reliable = second.status == kernels.GAIN_RELIABLE
    both = np.empty_like(second_reliable)
    for name, _, _, transform in TRANSFORMS:
        code = ORIENTATION_CODES[name]
        if code in _SWAPPING and shape[0] != shape[1]:
            continue
        gain, status = transform(first.gain), transform(first.status)  # type: ignore[arg-type]
        if gain.shape != second.gain.shape:
            continue
        np.equal(status, kernels.GAIN_RELIABLE, out=both)
        np.logical_and(both, second_reliable, out=both)
        n_overlap = int(np.count_nonzero(both))
        if n_overlap < MIN_OVERLAP_PIXELS:
            continue
        equal = np.count_nonzero(gain.view(np.uint32)[both] == second.gain.view(np.uint32)[both])
        counts.append((code, n_overlap, int(equal)))
    return comparison_from_counts(counts, indices=indices)


def compared_orientations(frame_shape: tuple[int, int]) -> tuple[str, ...]:
    """The orientations two estimates of ``frame_shape`` frames are compared in (TRANSFORMS' order).

    All 8 for square frames; the quarter turns and transposes change the shape of others.
    """
    ny, nx = frame_shape
    return tuple(
        ORIENTATION_CODES[name]
        for name, _, _, _ in TRANSFORMS
        if ny == nx or ORIENTATION_CODES[name] not in _SWAPPING
    )


def comparison_from_counts(
    counts: Sequence[tuple[str, int, int]], *, indices: tuple[int, int] = (0, 0)
) -> Comparison:
    """The verdict of :func:`compare_estimates` from its counts.

    ``counts`` are (orientation, pixels both estimates confirm, pixels of those
    whose gains are equal bit for bit) in TRANSFORMS' order, for the orientations
    that give the second estimate's shape. They add up over any split of the
    pixels (row bands): what :mod:`.set_compare` relies on.
    """
    best: tuple[float, str, int] = (-1.0, "identity", 0)  # (agreement, orientation, overlap)
    for code, n_overlap, n_equal in counts:
        if n_overlap < MIN_OVERLAP_PIXELS:
            continue
        agreement = float(n_equal) / n_overlap
        if agreement > best[0]:
            best = (agreement, code, n_overlap)
    agreement, code, n_overlap = best
    if agreement >= MIN_AGREEMENT:
        verdict = AGREE
    elif 0 <= agreement < MAX_CONFLICT_AGREEMENT:
        verdict = CONFLICT
    else:  # too little overlap in every orientation, or in between
        verdict = UNKNOWN
    agreement = max(agreement, 0.0)
    return Comparison(indices[0], indices[1], verdict, code, n_overlap, agreement)


def compose_orientations(outer: str, inner: str) -> str:
    """The orientation of applying ``inner`` then ``outer``."""
    probe = np.arange(9, dtype=np.float32).reshape(3, 3)  # all 8 flips/rotations differ on it
    result = _orient(_orient(probe, inner), outer)
    for name, _, _, _ in TRANSFORMS:
        code = ORIENTATION_CODES[name]
        candidate = _orient(probe, code)
        if candidate.shape == result.shape and np.array_equal(candidate, result):
            return code
    raise AssertionError(f"no orientation composes {inner} then {outer}")


def majority_frame(members: Sequence[tuple[int, str]]) -> tuple[tuple[int, str], ...]:
    """The members re-expressed against their most common orientation (identity on a tie).

    ``members`` give each movie's orientation relative to a root; the estimate is
    then written in the orientation most movies have, so that a reference file
    applies as it is to most of them (RELION users pass no flip for those).
    """
    counts: dict[str, int] = {}
    for _, orientation in members:
        counts[orientation] = counts.get(orientation, 0) + 1
    best = max(counts.items(), key=lambda item: (item[1], item[0] == "identity"))[0]
    undo = inverse_orientation(best)
    return tuple((index, compose_orientations(orientation, undo)) for index, orientation in members)


def choose_seed(n_movies: int, comparisons: Sequence[Comparison]) -> Seed:
    """The largest set of agreeing sampled movies, each with its orientation relative to its root.

    Movies join through *agree* edges (orientations compose along the way). A
    movie that conflicts with a member is left out, as is one whose orientation
    would be inconsistent. With no agreement at all (sparse samples: too little
    overlap to tell), every movie without a conflict is merged as it is and the
    fit step decides.
    """
    if n_movies == 0:
        raise GainError("no movies to choose a gain seed from")
    agree = [c for c in comparisons if c.verdict == AGREE]
    conflicts = {(c.first, c.second) for c in comparisons if c.verdict == CONFLICT}
    conflicts |= {(b, a) for a, b in conflicts}
    # breadth first from each root; keep the biggest consistent group
    neighbours: dict[int, list[tuple[int, str]]] = {i: [] for i in range(n_movies)}
    for c in agree:  # second = orientation(first)
        neighbours[c.first].append((c.second, c.orientation))
        neighbours[c.second].append((c.first, inverse_orientation(c.orientation)))
    best: dict[int, str] = {}
    for root in range(n_movies):
        placed = {root: "identity"}
        queue = [root]
        while queue:
            current = queue.pop(0)
            for other, step in neighbours[current]:
                orientation = compose_orientations(step, placed[current])
                if other in placed or any((other, member) in conflicts for member in placed):
                    continue
                placed[other] = orientation
                queue.append(other)
        if len(placed) > len(best):
            best = placed
    if len(best) == 1 and not agree:
        best = {0: "identity"}
        for index in range(1, n_movies):
            if not any((index, member) in conflicts for member in best):
                best[index] = "identity"
    left_out = []
    for index in range(n_movies):
        if index in best:
            continue
        clash = [m for m in best if (index, m) in conflicts]
        left_out.append(
            (
                index,
                "its values conflict with the group's other sampled movies (another gain)"
                if clash
                else "no sampled movie confirms the same gain",
            )
        )
    return Seed(tuple(sorted(best.items())), tuple(left_out))


def fit_gain(
    path: str | os.PathLike[str],
    gain: npt.NDArray[np.float32],
    *,
    name: str,
    n_sample_frames: int = ORIENT_SAMPLE_FRAMES,
    try_reciprocal: bool = False,
) -> GainFit:
    """Does ``gain`` (in the file's own orientation) reproduce the movie, and in which orientation?"""
    frames = _float_frames(path, n_sample_frames)
    try:
        oriented = orient_gain(
            gain,
            frames,
            max_exception_fraction=MAX_EXCEPTION_FRACTION,
            try_reciprocal=try_reciprocal,
            name=name,
        )
    except GainError as error:
        return GainFit(str(path), False, None, 1.0, len(frames), str(error))
    orientation = oriented.orientation
    return GainFit(
        str(path),
        True,
        orientation.as_transform,
        orientation.exception_fraction,
        len(frames),
        f"{name} reproduces it: {orientation.description}",
    )


def fit_reference(
    path: str | os.PathLike[str],
    reference_path: str | os.PathLike[str],
    *,
    n_sample_frames: int = ORIENT_SAMPLE_FRAMES,
) -> GainFit:
    """:func:`fit_gain` with a reference file (read as the field's formats are; see ``gainref``)."""
    reference = read_gain_reference(reference_path)
    return fit_gain(
        path, reference.data, name=os.path.basename(reference_path), n_sample_frames=n_sample_frames
    )
