"""What ``scan`` predicts about gain groups, from the movies its prediction already sampled.

The scan samples a few movies of each folder; those that are gain-normalised are
fitted here (2 frames each) to every gain reference found on the drive (single
float32 MRC sections the scan calls gain references). Per frame size, the
prediction says which reference will serve the group and in which orientation,
or that one is to be estimated (at least one per distinct gain; ``compress``
finds how many), with the size each reference takes in the bag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import EmpCompressError
from ..gainref import read_gain_reference
from ..mrc import HEADER_SIZE_BYTES, read_header
from .grouping import fit_gain

__all__ = ["GainGroupPrediction", "predict_gain_groups"]

ORIGIN_FOUND = "found on the drive"
ORIGIN_TO_ESTIMATE = "to be estimated"


@dataclass(frozen=True)
class GainGroupPrediction:
    """The gain-normalised movies of one frame size, and the reference predicted for them."""

    frame_width: int
    frame_height: int
    n_movies: int  # gain-normalised by the sample: every movie of the folders whose sample says so
    n_sampled: int  # movies fitted to the references
    n_fitted: int  # of those, how many the reference reproduces
    reference: str  # drive path of the depositor's reference, or "" when one is to be estimated
    origin: str  # "found on the drive" | "to be estimated"
    relion_orientation: str  # how the found reference applies to the sampled movies
    reference_size_bytes: int  # each reference in the bag


def predict_gain_groups(
    source: Path,
    *,
    sampled_movies: dict[tuple[int, int], list[str]],
    n_movies: dict[tuple[int, int], int],
    references: Sequence[str],
) -> tuple[GainGroupPrediction, ...]:
    """Per frame size (height, width): the sampled gain-normalised movies fitted to ``references``.

    ``sampled_movies`` and ``references`` are paths relative to ``source``.
    """
    predictions = []
    arrays = _readable_references(source, references, shapes=set(sampled_movies))
    for shape, movies in sorted(sampled_movies.items()):
        height, width = shape
        best: tuple[int, str, str] = (0, "", "")
        for reference, data in arrays.items():
            fitted = 0
            orientation = ""
            for movie in movies:
                try:
                    fit = fit_gain(source / movie, data, name=reference)
                except (EmpCompressError, OSError):
                    continue
                if fit.fits and fit.transform is not None:
                    fitted += 1
                    orientation = orientation or fit.transform.relion_terms()
            if fitted > best[0]:
                best = (fitted, reference, orientation)
        n_fitted, reference, orientation = best
        size_bytes = (
            (source / reference).stat().st_size if reference else HEADER_SIZE_BYTES + 4 * height * width
        )
        predictions.append(
            GainGroupPrediction(
                frame_width=width,
                frame_height=height,
                n_movies=n_movies.get(shape, len(movies)),
                n_sampled=len(movies),
                n_fitted=n_fitted,
                reference=reference,
                origin=ORIGIN_FOUND if reference else ORIGIN_TO_ESTIMATE,
                relion_orientation=orientation,
                reference_size_bytes=size_bytes,
            )
        )
    return tuple(predictions)


def _readable_references(
    source: Path, references: Sequence[str], *, shapes: set[tuple[int, int]]
) -> dict[str, npt.NDArray[np.float32]]:
    """Each reference whose header fits some frame size (same, 2x, 1/2, turned), read once."""
    fitting = set()
    for ny, nx in shapes:
        for shape in ((ny, nx), (nx, ny)):
            fitting |= {shape, (2 * shape[0], 2 * shape[1]), (shape[0] // 2, shape[1] // 2)}
    arrays = {}
    for reference in references:
        try:
            if read_header(source / reference).frame_shape not in fitting:
                continue
            arrays[reference] = read_gain_reference(source / reference).data
        except (EmpCompressError, OSError):
            continue
    return arrays
