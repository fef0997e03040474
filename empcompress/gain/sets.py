"""One gain estimated over a list of movies (the ``gain estimate`` command)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import GainError
from ..gainref import (
    exception_fraction,
)
from ..mrc import MrcMovie

# ---------------------------------------------------------------- a set of movies
from .classify import classify_movie, read_sample_frames
from .estimate import GainEstimate, GainPartial, finalize_gain, gain_partial_from_movie, merge_gain_partials
from .limits import (
    DEFAULT_SAMPLE_FRAMES,
    MAX_EXCEPTION_FRACTION,
)


@dataclass(frozen=True, eq=False)
class SetEstimate:
    """A gain estimated over a set of movies, with what was left out and why."""

    estimate: GainEstimate
    used: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (path, reason): raw counts or not gain-normalised
    misfits: tuple[tuple[str, float], ...]  # (path, exception fraction of a sample under the final gain)


def estimate_set_gain(
    paths: Sequence[str | os.PathLike[str]],
    *,
    max_frames: int | None = None,
    n_sample_frames: int = DEFAULT_SAMPLE_FRAMES,
    progress: Callable[[str, int], None] | None = None,
) -> SetEstimate:
    """Classify each movie, estimate one gain over the gain-normalised ones, check each against it.

    Raw-count and genuinely float movies are skipped (a gain never applies to
    them). Movies whose sample the final gain does not reproduce are listed as
    misfits: they probably come from another session and need their own gain.
    """
    used: list[str] = []
    skipped: list[tuple[str, str]] = []
    merged: GainPartial | None = None
    for path in paths:
        kind = classify_movie(path, n_sample_frames=n_sample_frames)
        if kind.kind != "gain-normalised":
            skipped.append((str(path), f"{kind.kind}: {kind.reason}"))
        else:
            partial = gain_partial_from_movie(path, max_frames=max_frames)
            merged = partial if merged is None else merge_gain_partials(merged, partial)
            used.append(str(path))
        if progress is not None:
            progress("estimate", 1)
    if merged is None:
        raise GainError(
            f"none of the {len(paths)} movies is gain-normalised; no gain to estimate "
            f"({'; '.join(f'{p}: {r}' for p, r in skipped[:3])})"
        )
    estimate = finalize_gain(merged)
    misfits = []
    for path in used:
        with MrcMovie(path) as movie:
            frames = [f.astype(np.float32, copy=False) for f in read_sample_frames(movie, n_sample_frames)]
        fraction = exception_fraction(frames, estimate.gain)
        if fraction > MAX_EXCEPTION_FRACTION:
            misfits.append((path, fraction))
    return SetEstimate(estimate, tuple(used), tuple(skipped), tuple(misfits))
