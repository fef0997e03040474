"""``convert_movie``: one MRC movie to a verified TIFF stack, renamed into place only once verified."""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import kernels
from ..detect import StorageDecision
from ..encode import Codec
from ..errors import EmpCompressError, InputError, VerificationError
from ..files import commit_output, file_digests, is_temporary_name, temporary_output
from ..frame_buffers import keeping_frame_buffers
from ..gain import GainOutcome
from ..mrc import MrcHeader, MrcMovie, read_header
from ..readpass import ProgressCallback
from ..verify import verify_tiff
from ..write import looks_like_packed_4bit
from .plain import write_one_read
from .with_gain import write_with_gain
from .write_pass import OneRead

#: Frames smaller than this weigh less than their TIFF page's tags: an output larger than the source
#: is then said to be the tags' doing, whatever the codec (how many threads small frames get is
#: :data:`empcompress.kernels.SINGLE_THREAD_FRAME_BYTES`).
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
    with kernels.kernel_threads(threads), keeping_frame_buffers():  # the pass's buffers serve verification
        try:
            gain_outcome: GainOutcome | None = None
            gain_path: Path | None = None
            with temporary_output(output) as temporary:
                with MrcMovie(source) as movie:
                    header = movie.header
                    conversion = OneRead(
                        source=source,
                        movie=movie,
                        temporary=temporary,
                        header_bytes=movie.read_header_bytes(),
                        extended_header_bytes=movie.read_extended_header_bytes(),
                        codec=codec,
                        level=level,
                        threads=threads,
                        progress=progress,
                    )
                    if gain is None:
                        written = write_one_read(conversion)
                    else:
                        written, gain_outcome, gain_path = write_with_gain(
                            conversion, output, gain=gain, gain_reference_output=gain_reference_output
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
