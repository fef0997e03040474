"""The gain-grouping tasks that run on Dask workers (see :mod:`.gain_groups` for the order).

Each is a thin wrapper over :mod:`empcompress.gain.grouping`: estimates and
partials are returned as Dask results that stay on the workers and are passed
from task to task; only fits and comparisons (a few numbers) reach the client.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import numpy as np
import numpy.typing as npt

from ..cluster.warm_up import after_warm_up
from ..errors import EmpCompressError, GainError, InputError
from ..files import file_digests
from ..frame_buffers import dropping_idle_frame_buffers
from ..gain import grouping
from ..gain.estimate import (
    GainBand,
    GainEstimate,
    GainPartial,
    assemble_gain_estimate,
    finalize_gain,
    merge_gain_partials,
)
from ..gainref import read_gain_reference, write_gain_reference

__all__ = [
    "ReferenceWritten",
    "load_reference_task",
    "fit_candidates_task",
    "movie_estimate_task",
    "compare_task",
    "movie_partial_task",
    "merge_task",
    "finalize_task",
    "assemble_task",
    "fit_estimate_task",
    "write_estimate_task",
]

_Arguments = ParamSpec("_Arguments")
_Result = TypeVar("_Result")


def gain_step(task: Callable[_Arguments, _Result]) -> Callable[_Arguments, _Result]:
    """``task`` as a gain-grouping task: it waits for the worker's warm-up, and lets go of the frame
    buffers the worker keeps before it starts (its declared memory does not count them,
    :func:`~empcompress.pipeline.memory.gain_step_need_bytes`) and of its own when it ends (its
    results, kept on the worker for the next step, are what the worker holds)."""
    return after_warm_up(dropping_idle_frame_buffers(task))


@gain_step
def load_reference_task(reference_path: str) -> npt.NDArray[np.float32] | None:
    """A candidate reference's array as its file stores it (None when it cannot be read as one).

    Loaded once on the cluster and handed to every fit task (Dask copies it once per worker).
    """
    try:
        return read_gain_reference(reference_path).data
    except (GainError, InputError, OSError):
        return None


@gain_step
def fit_candidates_task(
    movie_path: str, references: tuple[npt.NDArray[np.float32] | None, ...], names: tuple[str, ...]
) -> tuple[int, grouping.GainFit] | None:
    """The first reference (index) that reproduces the movie, with the fit; None when none does.

    A movie that cannot be read raises (an I/O error is a failure of this run, retried by the next).
    """
    for index, (reference, name) in enumerate(zip(references, names, strict=True)):
        if reference is None:
            continue
        fit = grouping.fit_gain(movie_path, reference, name=name)
        if fit.fits:
            return index, fit
    return None


@dataclass(frozen=True)
class EstimateFailed:
    """A sampled movie whose own estimate could not be made (an I/O error): it seeds nothing."""

    message: str


@gain_step
def movie_estimate_task(movie_path: str, n_sample_frames: int) -> GainEstimate | EstimateFailed:
    try:
        return grouping.movie_estimate(movie_path, n_sample_frames=n_sample_frames)
    except (EmpCompressError, OSError) as error:
        return EstimateFailed(f"{movie_path}: {error}")


@gain_step
def compare_task(
    first: GainEstimate | EstimateFailed, second: GainEstimate | EstimateFailed, indices: tuple[int, int]
) -> grouping.Comparison:
    if isinstance(first, EstimateFailed) or isinstance(second, EstimateFailed):
        unreadable = tuple(
            index
            for index, estimate in zip(indices, (first, second), strict=True)
            if isinstance(estimate, EstimateFailed)
        )
        return grouping.Comparison(indices[0], indices[1], grouping.UNKNOWN, "identity", 0, 0.0, unreadable)
    return grouping.compare_estimates(first, second, indices=indices)


@gain_step
def movie_partial_task(
    movie_path: str, n_sample_frames: int, orientation: str, band: GainBand | None = None
) -> GainPartial:
    """The movie's partial in the group's orientation: of rows ``band`` of the gain (None: all)."""
    return grouping.movie_partial(
        movie_path, n_sample_frames=n_sample_frames, orientation=orientation, band=band
    )


@gain_step
def merge_task(first: GainPartial, second: GainPartial) -> GainPartial:
    # each partial feeds one merge of the tree: merging into the first saves a third partial
    return merge_gain_partials(first, second, into_first=True)


@gain_step
def finalize_task(partial: GainPartial) -> GainEstimate:
    return finalize_gain(partial)


@gain_step
def assemble_task(bands: list[GainEstimate], frame_shape: tuple[int, int]) -> GainEstimate:
    """The group's whole gain from its bands' finalized estimates (top to bottom)."""
    return assemble_gain_estimate(bands, frame_shape=frame_shape)


@gain_step
def fit_estimate_task(movie_path: str, estimate: GainEstimate) -> grouping.GainFit:
    """Does the group's gain reproduce the movie? (A movie that cannot be read raises: see above.)"""
    return grouping.fit_gain(movie_path, estimate.gain, name="the group's estimated gain")


@dataclass(frozen=True)
class ReferenceWritten:
    output_size_bytes: int
    output_sha256: str
    output_md5: str
    detail_json: str


@gain_step
def write_estimate_task(estimate: GainEstimate, output_path: str) -> ReferenceWritten:
    """Write a group's gain at the path the layout gave it; its digests read back from disk."""
    final = Path(output_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # the layout gave a fresh name: a file there already is not ours to replace (the same gain is fine)
    written_sha256 = write_gain_reference(final, estimate.gain, overwrite=False)
    digests = file_digests(final)
    if written_sha256 != digests["sha256"]:
        raise GainError(f"{final}: the gain reference does not read back as written")
    detail: dict[str, Any] = {
        "n_frames": estimate.n_frames,
        "n_reliable": estimate.n_reliable,
        "n_unconfirmed": estimate.n_unconfirmed,
        "n_exception": estimate.n_exception,
        "n_unhit": estimate.n_unhit,
        "n_movies": len(set(estimate.sources)),
    }
    return ReferenceWritten(final.stat().st_size, digests["sha256"], digests["md5"], json.dumps(detail))
