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

Gain-normalised conversion (a ``gain``) still surveys the movie first (the exception
list of the record needs every frame), then encodes: two reads, verified the same way.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from . import __version__, kernels
from .detect import FrameStats, StorageDecision, decide_storage, frame_stats
from .encode import Codec, choose_codec, encode_frame_strips, make_codec, rows_per_strip
from .errors import EmpCompressError, InputError, VerificationError
from .files import commit_output, file_digests, is_temporary_name, temporary_output
from .gain import GainCounter, GainOutcome, GainRecord, gain_stored_frames, plan_gain, settle_gain
from .metadata import MovieRecord, SourceRecord, StorageRecord
from .mrc import MrcHeader, MrcMovie, read_header
from .readpass import DecisionOutgrownError, SourcePass, read_sample
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
HASH_CHUNK_BYTES = 8 << 20
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
    """Pass 1: sha256 of the whole file and stats of every frame, in one read.

    ``frame_hook(index, values)``, if given, sees every frame's values in the
    same pass (the gain survey uses it). With ``threads`` > 1 each frame is
    hashed on a helper thread while its stats are computed (two read buffers).
    """
    with MrcMovie(path) as movie, ThreadPoolExecutor(max_workers=1, thread_name_prefix="hash") as hasher:
        header = movie.header
        digest = hashlib.sha256()
        digest.update(movie.read_header_bytes())
        digest.update(movie.read_extended_header_bytes())
        merged: FrameStats | None = None
        buffers = [np.empty(header.frame_size_bytes, dtype=np.uint8) for _ in range(2)] if threads > 1 else []
        hashing: Future[None] | None = None
        for index in range(header.nz):
            # buffer index % 2 was last hashed two frames ago, and that hash has been waited for
            raw = movie.read_raw_frame(index, out=buffers[index % 2] if buffers else None)
            if not buffers:
                digest.update(raw.data)
            else:
                if hashing is not None:
                    hashing.result()
                hashing = hasher.submit(digest.update, raw.data)
            values = movie.values_from_raw(raw)
            stats = frame_stats(values)
            merged = stats if merged is None else merged.merge(stats)
            if frame_hook is not None:
                frame_hook(index, values)
            if progress is not None:
                progress("survey", raw.size)
        if hashing is not None:
            hashing.result()
    assert merged is not None
    decision = decide_storage(source_dtype=header.value_dtype, stats=merged)
    return MovieSurvey(str(path), header, digest.hexdigest(), merged, decision)


def _stored_frames(
    movie: MrcMovie, stored_dtype: np.dtype, progress: ProgressCallback | None
) -> Iterator[npt.NDArray[np.generic]]:
    """Frames in TIFF row order and storage type; a fresh array per frame."""
    for index in range(movie.header.nz):
        raw = movie.read_raw_frame(index)
        out = np.empty(movie.header.frame_shape, dtype=stored_dtype)
        kernels.flip_cast(movie.values_from_raw(raw), out)
        yield out
        if progress is not None:
            progress("encode", raw.size)


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
            decision=decision,
            decided_from=known,
            sample=sample,
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


def _write_with_gain(
    source: Path,
    output: Path,
    temporary: Path,
    *,
    gain: str | os.PathLike[str],
    gain_reference_output: str | os.PathLike[str] | None,
    codec: str,
    level: int | None,
    threads: int,
    progress: ProgressCallback | None,
) -> tuple[_Written, GainOutcome, Path | None]:
    """Gain-normalised conversion: survey every frame (the record's exceptions need them), then encode."""
    plan = plan_gain(source, output, gain=gain)
    counter = None
    if plan.action == "apply" and plan.gain is not None:
        counter = GainCounter(plan.gain, n_frames=read_header(source).nz, reference_name=plan.label)
    survey = survey_movie(
        source, progress=progress, frame_hook=counter.add if counter else None, threads=threads
    )
    header, decision = survey.header, survey.decision
    gain_survey, gain_record, gain_outcome = settle_gain(
        plan,
        source_is_integer=decision.is_integer,
        counter=counter,
        output=output,
        reference_output=gain_reference_output,
    )
    applied_gain = None
    if gain_record is not None and gain_survey is not None and gain_survey.stored_dtype is not None:
        applied_gain = plan.gain
        decision = StorageDecision(
            gain_survey.stored_dtype, True, 0.0, float(gain_survey.max_count), gain_survey.reason
        )
    elif gain_outcome.action == "not-applied" and not decision.is_integer:
        decision = replace(decision, reason=f"{decision.reason}; {gain_outcome.reason}")
    stored_dtype = np.dtype(decision.stored_dtype)
    with MrcMovie(source) as movie:
        middle = movie.read_frame(header.nz // 2)
        trial = _trial_frame(movie, middle, stored_dtype, applied_gain)
        del middle
        chosen, trial_sizes = _resolve_codec(movie, trial, decision, codec=codec, level=level)
        del trial
        rows = rows_per_strip(frame_shape=header.frame_shape, itemsize=stored_dtype.itemsize)
        description = _movie_record(
            source,
            movie,
            header_bytes=movie.read_header_bytes(),
            extended_header_bytes=movie.read_extended_header_bytes(),
            sha256=survey.sha256,
            decision=decision,
            chosen=chosen,
            rows=rows,
            gain_record=gain_record,
        ).to_json()

        def frames() -> Iterator[npt.NDArray[np.generic]]:
            if applied_gain is None:
                return _stored_frames(movie, stored_dtype, progress)
            return gain_stored_frames(movie, applied_gain, stored_dtype, progress)

        for bigtiff in (False, True):  # classic TIFF unless the strips do not fit
            try:
                write_tiff_attempt(
                    temporary,
                    frames(),
                    bigtiff=bigtiff,
                    n_frames=header.nz,
                    frame_shape=header.frame_shape,
                    dtype=stored_dtype,
                    codec=chosen,
                    rows_per_strip=rows,
                    description=description,
                    pixel_size_angstrom=_tiff_pixel_size_angstrom(header),
                    threads=threads,
                )
                break
            except ClassicTiffOverflowError:
                continue
    reference = (
        Path(gain_outcome.reference_path)
        if applied_gain is not None and gain_outcome.reference_path
        else None
    )
    return _Written(survey.sha256, decision, chosen, trial_sizes), gain_outcome, reference


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
                if gain is None:
                    with MrcMovie(source) as movie:
                        header = movie.header
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
