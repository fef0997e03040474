"""Single-movie conversion: MRC movie -> verified multi-page TIFF stack.

Every source byte is read once (:mod:`empcompress.readpass`), a bounded number of
frame buffers in memory:

1. *sample*: the middle frame is read first and held; the storage type and the
   codec are chosen from it;
2. *read and encode*, one pass in file order: hash the whole file (sha256), check
   that each frame fits the storage type, flip it to TIFF row order, cast it, encode
   its strips in parallel and write a temporary file. The record in the first page
   holds placeholders for what is known only at the end (the sha256, the value
   range); they are filled in place afterwards. A frame that does not fit the type
   chosen from the sample starts the pass again with a wider type (rare);
3. *verify*: decode the temporary file from disk, rebuild every source frame's
   bytes, and check that the rebuilt file (header, extended header, frames) hashes
   to the sha256 of what pass 2 read. Only then is the file renamed into place.

Gain-normalised conversion (a ``gain``) reads every source byte once too: the gain
plan's sampled frames decide what the pass tries (counts as uint8 or uint16, or the
float path), and the pass counts every frame against the gain (collecting the
record's exceptions), hashes and encodes it; see :func:`_write_with_gain`. It is
verified the same way, the gain reference read from disk.
"""

from __future__ import annotations

import base64
import errno
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from . import __version__, kernels
from .detect import FrameStats, StorageDecision, decide_storage
from .encode import Codec, choose_codec, encode_frame_strips, make_codec, rows_per_strip
from .errors import EmpCompressError, InputError, VerificationError
from .files import commit_output, file_digests, is_temporary_name, temporary_output
from .gain import GainCounter, GainOutcome, GainRecord, plan_gain, settle_gain
from .gain.plan import placeholder_record, plan_sample_indices
from .metadata import MovieRecord, SourceRecord, StorageRecord
from .mrc import MrcHeader, MrcMovie, read_header
from .readpass import (
    DecisionOutgrownError,
    FrameSample,
    FrameStore,
    SourcePass,
    cast_store,
    read_sample,
    read_samples,
)
from .verify import verify_tiff
from .write import (
    ClassicTiffOverflowError,
    bigtiff_expected,
    classic_strip_budget_bytes,
    looks_like_packed_4bit,
    replace_description,
    write_tiff_attempt,
)

__all__ = ["MovieSurvey", "ConversionResult", "survey_movie", "convert_movie"]

ProgressCallback = Callable[[str, int], None]
#: Frames smaller than this are converted on one thread, whatever ``threads`` says: for them the
#: per-frame hand-offs between threads (hashing, strip encoding, Numba's parallel kernels, the
#: decoder's pool while verifying) cost more than the work they share. Measured on 2 cores: one
#: thread is 2.5x faster for 1x1 to 128x128 float32 frames and 1.2x for 1024x1024 (4 MiB); two
#: threads win from 2048x2048 (16 MiB). Movies from real detectors have frames of 14-94 MB.
#: Frames this small weigh less than their TIFF page's tags.
TINY_FRAME_BYTES = 1024
#: errno values of a write the output's disk refused (a full disk, a quota, a read-only folder).
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}


def threads_for_frames(header: MrcHeader, threads: int) -> int:
    """The threads worth using for a movie's frames: one for small frames, else ``threads``."""
    return kernels.threads_for_frame_bytes(header.frame_size_bytes, threads)


def _naming_output(error: OSError, output: Path) -> OSError:
    """``error``, naming the output the user asked for rather than our hidden temporary file.

    A write refused without a file name (tifffile's ``No space left on device``) names the
    output too; any other error is returned as it is.
    """
    filename = error.filename
    ours = filename is not None and is_temporary_name(os.path.basename(os.fsdecode(filename)))
    if not ours and not (filename is None and error.errno in _OUTPUT_ERRNOS):
        return error
    return OSError(error.errno, error.strerror or str(error), str(output))


def _larger_than_source(
    output: Path, header: MrcHeader, chosen: Codec, asked: str, output_size: int, source_size: int
) -> str:
    sizes = f"{output_size} > {source_size} bytes"
    if header.frame_size_bytes < TINY_FRAME_BYTES:
        return (
            f"{output.name}: frames of {header.nx}x{header.ny} pixels: every TIFF page carries a few hundred "
            f"bytes of tags, more than its pixels, so the output is larger than the source ({sizes}) "
            f"whatever the codec"
        )
    if asked != "auto":
        return (
            f"{output.name}: codec {chosen.label} made the output larger than the source ({sizes}); "
            f"--codec auto keeps the smallest of LZW, deflate and no compression"
        )
    if chosen.name == "none":
        return (
            f"{output.name}: the values do not compress, so they are stored uncompressed; the TIFF "
            f"structure and the record of the original header make the output "
            f"{output_size - source_size} bytes larger than the source"
        )
    return (
        f"{output.name}: codec {chosen.label}, chosen by --codec auto from a sample of the movie, made "
        f"the output larger than the source ({sizes}); --codec none stores it uncompressed"
    )


@dataclass(frozen=True)
class MovieSurvey:
    """Result of the survey pass: header, whole-file sha256, merged stats, decision."""

    path: str
    header: MrcHeader
    sha256: str
    stats: FrameStats
    decision: StorageDecision


@dataclass(frozen=True)
class ConversionResult:
    """What :func:`convert_movie` did."""

    source_path: str
    output_path: str
    n_frames: int
    frame_shape: tuple[int, int]
    source_mode: int
    source_size_bytes: int
    source_sha256: str
    output_size_bytes: int
    output_sha256: str
    output_md5: str
    decision: StorageDecision
    codec: str
    trial_sizes_bytes: dict[str, int]
    warnings: tuple[str, ...]
    elapsed_seconds: float
    gain: GainOutcome | None = None  # what was done about a gain (convert_movie's gain option)

    @property
    def ratio(self) -> float:
        return self.source_size_bytes / max(1, self.output_size_bytes)


def survey_movie(
    path: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    frame_hook: Callable[[int, npt.NDArray[np.generic]], None] | None = None,
    threads: int = 1,
) -> MovieSurvey:
    """sha256 of the whole file and stats of every frame, in one read (the read pass, storing nothing).

    Conversion does not need it (it surveys while it encodes); tests and benchmarks compare
    with it. ``frame_hook(index, values)``, if given, sees every frame's values in the same
    pass. With ``threads`` > 1 each frame is hashed on a helper thread (two read buffers).
    """
    nothing = np.empty(0, dtype=np.uint8)

    def store(index: int, values: npt.NDArray[np.generic], merged: FrameStats) -> npt.NDArray[np.generic]:
        if frame_hook is not None:
            frame_hook(index, values)
        return nothing

    def surveyed(stage: str, size_bytes: int) -> None:
        assert progress is not None
        progress("survey", size_bytes)

    with MrcMovie(path) as movie:
        with SourcePass(
            movie,
            store=store,
            threads=threads,
            progress=surveyed if progress is not None else None,
            header_bytes=movie.read_header_bytes(),
            extended_header_bytes=movie.read_extended_header_bytes(),
        ) as read:
            for _ in read.stored_frames():
                pass
        header = movie.header
    decision = decide_storage(source_dtype=header.value_dtype, stats=read.stats)
    return MovieSurvey(str(path), header, read.sha256, read.stats, decision)


def _trial_frame(
    movie: MrcMovie,
    values: npt.NDArray[np.generic],
    stored_dtype: np.dtype,
    gain: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.generic]:
    """Every 4th row band of one frame's values, in storage type (for the codec trial)."""
    out = np.empty(movie.header.frame_shape, dtype=stored_dtype)
    if gain is not None:
        kernels.gain_counts(values, gain, out)
    else:
        kernels.flip_cast(values, out)
    rows = rows_per_strip(frame_shape=movie.header.frame_shape, itemsize=out.dtype.itemsize)
    bands = [out[start : start + rows] for start in range(0, out.shape[0], 4 * rows)]
    return np.ascontiguousarray(np.concatenate(bands))


def _resolve_codec(
    movie: MrcMovie,
    trial: npt.NDArray[np.generic],
    decision: StorageDecision,
    *,
    codec: str,
    level: int | None,
) -> tuple[Codec, dict[str, int]]:
    try:
        if codec == "auto":
            return choose_codec([trial], is_integer=decision.is_integer, level=level)
        return make_codec(codec, level=level, is_integer=decision.is_integer), {}
    except ValueError as error:
        raise InputError(f"{movie.path}: {error}") from None


def _movie_record(
    source: Path,
    movie: MrcMovie,
    *,
    header_bytes: bytes,
    extended_header_bytes: bytes,
    sha256: str,
    decision: StorageDecision,
    chosen: Codec,
    rows: int,
    gain_record: GainRecord | None,
) -> MovieRecord:
    header = movie.header
    return MovieRecord(
        tool_version=__version__,
        source=SourceRecord(
            name=source.name,
            size_bytes=header.file_size_bytes,
            sha256=sha256,
            mode=header.mode,
            byte_order=header.byte_order,
            nx=header.nx,
            ny=header.ny,
            nz=header.nz,
            bytes_are_signed=header.bytes_are_signed,
            pixel_size_angstrom=header.pixel_size_angstrom,
            header_b64=base64.b64encode(header_bytes).decode("ascii"),
            extended_header_b64=base64.b64encode(extended_header_bytes).decode("ascii"),
            exttyp=header.exttyp,
        ),
        storage=StorageRecord(
            stored_dtype=decision.stored_dtype,
            is_integer=decision.is_integer,
            value_min=decision.value_min,
            value_max=decision.value_max,
            reason=decision.reason,
            codec=chosen.name,
            codec_level=chosen.level,
            huffman_only=chosen.huffman_only,
            predictor=chosen.predictor,
            rows_per_strip=rows,
            gain=gain_record.to_dict() if gain_record is not None else None,
        ),
    )


#: What the record holds while the pass runs (the sha256 and value range are filled in afterwards):
#: the longest text each field can take, so that the final record always fits in its place.
_PLACEHOLDER_SHA256 = "0" * 64
_PLACEHOLDER_VALUE = -2.2250738585072014e-308  # as long as any float's JSON text (24 characters)
_PLACEHOLDER_REASON = "?" * 256  # decide_storage's reasons are under 130 characters
#: At most this many attempts at the one read (a wider storage type, the other TIFF kind).
_MAX_ATTEMPTS = 8


def _placeholder(decision: StorageDecision) -> StorageDecision:
    return replace(
        decision, value_min=_PLACEHOLDER_VALUE, value_max=_PLACEHOLDER_VALUE, reason=_PLACEHOLDER_REASON
    )


def _predicted_bigtiff(
    trial: npt.NDArray[np.generic],
    chosen: Codec,
    trial_sizes: dict[str, int],
    *,
    header: MrcHeader,
    rows: int,
    description_bytes: int,
) -> bool:
    """Whether the strips will clearly not fit a classic TIFF, estimated from the trial frame.

    Only a guess to spare a second read: a wrong guess costs one more pass, never a wrong
    file (the kind is checked against the real strip sizes afterwards).
    """
    trial_bytes = trial_sizes.get(chosen.label)
    if trial_bytes is None:
        trial_bytes = sum(len(strip) for strip in encode_frame_strips(trial, chosen, rows=rows))
    estimate = trial_bytes * (header.ny / max(1, trial.shape[0])) * header.nz
    budget = classic_strip_budget_bytes(
        n_frames=header.nz, n_strips_per_frame=-(-header.ny // rows), extra_bytes=description_bytes
    )
    return estimate > 1.1 * budget


@dataclass(frozen=True)
class _Written:
    """What a write stage left in the temporary file."""

    sha256: str  # of the source bytes read
    decision: StorageDecision
    codec: Codec
    trial_sizes: dict[str, int]


def _write_one_read(
    source: Path,
    movie: MrcMovie,
    temporary: Path,
    *,
    codec: str,
    level: int | None,
    threads: int,
    progress: ProgressCallback | None,
) -> _Written:
    """Sample, then read, hash and encode the whole movie in one pass; fill in the record."""
    header = movie.header
    header_bytes, extended_header_bytes = movie.read_header_bytes(), movie.read_extended_header_bytes()
    n_strips_per_frame = 0
    seen: FrameStats | None = None  # frames that outgrew an earlier decision
    bigtiff: bool | None = None  # None: guessed from the sample
    classic_extra_bytes: int | None = None  # classic budget for the final record (see below)
    for _ in range(_MAX_ATTEMPTS):
        sample = read_sample(movie)
        known = sample.stats if seen is None else seen.merge(sample.stats)
        decision = decide_storage(source_dtype=header.value_dtype, stats=known)
        stored_dtype = np.dtype(decision.stored_dtype)
        trial = _trial_frame(movie, movie.values_from_raw(sample.raw), stored_dtype)
        chosen, trial_sizes = _resolve_codec(movie, trial, decision, codec=codec, level=level)
        rows = rows_per_strip(frame_shape=header.frame_shape, itemsize=stored_dtype.itemsize)
        n_strips_per_frame = -(-header.ny // rows)

        def record(sha256: str, decision: StorageDecision) -> str:
            return _movie_record(
                source,
                movie,
                header_bytes=header_bytes,
                extended_header_bytes=extended_header_bytes,
                sha256=sha256,
                decision=decision,
                chosen=chosen,  # noqa: B023 (used within this attempt only)
                rows=rows,  # noqa: B023
                gain_record=None,
            ).to_json()

        placeholder = record(_PLACEHOLDER_SHA256, _placeholder(decision))
        if bigtiff is None:
            bigtiff = _predicted_bigtiff(
                trial, chosen, trial_sizes, header=header, rows=rows, description_bytes=len(placeholder)
            )
        del trial
        with SourcePass(
            movie,
            store=cast_store(header, decision, known),
            samples=[sample],
            threads=threads,
            progress=progress,
            header_bytes=header_bytes,
            extended_header_bytes=extended_header_bytes,
        ) as read:
            del sample  # the pass lets go of the sample frame once it reaches it
            try:
                total_strip_bytes = write_tiff_attempt(
                    temporary,
                    read.stored_frames(),
                    bigtiff=bigtiff,
                    classic_extra_bytes=classic_extra_bytes,
                    n_frames=header.nz,
                    frame_shape=header.frame_shape,
                    dtype=stored_dtype,
                    codec=chosen,
                    rows_per_strip=rows,
                    description=placeholder,
                    pixel_size_angstrom=_tiff_pixel_size_angstrom(header),
                    threads=threads,
                )
            except DecisionOutgrownError as grown:  # a later frame needs a wider type: read again
                seen = grown.stats if seen is None else seen.merge(grown.stats)
                bigtiff = None
                continue
            except ClassicTiffOverflowError:  # the guess was classic, the strips do not fit: read again
                bigtiff = True
                continue
            sha256, stats = read.sha256, read.stats
        final = decide_storage(source_dtype=header.value_dtype, stats=stats)
        if (final.stored_dtype, final.is_integer) != (decision.stored_dtype, decision.is_integer):
            raise RuntimeError(f"{source}: the storage type changed after the pass ({decision} -> {final})")
        description = record(sha256, final)
        if bigtiff and not bigtiff_expected(
            total_strip_bytes=total_strip_bytes,
            n_frames=header.nz,
            n_strips_per_frame=n_strips_per_frame,
            extra_bytes=len(description),
        ):
            # guessed BigTIFF, but the strips fit a classic TIFF with this record: write that, with the
            # classic budget of the final record (the placeholder is longer)
            bigtiff, classic_extra_bytes = False, len(description)
            continue
        replace_description(temporary, description)
        return _Written(sha256, final, chosen, trial_sizes)
    raise RuntimeError(f"{source}: no storage type and TIFF kind settled after {_MAX_ATTEMPTS} passes")


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
        else:
            sample.release()
    return held


def _write_with_gain(
    source: Path,
    output: Path,
    movie: MrcMovie,
    temporary: Path,
    *,
    gain: str | os.PathLike[str],
    gain_reference_output: str | os.PathLike[str] | None,
    codec: str,
    level: int | None,
    threads: int,
    progress: ProgressCallback | None,
) -> tuple[_Written, GainOutcome, Path | None]:
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
    header = movie.header
    header_bytes, extended_header_bytes = movie.read_header_bytes(), movie.read_extended_header_bytes()
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
    bigtiff: bool | None = None  # None: guessed from the sample
    classic_extra_bytes: int | None = None
    reserve = 0  # a record found longer than its placeholder: at least this long
    created_reference = False
    held = samples  # the first pass decides from the plan's samples, later ones from the middle frame
    for attempt in range(_MAX_ATTEMPTS):
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
            trial = _trial_frame(movie, movie.values_from_raw(trial_sample.raw), stored_dtype, applicable)
            limit = counter.limit
            expected_gain = placeholder_record(
                plan,
                output=output,
                reference_output=gain_reference_output,
                n_frames=header.nz,
                n_exceptions=min(expected_exceptions, limit),
            )
        else:
            decision = decide_storage(source_dtype=header.value_dtype, stats=known)
            stored_dtype = np.dtype(decision.stored_dtype)
            if applicable is not None and counted is None:  # count too: the outcome says how many
                counter = GainCounter(applicable, n_frames=header.nz, reference_name=plan.label)
            store = _cast_and_count_store(header, decision, known, counter)
            trial = _trial_frame(movie, movie.values_from_raw(trial_sample.raw), stored_dtype)
            expected_gain = placeholder_record(
                plan,
                output=output,
                reference_output=gain_reference_output,
                n_frames=header.nz,
                n_exceptions=0,
            )
            if plan.action == "apply":
                expected_gain = None  # refused: no entry, a longer reason instead
        chosen, trial_sizes = _resolve_codec(movie, trial, decision, codec=codec, level=level)
        rows = rows_per_strip(frame_shape=header.frame_shape, itemsize=stored_dtype.itemsize)
        n_strips_per_frame = -(-header.ny // rows)

        def record(sha256: str, decision: StorageDecision, gain_record: GainRecord | None) -> str:
            return _movie_record(
                source,
                movie,
                header_bytes=header_bytes,
                extended_header_bytes=extended_header_bytes,
                sha256=sha256,
                decision=decision,
                chosen=chosen,  # noqa: B023 (used within this attempt only)
                rows=rows,  # noqa: B023
                gain_record=gain_record,
            ).to_json()

        notes = len("; ".join(plan.notes)) + 2 * len(plan.label) + len(plan.orientation)
        placeholder = record(
            _PLACEHOLDER_SHA256,
            replace(_placeholder(decision), reason="?" * (2 * len(_PLACEHOLDER_REASON) + notes)),
            expected_gain,
        )
        placeholder += " " * max(0, reserve - len(placeholder))
        if bigtiff is None:
            bigtiff = _predicted_bigtiff(
                trial, chosen, trial_sizes, header=header, rows=rows, description_bytes=len(placeholder)
            )
        del trial, trial_sample
        held = _held_samples(held)
        with SourcePass(
            movie,
            store=store,
            samples=held,
            threads=threads,
            progress=progress,
            header_bytes=header_bytes,
            extended_header_bytes=extended_header_bytes,
        ) as read:
            held = []  # the pass lets go of each sample frame once it reaches it
            try:
                total_strip_bytes = write_tiff_attempt(
                    temporary,
                    read.stored_frames(),
                    bigtiff=bigtiff,
                    classic_extra_bytes=classic_extra_bytes,
                    n_frames=header.nz,
                    frame_shape=header.frame_shape,
                    dtype=stored_dtype,
                    codec=chosen,
                    rows_per_strip=rows,
                    description=placeholder,
                    pixel_size_angstrom=_tiff_pixel_size_angstrom(header),
                    threads=threads,
                )
            except DecisionOutgrownError as grown:  # a later frame does not fit: read again
                if counts_dtype is None:
                    seen = grown.stats if seen is None else seen.merge(grown.stats)
                else:
                    assert counter is not None
                    counts_dtype = counter.stored_dtype  # uint16, or None: the float path (counting)
                bigtiff = None
                continue
            except ClassicTiffOverflowError:
                bigtiff = True
                continue
            sha256, stats = read.sha256, read.stats
        final = decide_storage(source_dtype=header.value_dtype, stats=stats)
        if counts_dtype is None:
            if (final.stored_dtype, final.is_integer) != (decision.stored_dtype, decision.is_integer):
                raise RuntimeError(
                    f"{source}: the storage type changed after the pass ({decision} -> {final})"
                )
            if counter is not None:
                if counter.stored_dtype is not None:  # every frame counted: the gain fits after all
                    counts_dtype, bigtiff = counter.stored_dtype, None
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
        description = record(sha256, final, gain_record)
        if len(description) > len(placeholder):  # rare: write again with room for this record
            reserve, bigtiff = len(description) + 1024, None
            continue
        if bigtiff and not bigtiff_expected(
            total_strip_bytes=total_strip_bytes,
            n_frames=header.nz,
            n_strips_per_frame=n_strips_per_frame,
            extra_bytes=len(description),
        ):
            bigtiff, classic_extra_bytes = False, len(description)
            continue
        replace_description(temporary, description)
        reference = (
            Path(outcome.reference_path) if counts_dtype is not None and outcome.reference_path else None
        )
        outcome = replace(outcome, created_reference=created_reference)
        return _Written(sha256, final, chosen, trial_sizes), outcome, reference
    raise RuntimeError(f"{source}: no storage type and TIFF kind settled after {_MAX_ATTEMPTS} passes")


def _counting_store(header: MrcHeader, counter: GainCounter, stored_dtype: np.dtype) -> FrameStore:
    """Counts of each frame under the gain, as ``stored_dtype``; outgrown past it or past the exceptions."""

    def store(index: int, values: npt.NDArray[np.generic], merged: FrameStats) -> npt.NDArray[np.generic]:
        out = np.empty(header.frame_shape, dtype=stored_dtype)
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


def convert_movie(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    codec: str = "auto",
    level: int | None = None,
    threads: int = 1,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    gain: str | os.PathLike[str] | None = None,
    gain_reference_output: str | os.PathLike[str] | None = None,
) -> ConversionResult:
    """Convert one MRC movie to a verified TIFF stack at ``output``.

    ``codec`` is ``auto`` (smallest of LZW, deflate and none on a sample), ``lzw``,
    ``deflate``, ``zstd`` or ``none``; ``level`` applies to deflate and zstd.
    The output appears under its name only once verified; the source is only read.

    ``gain`` is a gain reference file (float32 MRC in MRC row order, or any
    format :func:`empcompress.gainref.read_gain_reference` reads, oriented
    automatically) or ``"auto"`` (estimate one from the movie): a
    gain-normalised float32 movie is then stored as counts, its gain reference
    placed beside the output (see :mod:`empcompress.gain`); a raw-count movie
    gets no gain, and a supplied file is carried over unchanged.
    ``gain_reference_output``, when given, is the exact path of any gain reference
    file the conversion must write (the whole-drive pipeline owns every name);
    without it a new reference is placed beside the output.
    """
    started = time.perf_counter()
    source, output = Path(source), Path(output)
    if output.exists() and not overwrite:
        raise InputError(f"{output}: already exists; choose another name or pass --overwrite")
    if output.exists() and source.exists() and output.resolve() == source.resolve():
        raise InputError(f"{output}: is the source file itself; choose another output name")
    if not output.parent.is_dir():
        raise InputError(f"{output.parent}: the output directory does not exist")
    header = read_header(source)
    threads = threads_for_frames(header, threads)
    with kernels.kernel_threads(threads):
        try:
            gain_outcome: GainOutcome | None = None
            gain_path: Path | None = None
            with temporary_output(output) as temporary:
                with MrcMovie(source) as movie:
                    header = movie.header
                    if gain is None:
                        written = _write_one_read(
                            source,
                            movie,
                            temporary,
                            codec=codec,
                            level=level,
                            threads=threads,
                            progress=progress,
                        )
                    else:
                        written, gain_outcome, gain_path = _write_with_gain(
                            source,
                            output,
                            movie,
                            temporary,
                            gain=gain,
                            gain_reference_output=gain_reference_output,
                            codec=codec,
                            level=level,
                            threads=threads,
                            progress=progress,
                        )
                try:
                    # from the file on disk: the rebuilt source must hash to what the write stage read
                    verified = verify_tiff(temporary, threads=threads, progress=progress, gain_path=gain_path)
                    if (verified.source_sha256, verified.source_size_bytes) != (
                        written.sha256,
                        header.file_size_bytes,
                    ):
                        raise VerificationError(
                            f"{temporary}: the record does not hold the sha256 and size of the bytes read"
                        )
                except EmpCompressError as error:
                    # name the output the user asked for, not our hidden temporary file
                    message = str(error).replace(str(temporary), str(output))
                    raise type(error)(f"{message} (nothing was written to {output})") from None
                digests = file_digests(temporary)
                output_sha256, output_md5 = digests["sha256"], digests["md5"]
                output_size = temporary.stat().st_size
                warnings: list[str] = []
                stored_dtype = np.dtype(written.decision.stored_dtype)
                if looks_like_packed_4bit(header.frame_shape, stored_dtype):
                    warnings.append(
                        f"{output.name}: 8-bit frames of {header.nx}x{header.ny} pixels; some readers take "
                        f"this size for packed 4-bit data and will misread it"
                    )
                if output_size > header.file_size_bytes:
                    warnings.append(
                        _larger_than_source(
                            output, header, written.codec, codec, output_size, header.file_size_bytes
                        )
                    )
                commit_output(temporary, output)
        except OSError as error:
            named = _naming_output(error, output)
            if named is error:
                raise
            raise named from None
    return ConversionResult(
        source_path=str(source),
        output_path=str(output),
        n_frames=header.nz,
        frame_shape=header.frame_shape,
        source_mode=header.mode,
        source_size_bytes=header.file_size_bytes,
        source_sha256=written.sha256,
        output_size_bytes=output_size,
        output_sha256=output_sha256,
        output_md5=output_md5,
        decision=written.decision,
        codec=written.codec.label,
        trial_sizes_bytes=written.trial_sizes,
        warnings=tuple(warnings),
        elapsed_seconds=time.perf_counter() - started,
        gain=gain_outcome,
    )


def _tiff_pixel_size_angstrom(header: MrcHeader) -> float:
    """The pixel size the TIFF's resolution tags get (0: none, for a header that holds no number)."""
    return header.pixel_size_angstrom if np.isfinite(header.pixel_size_angstrom) else 0.0
