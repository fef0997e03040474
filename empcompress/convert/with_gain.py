"""The conversion with a gain: count, hash and encode every frame in one read.

The gain plan's sampled frames (read first) decide what the pass tries: counts as uint8
or uint16 under the gain, or the plain float path (the gain refused, or none to apply).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..detect import FrameStats, StorageDecision, decide_storage
from ..frame_buffers import forget_frame_buffer, frame_buffer
from ..gain import GainCounter, GainOutcome, plan_gain, settle_gain
from ..gain.plan import placeholder_record, plan_sample_indices
from ..mrc import MrcHeader
from ..readpass import DecisionOutgrownError, FrameSample, FrameStore, cast_store, read_sample, read_samples
from ..write import ClassicTiffOverflowError, replace_description
from .codec_trial import trial_frame
from .tiff_record import PLACEHOLDER_REASON_CHARS
from .write_pass import MAX_ATTEMPTS, OneRead, TiffKind, Written

#: Sampled frames a gain-normalised conversion holds for its read pass (taken from memory when the
#: pass reaches them) while their raw bytes stay within this; the other sampled frames are read
#: again by the pass. 4096x4096 float32 frames: the gain plan's 4 sampled frames are all held.
HELD_SAMPLE_BYTES = 512 << 20
#: Exceptions a placeholder record leaves room for beyond twice the rate seen in the sampled frames.
_EXCEPTION_ALLOWANCE = 1024


def _held_samples(samples: list[FrameSample]) -> list[FrameSample]:
    """The samples the read pass holds (the rest let go of now): in file order, within the budget."""
    held, total = [], 0
    for sample in samples:
        if total + sample.size_bytes <= HELD_SAMPLE_BYTES:
            held.append(sample)
            total += sample.size_bytes
        else:  # freed now, not kept for reuse: the budget bounds the pass's memory
            forget_frame_buffer(sample.raw)
            sample.release()
    return held


def _counting_store(header: MrcHeader, counter: GainCounter, stored_dtype: np.dtype) -> FrameStore:
    """Counts of each frame under the gain, as ``stored_dtype``; outgrown past it or past the exceptions."""

    def store(index: int, values: npt.NDArray[np.generic], merged: FrameStats) -> npt.NDArray[np.generic]:
        out = frame_buffer(header.frame_shape, stored_dtype)  # reused once the writer is done with it
        counter.add(index, values, out)
        if not counter.fits(stored_dtype):
            raise DecisionOutgrownError(merged, index)
        return out

    return store


def _cast_and_count_store(
    header: MrcHeader, decision: StorageDecision, decided_from: FrameStats, counter: GainCounter | None
) -> FrameStore:
    """The plain store (cast to the storage type), counting each frame under a gain too when given one."""
    cast = cast_store(header, decision, decided_from)
    if counter is None:
        return cast

    def store(index: int, values: npt.NDArray[np.generic], merged: FrameStats) -> npt.NDArray[np.generic]:
        out = cast(index, values, merged)
        counter.add(index, values)
        return out

    return store


def write_with_gain(
    conversion: OneRead,
    output: Path,
    *,
    gain: str | os.PathLike[str],
    gain_reference_output: str | os.PathLike[str] | None,
) -> tuple[Written, GainOutcome, Path | None]:
    """Gain-normalised conversion in one read: count, hash and encode every frame in the same pass.

    The gain plan's sampled frames (read first) decide what the pass tries: counts as
    uint8 or uint16 under the gain, or the plain float path (the gain refused, or none
    to apply). The pass counts every frame against the gain and collects the record's
    exceptions; it starts again (another read) only when a frame does not fit: a count
    past uint8, more exceptions than a movie may have (the float path, still counting
    so the outcome says how many), a float path whose full count keeps the gain after
    all, or a record longer than its placeholder. The gain is settled (its reference
    file placed) after the pass, before verification reads it.
    """
    source, movie = conversion.source, conversion.movie
    header = movie.header
    samples = read_samples(movie, plan_sample_indices(header.nz))
    plan = plan_gain(source, output, gain=gain, samples=samples)
    applicable = plan.gain if plan.action == "apply" else None
    counts_dtype: str | None = None  # counts stored as this, or None: the float path
    expected_exceptions = 0
    if applicable is not None:
        sampled = GainCounter(applicable, n_frames=len(samples), reference_name=plan.label)
        for index, sample in enumerate(samples):
            sampled.add(index, movie.values_from_raw(sample.raw))
        counts_dtype = sampled.stored_dtype
        rate = sampled.n_exceptions / len(samples)
        expected_exceptions = int(2 * rate * header.nz) + _EXCEPTION_ALLOWANCE
        del sampled  # and its scratch frame
    counted: GainCounter | None = None  # a float pass's count of every frame, the gain refused
    seen: FrameStats | None = None  # frames that outgrew an earlier float decision
    kind = TiffKind()
    reserve = 0  # a record found longer than its placeholder: at least this long
    created_reference = False
    held = samples  # the first pass decides from the plan's samples, later ones from the middle frame
    for attempt in range(MAX_ATTEMPTS):
        if attempt > 0:
            held = [read_sample(movie)]
        known = held[0].stats
        for sample in held[1:]:
            known = known.merge(sample.stats)
        if seen is not None:
            known = seen.merge(known)
        trial_sample = min(held, key=lambda sample: abs(sample.index - header.nz // 2))  # the middlemost
        counter: GainCounter | None = None
        if counts_dtype is not None:
            assert applicable is not None
            stored_dtype = np.dtype(counts_dtype)
            decision = StorageDecision(counts_dtype, True, 0.0, 0.0, "")
            counter = GainCounter(applicable, n_frames=header.nz, reference_name=plan.label)
            store = _counting_store(header, counter, stored_dtype)
            trial = trial_frame(movie, movie.values_from_raw(trial_sample.raw), stored_dtype, applicable)
            room_for_exceptions = min(expected_exceptions, counter.limit)
        else:
            decision = decide_storage(source_dtype=header.value_dtype, stats=known)
            stored_dtype = np.dtype(decision.stored_dtype)
            if applicable is not None and counted is None:  # count too: the outcome says how many
                counter = GainCounter(applicable, n_frames=header.nz, reference_name=plan.label)
            store = _cast_and_count_store(header, decision, known, counter)
            trial = trial_frame(movie, movie.values_from_raw(trial_sample.raw), stored_dtype)
            room_for_exceptions = 0
        expected_gain = placeholder_record(
            plan,
            output=output,
            reference_output=gain_reference_output,
            n_frames=header.nz,
            n_exceptions=room_for_exceptions,
        )
        if counts_dtype is None and plan.action == "apply":
            expected_gain = None  # refused: no entry, a longer reason instead
        record, trial_sizes = conversion.record_for(trial, decision)
        notes = len("; ".join(plan.notes)) + 2 * len(plan.label) + len(plan.orientation)
        placeholder = record.placeholder(
            decision, expected_gain, reason_chars=2 * PLACEHOLDER_REASON_CHARS + notes
        )
        placeholder += " " * max(0, reserve - len(placeholder))
        kind = kind.guessed(trial, record, trial_sizes, placeholder)
        del trial, trial_sample
        held = _held_samples(held)
        try:  # the pass lets go of each sample frame once it reaches it
            written = conversion.write(record, kind, store=store, samples=held, description=placeholder)
        except DecisionOutgrownError as grown:  # a later frame does not fit: read again
            if counts_dtype is None:
                seen = grown.stats if seen is None else seen.merge(grown.stats)
            else:
                assert counter is not None
                counts_dtype = counter.stored_dtype  # uint16, or None: the float path (counting)
            kind = replace(kind, bigtiff=None)
            continue
        except ClassicTiffOverflowError:
            kind = replace(kind, bigtiff=True)
            continue
        final = decide_storage(source_dtype=header.value_dtype, stats=written.stats)
        if counts_dtype is None:
            if (final.stored_dtype, final.is_integer) != (decision.stored_dtype, decision.is_integer):
                raise RuntimeError(
                    f"{source}: the storage type changed after the pass ({decision} -> {final})"
                )
            if counter is not None:
                if counter.stored_dtype is not None:  # every frame counted: the gain fits after all
                    counts_dtype, kind = counter.stored_dtype, replace(kind, bigtiff=None)
                    expected_exceptions = counter.n_exceptions
                    continue
                counted = counter
        else:
            counted = counter
        gain_survey, gain_record, outcome = settle_gain(
            plan,
            source_is_integer=final.is_integer,
            counter=counted,
            output=output,
            reference_output=gain_reference_output,
        )
        created_reference = created_reference or outcome.created_reference
        if counts_dtype is not None:
            if gain_survey is None or gain_survey.stored_dtype != counts_dtype or gain_record is None:
                raise RuntimeError(f"{source}: the gain was not kept after a pass that fitted it")
            final = StorageDecision(counts_dtype, True, 0.0, float(gain_survey.max_count), gain_survey.reason)
        elif outcome.action == "not-applied" and not final.is_integer:
            final = replace(final, reason=f"{final.reason}; {outcome.reason}")
        description = record.text(written.sha256, final, gain_record)
        if len(description) > len(placeholder):  # rare: write again with room for this record
            reserve, kind = len(description) + 1024, replace(kind, bigtiff=None)
            continue
        if written.fits_classic(description):
            kind = TiffKind(bigtiff=False, classic_extra_bytes=len(description))
            continue
        replace_description(conversion.temporary, description)
        reference = (
            Path(outcome.reference_path) if counts_dtype is not None and outcome.reference_path else None
        )
        outcome = replace(outcome, created_reference=created_reference)
        return Written(written.sha256, final, record.codec, trial_sizes), outcome, reference
    raise RuntimeError(f"{source}: no storage type and TIFF kind settled after {MAX_ATTEMPTS} passes")
