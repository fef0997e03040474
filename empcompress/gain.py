"""Gain-normalised movies: estimate a float32 gain, classify movies, recover counts.

A gain-normalised float32 movie holds v = float32(n * g): an integer electron
count n >= 0 times a per-pixel float32 gain g. Stored as counts (uint8/uint16)
plus one gain reference, such a movie is about 10x smaller, and losslessly so
when float32(count x gain) gives back every value bit for bit. Values that do
not (dead or hot pixels, values from a float64 gain, ...) are kept exactly in an
exception list in the TIFF's record.

API (the whole-drive pipeline calls these; names are a contract):

``gain_partial_from_movie(path, *, max_frames=None) -> GainPartial``
    Per-pixel summary of one float32 movie (the K smallest distinct positive
    values per pixel, hit counts, invalid-value flags) from all frames or an
    evenly spaced sample of ``max_frames``. Partials pickle (plain arrays).
``merge_gain_partials(a, b) -> GainPartial``
    Associative, commutative merge (union, keep the K smallest distinct values):
    reduce partials of many movies in any order, e.g. as a Dask tree reduction.
``finalize_gain(partial) -> GainEstimate``
    Per-pixel float32 gain in MRC row order, pixel status and counts of
    reliable / unconfirmed / exception / unhit pixels.
``write_gain_reference(path, gain) -> str``
    Write the gain as a float32 MRC (``gain-reference.mrc``); returns its sha256.
``classify_movie(path, *, gain=None, n_sample_frames=8) -> MovieClass``
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

import base64
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import kernels
from .errors import GainError
from .files import commit_output, temporary_output
from .gainref import (
    GAIN_REFERENCE_NAME,
    GainReference,
    exception_fraction,
    file_sha256,
    orient_gain,
    place_gain_copy,
    place_gain_reference,
    read_gain_array,
    read_gain_reference,
    write_gain_reference,
)
from .mrc import MrcHeader, MrcMovie

__all__ = [
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
    "gain_stored_frames",
]

#: Above this fraction of a movie's values being exceptions, the movie is kept as float32.
MAX_EXCEPTION_FRACTION = 1e-3
#: Frames read by :func:`classify_movie` (evenly spaced through the movie).
DEFAULT_SAMPLE_FRAMES = 8
#: Frames conversion samples to decide what to try with a gain, and of those,
#: how many orient a supplied gain (the survey pass then checks every frame).
PLAN_SAMPLE_FRAMES = 4
ORIENT_SAMPLE_FRAMES = 2
#: Without a given gain, at least this fraction of the hit pixels must confirm
#: an estimated gain (two or more distinct values reproduced) to call a movie
#: gain-normalised: a sample too sparse to tell is classified "float" (lossless).
MIN_RELIABLE_FRACTION = 0.01
#: Version of the record's "gain" entry.
GAIN_RECORD_VERSION = 1
_EXCEPTION_ENCODING = (
    "zlib+base64 of little-endian uint32 arrays: the number of exceptions of each frame (nz values), "
    "then for each frame its MRC-order flat pixel indices (y * nx + x), the first absolute and the "
    "rest as differences, then the exact float32 bit patterns in the same order"
)
GAIN_FORMULA = (
    "value[y, x] = float32(count * gain[y, x]) with the TIFF page flipped back to MRC row order "
    "(count at TIFF row ny-1-y), then the exception values patched in"
)


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


def gain_partial_from_movie(path: str | os.PathLike[str], *, max_frames: int | None = None) -> GainPartial:
    """Gain summary of one float32 movie: all frames, or ``max_frames`` spread evenly.

    The caller decides which movies share a gain (do not mix in raw-count
    movies or movies from another session; :func:`classify_movie` tells).
    """
    with MrcMovie(path) as movie:
        header = movie.header
        _require_float32(header, path, "a gain estimate")
        partial = empty_gain_partial(header.frame_shape, sources=(str(path),))
        indices = sample_frame_indices(header.nz, max_frames)
        for index in indices:
            values = movie.read_frame(index)
            kernels.gain_summary_update(values, partial.kept, partial.n_kept, partial.n_hits, partial.flags)
    return GainPartial(
        partial.kept, partial.n_kept, partial.n_hits, partial.flags, len(indices), (str(path),)
    )


def merge_gain_partials(a: GainPartial, b: GainPartial) -> GainPartial:
    """Merge two partials (neither is modified). Associative and commutative."""
    if a.frame_shape != b.frame_shape:
        raise GainError(
            f"cannot merge gain summaries of {a.frame_shape[1]}x{a.frame_shape[0]} and "
            f"{b.frame_shape[1]}x{b.frame_shape[0]} frames: movies of one gain have one frame size"
        )
    kept, n_kept = kernels.gain_summary_merge(a.kept, b.kept)
    n_hits = np.minimum(a.n_hits.astype(np.uint32) + b.n_hits, 65535).astype(np.uint16)
    return GainPartial(
        kept, n_kept, n_hits, a.flags | b.flags, a.n_frames + b.n_frames, a.sources + b.sources
    )


def finalize_gain(partial: GainPartial) -> GainEstimate:
    """The per-pixel float32 gain of a (merged) partial; see :func:`kernels.gain_finalize`."""
    gain, status = kernels.gain_finalize(partial.kept, partial.n_kept, partial.flags)
    counts = np.bincount(status.reshape(-1), minlength=4)
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


def estimate_gain(paths: Sequence[str | os.PathLike[str]], *, max_frames: int | None = None) -> GainEstimate:
    """Estimate one gain from several movies (serially; the pipeline does the same on Dask)."""
    if not paths:
        raise GainError("no movies to estimate a gain from")
    merged: GainPartial | None = None
    for path in paths:
        partial = gain_partial_from_movie(path, max_frames=max_frames)
        merged = partial if merged is None else merge_gain_partials(merged, partial)
    assert merged is not None
    return finalize_gain(merged)


# ---------------------------------------------------------------- exception lists


@dataclass(frozen=True, eq=False)
class GainExceptions:
    """Per frame: the MRC-order flat indices and exact float32 bits of values not reproduced."""

    indices: tuple[npt.NDArray[np.uint32], ...]
    bits: tuple[npt.NDArray[np.uint32], ...]

    @property
    def n_exceptions(self) -> int:
        return sum(int(part.size) for part in self.indices)

    @property
    def n_frames(self) -> int:
        return len(self.indices)

    def encode(self) -> str:
        counts = np.array([part.size for part in self.indices], dtype="<u4")
        deltas = [np.diff(part.astype(np.int64), prepend=0).astype("<u4") for part in self.indices]
        chunks = [
            counts.tobytes(),
            *(d.tobytes() for d in deltas),
            *(b.astype("<u4").tobytes() for b in self.bits),
        ]
        return base64.b64encode(zlib.compress(b"".join(chunks), 9)).decode("ascii")

    @classmethod
    def decode(cls, text: str, *, n_frames: int, n_pixels: int, name: str) -> GainExceptions:
        try:
            raw = np.frombuffer(zlib.decompress(base64.b64decode(text, validate=True)), dtype="<u4")
        except (ValueError, zlib.error):
            raise GainError(f"{name}: the exception list in the record is damaged") from None
        counts = raw[:n_frames].astype(np.int64)
        total = int(counts.sum())
        if counts.size != n_frames or raw.size != n_frames + 2 * total:
            raise GainError(f"{name}: the exception list in the record does not match its {n_frames} frames")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        deltas = raw[n_frames : n_frames + total]
        values = raw[n_frames + total :]
        indices = []
        bits = []
        for frame in range(n_frames):
            start, stop = int(offsets[frame]), int(offsets[frame + 1])
            flat = np.cumsum(deltas[start:stop].astype(np.int64))
            if flat.size and (flat[-1] >= n_pixels or np.any(np.diff(flat) <= 0)):
                raise GainError(f"{name}: the exception list of frame {frame} is damaged")
            indices.append(flat.astype(np.uint32))
            bits.append(values[start:stop].astype(np.uint32))
        return cls(tuple(indices), tuple(bits))

    def patch(self, index: int, values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Put frame ``index``'s exception values back into ``values`` (MRC order, native float32)."""
        if self.indices[index].size:
            values.reshape(-1).view(np.uint32)[self.indices[index]] = self.bits[index]
        return values


# ---------------------------------------------------------------- counts under a gain


@dataclass(frozen=True, eq=False)
class GainCountSurvey:
    """What a movie's values look like under a gain (from :class:`GainCounter`)."""

    n_values: int
    n_exceptions: int
    max_count: int
    exceptions: GainExceptions | None  # None when abandoned (too many to keep)
    stored_dtype: str | None  # uint8 / uint16, None when refused
    reason: str

    @property
    def accepted(self) -> bool:
        return self.stored_dtype is not None

    @property
    def exception_fraction(self) -> float:
        return self.n_exceptions / max(1, self.n_values)


class GainCounter:
    """Counts of each frame under a gain, fed frame by frame (the survey pass's hook).

    Collects the exceptions while they stay under the threshold for the whole
    movie; past it, only counts them (the movie will be refused anyway).
    """

    def __init__(self, gain: npt.NDArray[np.float32], *, n_frames: int, reference_name: str) -> None:
        self.gain = np.ascontiguousarray(gain, dtype=np.float32)
        self.n_frames = n_frames
        self.reference_name = reference_name
        self._scratch = np.empty(self.gain.shape, dtype=np.uint16)
        self._limit = int(MAX_EXCEPTION_FRACTION * n_frames * self.gain.size)
        self._indices: list[npt.NDArray[np.uint32]] = [np.empty(0, np.uint32)] * n_frames
        self._bits: list[npt.NDArray[np.uint32]] = [np.empty(0, np.uint32)] * n_frames
        self._seen = [False] * n_frames
        self.n_exceptions = 0
        self.max_count = 0
        self.n_values = 0

    def add(self, index: int, values: npt.NDArray[np.generic]) -> None:
        if values.shape != self.gain.shape:
            raise GainError(
                f"movie frames of {values.shape[1]}x{values.shape[0]} do not match the gain reference "
                f"{self.reference_name} of {self.gain.shape[1]}x{self.gain.shape[0]}"
            )
        top, indices, bits = kernels.gain_counts(
            values.astype(np.float32, copy=False), self.gain, self._scratch
        )
        self.max_count = max(self.max_count, top)
        self.n_exceptions += int(indices.size)
        self.n_values += int(values.size)
        self._seen[index] = True
        if self.n_exceptions <= self._limit:
            self._indices[index] = indices
            self._bits[index] = bits

    def survey(self) -> GainCountSurvey:
        fraction = self.n_exceptions / max(1, self.n_values)
        if not all(self._seen):
            raise GainError("the gain survey did not see every frame")
        if self.n_exceptions > self._limit:
            return GainCountSurvey(
                self.n_values,
                self.n_exceptions,
                self.max_count,
                None,
                None,
                f"{self.reference_name} does not reproduce {self.n_exceptions} values "
                f"({100 * fraction:.3f}%, more than the {100 * MAX_EXCEPTION_FRACTION:g}% allowed): "
                f"not counts x this gain (another session's gain, or not gain-normalised)",
            )
        if self.max_count > kernels.GAIN_COUNT_LIMIT:
            return GainCountSurvey(
                self.n_values, self.n_exceptions, self.max_count, None, None, "counts do not fit uint16"
            )
        stored = "uint8" if self.max_count <= 255 else "uint16"
        exceptions = GainExceptions(tuple(self._indices), tuple(self._bits))
        return GainCountSurvey(
            self.n_values,
            self.n_exceptions,
            self.max_count,
            exceptions,
            stored,
            f"float32 gain-normalised: counts 0..{self.max_count} x {self.reference_name}, stored as "
            f"{stored}; {self.n_exceptions} exception values ({100 * fraction:.4f}%) kept exactly "
            "in the record",
        )


def gain_stored_frames(
    movie: MrcMovie,
    gain: npt.NDArray[np.float32],
    stored_dtype: np.dtype,
    progress: Callable[[str, int], None] | None,
) -> Any:
    """Counts of every frame in TIFF row order and ``stored_dtype``; a fresh array per frame."""
    for index in range(movie.header.nz):
        raw = movie.read_raw_frame(index)
        out = np.empty(movie.header.frame_shape, dtype=stored_dtype)
        kernels.gain_counts(movie.values_from_raw(raw), gain, out)
        yield out
        if progress is not None:
            progress("encode", raw.size)


# ---------------------------------------------------------------- classification


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


def _integral(frames: Sequence[npt.NDArray[np.generic]]) -> bool:
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
    if header.value_dtype.kind in "iu" or _integral(frames):
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


# ---------------------------------------------------------------- conversion with a gain


@dataclass(frozen=True, eq=False)
class GainPlan:
    """What conversion will try with a gain, decided from a sample before the survey pass."""

    action: str  # "apply" | "carry-over" | "none"
    gain: npt.NDArray[np.float32] | None = None  # for "apply": MRC row order of the movie
    existing_reference: str | None = None  # a file holding exactly ``gain`` that can be referenced
    supplied_path: str | None = None  # what the user gave
    orientation: str = ""
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """How messages name the gain: its file, or "the estimated gain"."""
        named = self.existing_reference or self.supplied_path
        return Path(named).name if named else "the estimated gain"


@dataclass(frozen=True)
class GainOutcome:
    """What conversion did about a gain (part of ConversionResult)."""

    action: str  # "applied" | "carried-over" | "not-applied"
    reference_path: str | None
    reference_sha256: str | None
    orientation: str
    n_exceptions: int
    exception_fraction: float
    reason: str
    created_reference: bool = False


@dataclass(frozen=True)
class GainRecord:
    """The ``storage.gain`` entry of a TIFF's record, parsed."""

    kind: str  # "gain-normalised" | "carried-over"
    reference: str  # path relative to the TIFF's directory (POSIX separators)
    reference_sha256: str
    n_exceptions: int = 0
    exceptions: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "version": GAIN_RECORD_VERSION,
            "kind": self.kind,
            "reference": self.reference,
            "reference_sha256": self.reference_sha256,
        }
        if self.kind == "gain-normalised":
            document.update(
                formula=GAIN_FORMULA,
                n_exceptions=self.n_exceptions,
                exception_encoding=_EXCEPTION_ENCODING,
                exceptions=self.exceptions,
            )
        document.update(self.details)
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any], *, name: str) -> GainRecord:
        """Parse a record's ``storage.gain`` entry (``name``: the TIFF, for messages).

        The entry is validated by the record schema's owner,
        :func:`empcompress.record.check_gain_entry`: a damaged or crafted entry
        raises :class:`~empcompress.errors.RecordError` naming the field.
        """
        from .errors import RecordError
        from .record import check_gain_entry  # the schema's owner; it imports this module

        if not isinstance(document, dict):
            raise RecordError(f"{name}: the empcompress record is damaged: storage.gain must be an object")
        check_gain_entry(document, source=None, path_name=name)
        known = {"version", "kind", "reference", "reference_sha256", "formula", "n_exceptions"}
        known |= {"exception_encoding", "exceptions"}
        return cls(
            kind=document["kind"],
            reference=document["reference"],
            reference_sha256=document["reference_sha256"],
            n_exceptions=document.get("n_exceptions", 0),
            exceptions=document.get("exceptions", ""),
            details={key: value for key, value in document.items() if key not in known},
        )


def _existing_reference_usable(reference: Path, output: Path) -> bool:
    """True when ``reference`` lies in the output's directory or one of its ancestors."""
    try:
        directory = reference.resolve().parent
        return output.resolve().parent.is_relative_to(directory)
    except OSError:
        return False


def _auto_plan(source: Path, output: Path, frames: list[npt.NDArray[np.float32]]) -> GainPlan:
    beside = output.parent / GAIN_REFERENCE_NAME
    if beside.is_file():
        try:
            existing = read_gain_array(beside)
        except Exception:  # not ours or unreadable: estimate afresh
            existing = None
        if existing is not None and existing.shape == frames[0].shape:
            fraction = exception_fraction(frames, existing)
            if fraction <= MAX_EXCEPTION_FRACTION:
                return GainPlan(
                    "apply",
                    existing,
                    existing_reference=str(beside),
                    orientation="as stored",
                    notes=(f"{beside.name} beside the output fits this movie; reused",),
                )
    estimate = estimate_gain([source])
    return GainPlan(
        "apply",
        estimate.gain,
        orientation="estimated from the movie",
        notes=(
            f"gain estimated from {estimate.n_frames} frames: {estimate.n_reliable} reliable, "
            f"{estimate.n_unconfirmed} unconfirmed, {estimate.n_exception} exception, {estimate.n_unhit} "
            f"unhit pixels",
        ),
    )


def _supplied_plan(
    source: Path, output: Path, reference: GainReference, frames: list[npt.NDArray[np.float32]]
) -> GainPlan:
    try:
        oriented = orient_gain(
            reference.data,
            frames[:ORIENT_SAMPLE_FRAMES],
            max_exception_fraction=MAX_EXCEPTION_FRACTION,
            try_reciprocal=reference.file_format == "tiff",
            name=reference.path,
        )
    except GainError as error:
        return GainPlan("none", supplied_path=reference.path, notes=(f"gain not applied: {error}",))
    usable = (
        oriented.is_identity
        and reference.file_format == "mrc"
        and _is_float32_mrc(reference.path)
        and _existing_reference_usable(Path(reference.path), output)
    )
    return GainPlan(
        "apply",
        oriented.gain,
        existing_reference=reference.path if usable else None,
        supplied_path=reference.path,
        orientation=oriented.orientation.description,
        notes=(f"supplied gain {Path(reference.path).name}: {oriented.orientation.description}",),
    )


def _is_float32_mrc(path: str | os.PathLike[str]) -> bool:
    try:
        with MrcMovie(path) as movie:
            return movie.header.mode == 2 and movie.header.nz == 1
    except Exception:
        return False


def plan_gain(
    source: str | os.PathLike[str], output: str | os.PathLike[str], *, gain: str | os.PathLike[str]
) -> GainPlan:
    """Decide, from a sample of frames, what conversion will try with ``gain`` (a path or "auto").

    Raw-count movies never get a gain (a supplied file is carried over); a
    supplied gain is oriented to the movie (and not applied when no
    orientation fits); ``auto`` reuses ``gain-reference.mrc`` beside the output
    when it fits, else estimates a gain from the movie's frames.
    """
    source, output = Path(source), Path(output)
    reference = None if str(gain) == "auto" else read_gain_reference(gain)
    with MrcMovie(source) as movie:
        header = movie.header
        frames = read_sample_frames(movie, PLAN_SAMPLE_FRAMES)
    if header.value_dtype.kind in "iu" or _integral(frames):
        if reference is None:
            return GainPlan("none", notes=("raw counts (integer values): no gain needed",))
        return GainPlan(
            "carry-over",
            supplied_path=reference.path,
            notes=(f"raw counts: {Path(reference.path).name} is carried over unchanged",),
        )
    if header.mode != 2:
        return GainPlan(
            "none",
            supplied_path=reference.path if reference else None,
            notes=(f"{header.value_dtype.name} values: gains apply to float32 movies only",),
        )
    values = [frame.astype(np.float32, copy=False) for frame in frames]
    if reference is None:
        return _auto_plan(source, output, values)
    return _supplied_plan(source, output, reference, values)


def settle_gain(
    plan: GainPlan,
    *,
    source_is_integer: bool,
    counter: GainCounter | None,
    output: str | os.PathLike[str],
    reference_output: str | os.PathLike[str] | None = None,
) -> tuple[GainCountSurvey | None, GainRecord | None, GainOutcome]:
    """After the survey pass: keep or refuse the gain and place its reference file.

    Returns the count survey (accepted or not), the record entry for the TIFF
    (None when no gain is involved) and the outcome for the result. The gain
    file is written (or reused) before the TIFF so verification can read it;
    with ``reference_output`` a new file is written there and nowhere else.
    """
    output = Path(output)
    directory = output.parent
    if plan.action == "carry-over" and source_is_integer:
        assert plan.supplied_path is not None
        if reference_output is not None and _existing_reference_usable(Path(plan.supplied_path), output):
            placed, digest, created = Path(plan.supplied_path), file_sha256(plan.supplied_path), False
        elif reference_output is not None:
            placed, created = Path(reference_output), True
            with temporary_output(placed) as temporary:
                shutil.copyfile(plan.supplied_path, temporary)
                commit_output(temporary, placed)
            digest = file_sha256(placed)
        else:
            placed, digest, created = place_gain_copy(plan.supplied_path, directory)
        relative = _relative_reference(placed, output)
        record = GainRecord(
            "carried-over",
            relative,
            digest,
            details={
                "note": "gain reference supplied with this raw-count movie, copied unchanged; processing "
                "programs multiply the counts by it; restore does not need it",
                "supplied_name": Path(plan.supplied_path).name,
            },
        )
        outcome = GainOutcome(
            "carried-over",
            str(placed),
            digest,
            "as supplied",
            0,
            0.0,
            plan.notes[0] if plan.notes else "",
            created,
        )
        return None, record, outcome
    if plan.action != "apply" or counter is None or source_is_integer or plan.gain is None:
        reason = "; ".join(plan.notes) or "no gain applied"
        return None, None, GainOutcome("not-applied", None, None, plan.orientation, 0, 0.0, reason)
    survey = counter.survey()
    if not survey.accepted:
        reason = f"gain not applied, kept as float32: {survey.reason}"
        return (
            survey,
            None,
            GainOutcome(
                "not-applied",
                None,
                None,
                plan.orientation,
                survey.n_exceptions,
                survey.exception_fraction,
                reason,
            ),
        )
    if plan.existing_reference is not None:
        placed, digest, created = Path(plan.existing_reference), file_sha256(plan.existing_reference), False
    elif reference_output is not None:
        placed, created = Path(reference_output), True
        digest = write_gain_reference(placed, plan.gain, overwrite=True)
    else:
        placed, digest, created = place_gain_reference(plan.gain, directory)
    assert survey.exceptions is not None
    record = GainRecord(
        "gain-normalised",
        _relative_reference(placed, output),
        digest,
        n_exceptions=survey.n_exceptions,
        exceptions=survey.exceptions.encode(),
        details={"orientation": plan.orientation, "max_count": survey.max_count},
    )
    outcome = GainOutcome(
        "applied",
        str(placed),
        digest,
        plan.orientation,
        survey.n_exceptions,
        survey.exception_fraction,
        survey.reason,
        created,
    )
    return survey, record, outcome


def _relative_reference(reference: Path, output: Path) -> str:
    return Path(os.path.relpath(reference.resolve(), output.resolve().parent)).as_posix()


def resolve_reference(
    record: GainRecord,
    tiff_path: Path,
    gain_path: str | os.PathLike[str] | None,
    *,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Where the gain reference of a TIFF is; never a file outside ``root``.

    ``gain_path`` (the user's explicit ``--gain FILE``) is taken as given. Otherwise
    the record's relative reference is looked up from the TIFF's folder, then a
    file of the same name beside the TIFF. A candidate is used only when its path
    and its real path (every symbolic link resolved) both lie inside ``root``
    (default: the TIFF's own folder; the whole-drive pipeline passes the bag's
    ``data/``) and it is a regular file. ``..`` may appear in the reference as long
    as the result stays inside ``root``. Returns the real path to open.
    """
    import stat

    if gain_path is not None:
        explicit = Path(os.path.realpath(gain_path))
        try:
            is_regular = stat.S_ISREG(os.stat(explicit).st_mode)
        except OSError:
            is_regular = False
        if not is_regular:
            raise GainError(f"{gain_path}: no such gain reference file (or not a regular file)")
        return explicit
    tiff_dir = Path(os.path.abspath(tiff_path)).parent
    top = Path(os.path.abspath(root)) if root is not None else tiff_dir
    top_real = Path(os.path.realpath(top))
    outside: list[str] = []
    for relative in dict.fromkeys((record.reference, Path(record.reference).name)):
        lexical = Path(os.path.normpath(tiff_dir / relative))
        real = Path(os.path.realpath(lexical))
        if not (lexical.is_relative_to(top) and real.is_relative_to(top_real)):
            outside.append(relative)
            continue
        try:
            if stat.S_ISREG(os.lstat(real).st_mode):
                return real
        except OSError:
            continue
    if record.reference in outside:
        raise GainError(
            f"{tiff_path}: its record names the gain reference {record.reference!r}, which lies outside "
            f"{top}; refusing to read it. If you trust this file, pass the reference with --gain FILE"
        )
    raise GainError(
        f"{tiff_path}: needs its gain reference {record.reference} "
        f"(sha256 {record.reference_sha256[:16]}...), which is not next to it; pass it with --gain FILE"
    )


def load_reference_for(
    record: GainRecord,
    tiff_path: Path,
    gain_path: str | os.PathLike[str] | None,
    *,
    root: str | os.PathLike[str] | None = None,
    frame_shape: tuple[int, int] | None = None,
) -> Any:
    """The float32 gain (MRC row order) of a gain-normalised TIFF, its sha256 checked.

    Found by :func:`resolve_reference` (``root`` limits where); opened once, as a
    regular file only (never a FIFO or a device); it must be a single-section
    float32 MRC of ``frame_shape`` (checked from its header before it is hashed
    or read).
    """
    from .files import NotRegularFileError, file_digests, open_regular
    from .mrc import HEADER_SIZE_BYTES, parse_header

    path = resolve_reference(record, tiff_path, gain_path, root=root)
    try:
        handle = open_regular(path)
    except NotRegularFileError:
        raise GainError(f"{path}: the gain reference of {tiff_path.name} is not a regular file") from None
    except OSError as error:
        raise GainError(
            f"{path}: cannot read the gain reference of {tiff_path.name} ({error.strerror or error})"
        ) from None
    with handle:
        size_bytes = os.fstat(handle.fileno()).st_size
        try:
            header = parse_header(
                handle.read(HEADER_SIZE_BYTES), path_name=str(path), file_size_bytes=size_bytes
            )
        except GainError:
            raise
        except Exception as error:
            raise GainError(
                f"{path}: is not a usable gain reference for {tiff_path.name} ({error})"
            ) from None
        if header.mode != 2 or header.nz != 1:
            raise GainError(
                f"{path}: is not a gain reference (mode {header.mode}, {header.nz} sections; "
                "a gain reference is one float32 section)"
            )
        if frame_shape is not None and header.frame_shape != frame_shape:
            raise GainError(
                f"{path}: the gain reference is {header.frame_shape}, the frames of {tiff_path.name} are "
                f"{frame_shape}"
            )
        handle.seek(0)
        digest = file_digests(path, algorithms=("sha256",), handle=handle)["sha256"]
        if digest != record.reference_sha256:
            raise GainError(
                f"{path}: is not the gain reference {tiff_path.name} was converted with (sha256 "
                f"{digest[:16]}... != recorded {record.reference_sha256[:16]}...); find the right "
                f"{Path(record.reference).name}"
            )
        handle.seek(header.data_offset_bytes)
        raw = np.empty(header.frame_size_bytes, dtype=np.uint8)
        if handle.readinto(raw.data) != raw.size:  # type: ignore[attr-defined]
            raise GainError(f"{path}: the gain reference changed while it was read")
    return np.ascontiguousarray(raw.view(header.value_dtype).reshape(header.frame_shape), dtype=np.float32)


# ---------------------------------------------------------------- a set of movies


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
