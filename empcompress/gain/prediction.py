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

from ..errors import EmpCompressError
from ..mrc import HEADER_SIZE_BYTES
from .grouping import fit_reference

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
    for shape, movies in sorted(sampled_movies.items()):
        height, width = shape
        best: tuple[int, str, str] = (0, "", "")
        for reference in references:
            fitted = 0
            orientation = ""
            for movie in movies:
                try:
                    fit = fit_reference(source / movie, source / reference)
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
