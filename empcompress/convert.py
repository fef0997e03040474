"""Single-movie conversion: MRC movie -> verified multi-page TIFF stack.

Three streaming passes, one frame in memory at a time:

1. *survey*: read every frame once, hashing the whole file (sha256) and
   computing per-frame statistics in the same pass; decide the storage type;
2. *encode*: flip each frame to TIFF row order, cast it to the storage type,
   encode its strips in parallel and write a temporary file;
3. *verify*: decode the temporary file from disk, rebuild every source frame's
   bytes, compare them with the source and the rebuilt file's sha256 with the
   one from pass 1. Only then is the file renamed into place.
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
from .encode import Codec, choose_codec, make_codec, rows_per_strip
from .errors import EmpCompressError, InputError
from .files import commit_output, file_digests, is_temporary_name, temporary_output
from .gain import GainCounter, GainOutcome, gain_stored_frames, plan_gain, settle_gain
from .metadata import MovieRecord, SourceRecord, StorageRecord
from .mrc import MrcHeader, MrcMovie, read_header
from .verify import verify_tiff
from .write import looks_like_packed_4bit, write_tiff_stack

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


def _sample_frames(
    movie: MrcMovie, stored_dtype: np.dtype, gain: npt.NDArray[np.float32] | None = None
) -> list[npt.NDArray[np.generic]]:
    """The middle frame, every 4th row band, in storage type (for the codec trial)."""
    middle = movie.read_frame(movie.header.nz // 2)
    out = np.empty(movie.header.frame_shape, dtype=stored_dtype)
    if gain is not None:
        kernels.gain_counts(middle, gain, out)
    else:
        kernels.flip_cast(middle, out)
    rows = rows_per_strip(frame_shape=movie.header.frame_shape, itemsize=out.dtype.itemsize)
    bands = [out[start : start + rows] for start in range(0, out.shape[0], 4 * rows)]
    return [np.ascontiguousarray(np.concatenate(bands))]


def _resolve_codec(
    movie: MrcMovie,
    decision: StorageDecision,
    *,
    codec: str,
    level: int | None,
    gain: npt.NDArray[np.float32] | None = None,
) -> tuple[Codec, dict[str, int]]:
    stored_dtype = np.dtype(decision.stored_dtype)
    try:
        if codec == "auto":
            sample = _sample_frames(movie, stored_dtype, gain)
            return choose_codec(sample, is_integer=decision.is_integer, level=level)
        return make_codec(codec, level=level, is_integer=decision.is_integer), {}
    except ValueError as error:
        raise InputError(f"{movie.path}: {error}") from None


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
    threads = threads_for_frames(read_header(source), threads)
    with kernels.kernel_threads(threads):
        try:
            plan = plan_gain(source, output, gain=gain) if gain is not None else None
            counter = None
            if plan is not None and plan.action == "apply" and plan.gain is not None:
                counter = GainCounter(plan.gain, n_frames=read_header(source).nz, reference_name=plan.label)
            survey = survey_movie(
                source, progress=progress, frame_hook=counter.add if counter else None, threads=threads
            )
            header, decision = survey.header, survey.decision
            gain_record = gain_outcome = applied_gain = None
            if plan is not None:
                gain_survey, gain_record, gain_outcome = settle_gain(
                    plan,
                    source_is_integer=decision.is_integer,
                    counter=counter,
                    output=output,
                    reference_output=gain_reference_output,
                )
                if (
                    gain_record is not None
                    and gain_survey is not None
                    and gain_survey.stored_dtype is not None
                ):
                    applied_gain = plan.gain
                    decision = StorageDecision(
                        gain_survey.stored_dtype, True, 0.0, float(gain_survey.max_count), gain_survey.reason
                    )
                elif gain_outcome.action == "not-applied" and not decision.is_integer:
                    decision = replace(decision, reason=f"{decision.reason}; {gain_outcome.reason}")
            stored_dtype = np.dtype(decision.stored_dtype)
            warnings: list[str] = []
            if looks_like_packed_4bit(header.frame_shape, stored_dtype):
                warnings.append(
                    f"{output.name}: 8-bit frames of {header.nx}x{header.ny} pixels; some readers take this "
                    f"size for packed 4-bit data and will misread it"
                )
            with MrcMovie(source) as movie, temporary_output(output) as temporary:
                chosen, trial_sizes = _resolve_codec(
                    movie, decision, codec=codec, level=level, gain=applied_gain
                )
                rows = rows_per_strip(frame_shape=header.frame_shape, itemsize=stored_dtype.itemsize)
                record = MovieRecord(
                    tool_version=__version__,
                    source=SourceRecord(
                        name=source.name,
                        size_bytes=header.file_size_bytes,
                        sha256=survey.sha256,
                        mode=header.mode,
                        byte_order=header.byte_order,
                        nx=header.nx,
                        ny=header.ny,
                        nz=header.nz,
                        bytes_are_signed=header.bytes_are_signed,
                        pixel_size_angstrom=header.pixel_size_angstrom,
                        header_b64=base64.b64encode(movie.read_header_bytes()).decode("ascii"),
                        extended_header_b64=base64.b64encode(movie.read_extended_header_bytes()).decode(
                            "ascii"
                        ),
                        exttyp=header.exttyp,
                    ),
                    storage=StorageRecord(
                        stored_dtype=stored_dtype.name,
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

                def frames() -> Iterator[npt.NDArray[np.generic]]:  # again from the start for a BigTIFF
                    if applied_gain is None:
                        return _stored_frames(movie, stored_dtype, progress)
                    return gain_stored_frames(movie, applied_gain, stored_dtype, progress)

                write_tiff_stack(
                    temporary,
                    frames,
                    n_frames=header.nz,
                    frame_shape=header.frame_shape,
                    dtype=stored_dtype,
                    codec=chosen,
                    rows_per_strip=rows,
                    description=record.to_json(),
                    pixel_size_angstrom=header.pixel_size_angstrom
                    if np.isfinite(header.pixel_size_angstrom)
                    else 0.0,
                    threads=threads,
                )
                gain_path = gain_outcome.reference_path if applied_gain is not None and gain_outcome else None
                try:
                    verify_tiff(
                        temporary, against=source, threads=threads, progress=progress, gain_path=gain_path
                    )
                except EmpCompressError as error:
                    # name the output the user asked for, not our hidden temporary file
                    message = str(error).replace(str(temporary), str(output))
                    raise type(error)(f"{message} (nothing was written to {output})") from None
                digests = file_digests(temporary)
                output_sha256, output_md5 = digests["sha256"], digests["md5"]
                output_size = temporary.stat().st_size
                if output_size > header.file_size_bytes:
                    warnings.append(
                        _larger_than_source(
                            output, header, chosen, codec, output_size, header.file_size_bytes
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
        source_sha256=survey.sha256,
        output_size_bytes=output_size,
        output_sha256=output_sha256,
        output_md5=output_md5,
        decision=decision,
        codec=chosen.label,
        trial_sizes_bytes=trial_sizes,
        warnings=tuple(warnings),
        elapsed_seconds=time.perf_counter() - started,
        gain=gain_outcome,
    )
