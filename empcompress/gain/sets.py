"""One gain estimated over a list of movies (the ``gain estimate`` command)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import GainError
from ..gainref import exception_counts
from ..mrc import MrcMovie, read_header
from .classify import classify_movie
from .estimate import GainEstimate, sample_frame_indices
from .limits import DEFAULT_SAMPLE_FRAMES


@dataclass(frozen=True, eq=False)
class SetEstimate:
    """A gain estimated over a set of movies, with what was left out and why."""

    estimate: GainEstimate
    used: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, reason): raw counts or not gain-normalised
    #: (path, exception fraction of a sample under the final gain): another gain, left out
    misfits: tuple[tuple[str, float], ...]


#: Movies whose own estimates are compared to choose the seed (evenly spaced over the list).
SEED_SAMPLE_MOVIES = 8


def estimate_set_gain(
    paths: Sequence[str | os.PathLike[str]],
    *,
    max_frames: int | None = None,
    n_sample_frames: int = DEFAULT_SAMPLE_FRAMES,
    progress: Callable[[str, int], None] | None = None,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> SetEstimate:
    """Classify each movie, estimate one gain over those that share it, robustly.

    Raw-count and genuinely float movies are skipped (a gain never applies to
    them). Of the gain-normalised ones, up to :data:`SEED_SAMPLE_MOVIES` are
    compared (their own estimates, in the 8 orientations: see
    :mod:`.grouping`); the largest agreeing set seeds the gain, and every other
    movie joins when the seed's gain reproduces it (in any orientation). Each
    used movie's partial is merged in the seed's orientation. Movies that do not
    fit are listed as misfits (another session's gain): they never spoil the
    estimate.

    Memory does not grow with the number of movies: the sampled movies' own
    estimates are kept in scratch files under ``scratch_dir`` (``TMPDIR`` when
    None; 4 bytes a pixel a movie, 8 for square frames) and compared by row
    bands (:mod:`.set_compare`), with the same comparisons as in memory.
    """
    from .grouping import (
        choose_seed,
        fit_gain,
        group_estimate,
        majority_frame,
        movie_estimate,
    )
    from .set_compare import compare_sampled_estimates

    candidates: list[str] = []
    skipped: list[tuple[str, str]] = []
    for path in paths:
        kind = classify_movie(path, n_sample_frames=n_sample_frames)
        if kind.kind != "gain-normalised":
            skipped.append((str(path), f"{kind.kind}: {kind.reason}"))
        else:
            candidates.append(str(path))
        if progress is not None:
            progress("estimate", 1)
    if not candidates:
        raise GainError(
            f"none of the {len(paths)} movies is gain-normalised; no gain to estimate "
            f"({'; '.join(f'{p}: {r}' for p, r in skipped[:3])})"
        )
    n_sample = min(len(candidates), SEED_SAMPLE_MOVIES)
    sample = [candidates[int(i * len(candidates) / n_sample)] for i in range(n_sample)]
    comparisons = compare_sampled_estimates(
        sample,
        lambda path: movie_estimate(path, n_sample_frames=n_sample_frames),
        [read_header(path).frame_shape for path in sample],
        scratch_dir=scratch_dir,
    )
    seed = choose_seed(n_sample, comparisons)
    # the gain is written in the orientation most of the movies have
    oriented = {sample[index]: orientation for index, orientation in majority_frame(seed.members)}
    seed_gain = group_estimate(list(oriented.items()), n_sample_frames=max_frames).gain
    for path in candidates:
        if path in oriented:
            continue
        fit = fit_gain(path, seed_gain, name="the seed's gain")
        if fit.fits and fit.transform is not None and fit.transform.scale == "same":
            oriented[path] = fit.transform.orientation
    used = [path for path in candidates if path in oriented]
    del seed_gain
    estimate = group_estimate([(path, oriented[path]) for path in used], n_sample_frames=max_frames)
    misfits = [
        (path, _sample_exception_fraction(path, estimate.gain, n_sample_frames))
        for path in candidates
        if path not in oriented
    ]
    return SetEstimate(estimate, tuple(used), tuple(skipped), tuple(misfits))


def _sample_exception_fraction(path: str, gain: npt.NDArray[np.float32], n_sample_frames: int) -> float:
    """The fraction of the movie's sample frames' values ``gain`` does not reproduce, a frame at a time."""
    n_bad = n_values = 0
    with MrcMovie(path) as movie:
        for index in sample_frame_indices(movie.header.nz, n_sample_frames):
            frame = movie.read_frame(index)
            frame = frame if frame.dtype.isnative else frame.astype(frame.dtype.newbyteorder("="))
            bad, values = exception_counts([frame.astype(np.float32, copy=False)], gain)
            n_bad += bad
            n_values += values
    return n_bad / max(1, n_values)
