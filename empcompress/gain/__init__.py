"""Gain-normalised movies: estimate a float32 gain, classify movies, recover counts.

A gain-normalised float32 movie holds v = float32(n * g): an integer electron
count n >= 0 times a per-pixel float32 gain g. Stored as counts (uint8/uint16)
plus one gain reference, such a movie is about 10x smaller, and losslessly so
when float32(count x gain) gives back every value bit for bit. Values that do
not (dead or hot pixels, values from a float64 gain, ...) are kept exactly in an
exception list in the TIFF's record.

API (the whole-drive pipeline calls these; names are a contract):

``gain_partial_from_movie(path, *, max_frames=None, rows=None, columns=None) -> GainPartial``
    Per-pixel summary of one float32 movie (the K smallest distinct positive
    values per pixel, hit counts, invalid-value flags) from all frames or an
    evenly spaced sample of ``max_frames``; of a row band only with ``rows``.
    Partials pickle (plain arrays).
``gain_bands(frame_shape, *, n_bands=None) -> list[GainBand]``
    The row bands a gain is built in: the fewest equal bands of at most
    4096x4096 pixels (one band up to that size), so that no step holds a
    whole-frame partial (20 bytes a pixel); ``assemble_gain_estimate`` puts the
    finalized bands together.
``merge_gain_partials(a, b) -> GainPartial``
    Associative, commutative merge (union, keep the K smallest distinct values):
    reduce partials of many movies in any order, e.g. as a Dask tree reduction.
``finalize_gain(partial) -> GainEstimate``
    Per-pixel float32 gain in MRC row order, pixel status and counts of
    reliable / unconfirmed / exception / unhit pixels.
``write_gain_reference(path, gain) -> str``
    Write the gain as a float32 MRC (``gain-reference.mrc``); returns its sha256.
``classify_movie(path, *, gain=None, n_sample_frames=8, n_bands=None) -> MovieClass``
    ``kind`` is ``"counts"`` (integer values: never apply a gain),
    ``"gain-normalised"`` (the given gain, or one estimated from the sample,
    reproduces all but at most :data:`MAX_EXCEPTION_FRACTION` of the sampled
    values) or ``"float"`` (genuinely non-integer, or the gain does not fit);
    ``reason`` says why.
``convert_movie(source, output, *, gain=PATH | "auto" | None, ...)``
    (in :mod:`empcompress.convert`) converts with a gain; see :func:`plan_gain`
    and :func:`settle_gain` for what it does with one.

Choices, documented here because they are part of the format:

* Never-hit pixels (no positive value in the sample) get the neutral gain
  :data:`~empcompress.kernels.NEUTRAL_GAIN` (1.0); their counts are 0.
* A movie keeps the gain representation only if at most
  :data:`MAX_EXCEPTION_FRACTION` (0.1%) of its values are exceptions; beyond
  that its counts x gain would differ from the original at too many pixels for
  downstream processing to be faithful (and the record would grow), so it is
  stored as lossless float32 and the result says why. The same rule refuses a
  gain from another session: under a wrong gain most non-zero values fail.
* Counts are stored as uint8 when every reproduced count fits, else uint16;
  beyond 65535 the movie stays float32.
"""

from __future__ import annotations

from ..gainref import write_gain_reference
from .classify import MovieClass, classify_movie, read_sample_frames
from .counts import GainCounter, GainCountSurvey
from .estimate import (
    GainBand,
    GainEstimate,
    GainPartial,
    assemble_gain_estimate,
    empty_gain_partial,
    estimate_gain,
    finalize_gain,
    gain_bands,
    gain_partial_from_frames,
    gain_partial_from_movie,
    merge_gain_partials,
    sample_frame_indices,
)
from .exception_list import GainExceptions
from .limits import (
    DEFAULT_SAMPLE_FRAMES,
    GAIN_RECORD_VERSION,
    MAX_EXCEPTION_FRACTION,
    MIN_RELIABLE_FRACTION,
    ORIENT_SAMPLE_FRAMES,
    PLAN_SAMPLE_FRAMES,
)
from .plan import GainOutcome, GainPlan, GainRecord, plan_gain, settle_gain
from .references import load_reference_for, resolve_reference
from .sets import SetEstimate, estimate_set_gain

__all__ = [
    "GainBand",
    "assemble_gain_estimate",
    "gain_bands",
    "MAX_EXCEPTION_FRACTION",
    "DEFAULT_SAMPLE_FRAMES",
    "GainPartial",
    "GainEstimate",
    "MovieClass",
    "GainExceptions",
    "GainCountSurvey",
    "GainCounter",
    "GainPlan",
    "GainOutcome",
    "GainRecord",
    "empty_gain_partial",
    "gain_partial_from_frames",
    "gain_partial_from_movie",
    "merge_gain_partials",
    "finalize_gain",
    "estimate_gain",
    "SetEstimate",
    "estimate_set_gain",
    "write_gain_reference",
    "classify_movie",
    "sample_frame_indices",
    "read_sample_frames",
    "plan_gain",
    "settle_gain",
    "GAIN_RECORD_VERSION",
    "MIN_RELIABLE_FRACTION",
    "ORIENT_SAMPLE_FRAMES",
    "PLAN_SAMPLE_FRAMES",
    "load_reference_for",
    "resolve_reference",
]
