"""Conversion with a gain: what to try (plan), and after the read pass what to keep (settle)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..errors import GainError
from ..files import commit_output, temporary_output
from ..gainref import (
    GAIN_REFERENCE_NAME,
    GainReference,
    GainTransform,
    exception_fraction,
    file_sha256,
    orient_gain,
    place_gain_copy,
    place_gain_reference,
    read_gain_array,
    read_gain_reference,
    write_gain_reference,
)
from ..mrc import MrcMovie
from ..readpass import FrameSample
from .classify import integral_frames, read_sample_frames
from .counts import GainCounter, GainCountSurvey
from .estimate import estimate_gain, sample_frame_indices
from .exception_list import GainExceptions
from .limits import (
    EXCEPTION_ENCODING,
    GAIN_FORMULA,
    GAIN_RECORD_VERSION,
    MAX_EXCEPTION_FRACTION,
    ORIENT_SAMPLE_FRAMES,
    PLAN_SAMPLE_FRAMES,
)
from .references import reference_root_for


@dataclass(frozen=True, eq=False)
class GainPlan:
    """What conversion will try with a gain, decided from a sample before the read pass."""

    action: str  # "apply" | "carry-over" | "none"
    gain: npt.NDArray[np.float32] | None = None  # for "apply": MRC row order of the movie
    existing_reference: str | None = None  # a file holding exactly ``gain`` that can be referenced
    supplied_path: str | None = None  # what the user gave
    orientation: str = ""
    notes: tuple[str, ...] = ()
    #: how ``existing_reference``'s array becomes ``gain`` (recorded in the TIFF)
    transform: GainTransform = field(default_factory=GainTransform)

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
    #: how the reference file's array becomes this movie's gain (version 2; identity in version 1)
    transform: GainTransform = field(default_factory=GainTransform)

    def to_dict(self) -> dict[str, Any]:
        # version 1 when the reference applies as it is: readers of 0.1 still read those records
        document: dict[str, Any] = {
            "version": GAIN_RECORD_VERSION if not self.transform.is_identity else 1,
            "kind": self.kind,
            "reference": self.reference,
            "reference_sha256": self.reference_sha256,
        }
        if self.kind == "gain-normalised":
            document.update(
                formula=GAIN_FORMULA,
                n_exceptions=self.n_exceptions,
                exception_encoding=EXCEPTION_ENCODING,
                exceptions=self.exceptions,
            )
            if not self.transform.is_identity:
                document["transform"] = self.transform.to_dict()
        document.update(self.details)
        return document

    @classmethod
    def from_dict(cls, document: dict[str, Any], *, name: str) -> GainRecord:
        """Parse a record's ``storage.gain`` entry (``name``: the TIFF, for messages).

        The entry is validated by the record schema's owner,
        :func:`empcompress.record.check_gain_entry`: a damaged or crafted entry
        raises :class:`~empcompress.errors.RecordError` naming the field.
        """
        from ..errors import RecordError
        from ..record import check_gain_entry  # the schema's owner; it imports this module

        if not isinstance(document, dict):
            raise RecordError(f"{name}: the empcompress record is damaged: storage.gain must be an object")
        check_gain_entry(document, source=None, path_name=name)
        known = {"version", "kind", "reference", "reference_sha256", "formula", "n_exceptions"}
        known |= {"exception_encoding", "exceptions", "transform"}
        transform = document.get("transform") if document["kind"] == "gain-normalised" else None
        return cls(
            kind=document["kind"],
            reference=document["reference"],
            reference_sha256=document["reference_sha256"],
            n_exceptions=document.get("n_exceptions", 0),
            exceptions=document.get("exceptions", ""),
            details={key: value for key, value in document.items() if key not in known},
            transform=GainTransform(transform["orientation"], transform["scale"], transform["reciprocal"])
            if transform is not None
            else GainTransform(),
        )


def _existing_reference_usable(reference: Path, output: Path) -> bool:
    """True when the TIFF at ``output`` may name ``reference`` (see :func:`reference_root_for`)."""
    try:
        root = Path(os.path.realpath(reference_root_for(output)))
        return Path(os.path.realpath(reference)).is_relative_to(root)
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
        reference.file_format == "mrc"
        and _is_float32_mrc(reference.path)
        and _existing_reference_usable(Path(reference.path), output)
    )
    return GainPlan(
        "apply",
        oriented.gain,
        existing_reference=reference.path if usable else None,
        supplied_path=reference.path,
        orientation=oriented.orientation.description,
        transform=oriented.orientation.as_transform if usable else GainTransform(),
        notes=(f"supplied gain {Path(reference.path).name}: {oriented.orientation.description}",),
    )


def _is_float32_mrc(path: str | os.PathLike[str]) -> bool:
    try:
        with MrcMovie(path) as movie:
            return movie.header.mode == 2 and movie.header.nz == 1
    except Exception:
        return False


def plan_gain(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    gain: str | os.PathLike[str],
    samples: Sequence[FrameSample] | None = None,
) -> GainPlan:
    """Decide, from a sample of frames, what conversion will try with ``gain`` (a path or "auto").

    Raw-count movies never get a gain (a supplied file is carried over); a
    supplied gain is oriented to the movie (and not applied when no
    orientation fits); ``auto`` reuses ``gain-reference.mrc`` beside the output
    when it fits, else estimates a gain from the movie's frames.
    ``samples``, when given, are the frames :func:`plan_sample_indices` names, already
    read (conversion holds them for its read pass); else they are read here.
    """
    source, output = Path(source), Path(output)
    reference = None if str(gain) == "auto" else read_gain_reference(gain)
    with MrcMovie(source) as movie:
        header = movie.header
        if samples is None:
            frames = read_sample_frames(movie, PLAN_SAMPLE_FRAMES)
        else:
            if [sample.index for sample in samples] != plan_sample_indices(header.nz):
                raise ValueError(f"{source}: the samples are not the frames the gain plan samples")
            frames = [_native(movie.values_from_raw(sample.raw)) for sample in samples]
    if header.value_dtype.kind in "iu" or integral_frames(frames):
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


def plan_sample_indices(n_frames: int) -> list[int]:
    """The frames :func:`plan_gain` samples, in file order."""
    return sample_frame_indices(n_frames, PLAN_SAMPLE_FRAMES)


def _native(values: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    return values if values.dtype.isnative else values.astype(values.dtype.newbyteorder("="))


def settle_gain(
    plan: GainPlan,
    *,
    source_is_integer: bool,
    counter: GainCounter | None,
    output: str | os.PathLike[str],
    reference_output: str | os.PathLike[str] | None = None,
) -> tuple[GainCountSurvey | None, GainRecord | None, GainOutcome]:
    """After the read pass: keep or refuse the gain and place its reference file.

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
        record = _carried_over_record(plan, _relative_reference(placed, output), digest)
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
    record = _normalised_record(
        plan,
        _relative_reference(placed, output),
        digest,
        n_exceptions=survey.n_exceptions,
        exceptions=survey.exceptions.encode(),
        max_count=survey.max_count,
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


def _carried_over_record(plan: GainPlan, relative: str, digest: str) -> GainRecord:
    assert plan.supplied_path is not None
    return GainRecord(
        "carried-over",
        relative,
        digest,
        details={
            "note": "gain reference supplied with this raw-count movie, copied unchanged; processing "
            "programs multiply the counts by it; restore does not need it",
            "supplied_name": Path(plan.supplied_path).name,
        },
    )


def _normalised_record(
    plan: GainPlan, relative: str, digest: str, *, n_exceptions: int, exceptions: str, max_count: int
) -> GainRecord:
    return GainRecord(
        "gain-normalised",
        relative,
        digest,
        n_exceptions=n_exceptions,
        exceptions=exceptions,
        details={"orientation": plan.orientation, "max_count": max_count},
        transform=plan.transform if plan.existing_reference is not None else GainTransform(),
    )


#: Room left in a placeholder record for a reference's name that :func:`settle_gain` may lengthen
#: (a content-named copy: ``-`` and 12 hex digits, and more for a path it cannot predict).
_REFERENCE_NAME_SLACK = 64


def placeholder_record(
    plan: GainPlan,
    *,
    output: str | os.PathLike[str],
    reference_output: str | os.PathLike[str] | None,
    n_frames: int,
    n_exceptions: int,
) -> GainRecord | None:
    """A record entry as long as :func:`settle_gain`'s will be, for a read pass that has yet to run.

    For a movie expected to keep the gain (``plan.action`` "apply") with up to
    ``n_exceptions`` exceptions, or to carry over a supplied gain; None when no entry
    is expected. Only an estimate of the length: conversion writes again (another read)
    in the rare case the final entry is longer.
    """
    output = Path(output)
    if plan.action == "carry-over" and plan.supplied_path is not None:
        supplied = Path(plan.supplied_path)
        if reference_output is not None:
            named = supplied if _existing_reference_usable(supplied, output) else Path(reference_output)
        else:
            named = output.parent / supplied.name
        relative = _relative_reference(named, output) + "-" * _REFERENCE_NAME_SLACK
        return _carried_over_record(plan, relative, "0" * 64)
    if plan.action != "apply":
        return None
    if plan.existing_reference is not None:
        relative = _relative_reference(Path(plan.existing_reference), output)
    elif reference_output is not None:
        relative = _relative_reference(Path(reference_output), output)
    else:
        relative = GAIN_REFERENCE_NAME
    return _normalised_record(
        plan,
        relative + "-" * _REFERENCE_NAME_SLACK,
        "0" * 64,
        n_exceptions=n_exceptions,
        exceptions="A" * GainExceptions.encoded_size_bound(n_frames=n_frames, n_exceptions=n_exceptions),
        max_count=kernels.GAIN_COUNT_LIMIT,
    )


def _relative_reference(reference: Path, output: Path) -> str:
    return Path(os.path.relpath(reference.resolve(), output.resolve().parent)).as_posix()
