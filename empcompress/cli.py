"""The ``empcompress`` command line.

All printing and progress bars live here; the stages it calls are plain
functions. Our errors print as ``Error: message`` and exit with status 1
(2 for bad usage, 130 on Ctrl-C), never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from . import __version__
from .errors import EmpCompressError

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

ProgressCallback = Callable[[str, int], None]


def _human_bytes(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n_bytes) < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} TiB"


@contextmanager
def _byte_progress(total_bytes: int, *, description: str, quiet: bool) -> Iterator[ProgressCallback]:
    """A tqdm bar over bytes (hidden when not on a terminal or when quiet)."""
    bar = tqdm(
        total=total_bytes,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=True if quiet else None,
        leave=False,
        file=sys.stderr,
    )

    def advance(stage: str, n_bytes: int) -> None:
        bar.set_postfix_str(stage, refresh=False)
        bar.update(n_bytes)

    try:
        yield advance
    finally:
        bar.close()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# ---------------------------------------------------------------- convert


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert_movie
    from .mrc import read_header

    source = Path(args.source)
    output = Path(args.output) if args.output else source.with_suffix(".tif")
    header = read_header(source)
    with _byte_progress(3 * header.data_size_bytes, description=source.name, quiet=args.quiet) as progress:
        result = convert_movie(
            source,
            output,
            codec=args.codec,
            level=args.level,
            threads=args.threads,
            overwrite=args.overwrite,
            progress=progress,
        )
    for warning in result.warnings:
        print(f"Warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
        return EXIT_OK
    seconds = max(result.elapsed_seconds, 1e-9)
    print(
        f"{result.source_path} -> {result.output_path}\n"
        f"  {result.n_frames} frames of {result.frame_shape[1]}x{result.frame_shape[0]}, "
        f"{result.decision.reason}\n"
        f"  codec {result.codec}; {_human_bytes(result.source_size_bytes)} -> "
        f"{_human_bytes(result.output_size_bytes)} ({result.ratio:.2f}x smaller)\n"
        f"  verified bit for bit in {seconds:.1f} s ({result.source_size_bytes / seconds / 1e6:.0f} MB/s)"
    )
    return EXIT_OK


# ---------------------------------------------------------------- restore


def _cmd_restore(args: argparse.Namespace) -> int:
    from .reconstruct import read_record
    from .restore import restore_movie

    record = read_record(args.tiff)
    output = Path(args.output) if args.output else Path(args.tiff).with_name(record.source.name)
    with _byte_progress(
        record.source.size_bytes, description=Path(args.tiff).name, quiet=args.quiet
    ) as progress:
        result = restore_movie(
            args.tiff, output, overwrite=args.overwrite, threads=args.threads, progress=progress
        )
    print(
        f"{result.tiff_path} -> {result.output_path}: {result.size_bytes} bytes, "
        f"sha256 {result.sha256} (matches)"
    )
    return EXIT_OK


# ---------------------------------------------------------------- verify


def _cmd_verify(args: argparse.Namespace) -> int:
    from .reconstruct import read_record
    from .verify import verify_tiff

    record = read_record(args.path)
    with _byte_progress(
        record.source.size_bytes, description=Path(args.path).name, quiet=args.quiet
    ) as progress:
        result = verify_tiff(args.path, against=args.against, threads=args.threads, progress=progress)
    against = f" and matches {args.against} byte for byte" if result.compared_with_source else ""
    print(
        f"OK {result.path}: {result.n_frames} frames decode to the recorded source "
        f"(sha256 {result.source_sha256}){against}"
    )
    return EXIT_OK


# ---------------------------------------------------------------- info


def _cmd_info(args: argparse.Namespace) -> int:
    from .info import describe_file

    description = describe_file(args.path)
    if args.json:
        print(json.dumps(description, indent=2, default=str))
    else:
        for key, value in description.items():
            print(f"{key}: {value}")
    return EXIT_OK


# ---------------------------------------------------------------- example


def _cmd_example(args: argparse.Namespace) -> int:
    from .example import write_example_movie

    directory = Path(args.directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "example_movie.mrc"
    if path.exists() and not args.overwrite:
        print(f"Error: {path}: already exists; pass --overwrite to write it again", file=sys.stderr)
        return EXIT_FAILURE
    write_example_movie(path, n_frames=args.frames, frame_shape=(args.size, args.size))
    print(f"wrote {path} ({args.frames} frames of {args.size}x{args.size} float32 electron counts)")
    return EXIT_OK


# ---------------------------------------------------------------- parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    from .encode import CODEC_NAMES

    parser = argparse.ArgumentParser(
        prog="empcompress",
        description="Lossless compression of cryo-EM movies (MRC -> verified TIFF) for EMPIAR.",
    )
    parser.add_argument("--version", action="version", version=f"empcompress {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    convert = commands.add_parser(
        "convert",
        help="convert one MRC movie to a verified TIFF stack",
        description="Convert one MRC movie to a multi-page TIFF stack, verified bit for bit before it "
        "appears under its name. The source is only read.",
    )
    convert.add_argument("source", metavar="SRC.mrc")
    convert.add_argument("-o", "--output", metavar="OUT.tif", help="output file (default: SRC with .tif)")
    convert.add_argument(
        "--codec",
        choices=CODEC_NAMES,
        default="auto",
        help="strip compression; auto (default) trial-encodes a sample with LZW and deflate, which "
        "every reader decodes, and keeps the smaller; zstd is faster but not read everywhere",
    )
    convert.add_argument(
        "--level", type=int, help="deflate 0-9 (default: Huffman-only for counts) or zstd 1-22"
    )
    convert.add_argument("--threads", type=_positive_int, default=_default_threads(), help="encoder threads")
    convert.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    convert.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_common(convert)
    convert.set_defaults(handler=_cmd_convert)

    restore = commands.add_parser(
        "restore",
        help="rebuild the original MRC file from a TIFF stack, byte for byte",
        description="Rebuild the original MRC file from one of our TIFF stacks; its sha256 must equal "
        "the recorded one before it appears under its name.",
    )
    restore.add_argument("tiff", metavar="OUT.tif")
    restore.add_argument("-o", "--output", metavar="ORIGINAL.mrc", help="default: the recorded source name")
    restore.add_argument("--threads", type=_positive_int, default=_default_threads())
    restore.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_common(restore)
    restore.set_defaults(handler=_cmd_restore)

    verify = commands.add_parser(
        "verify",
        help="decode a TIFF stack and check it against its record (and its source)",
        description="Decode every page and check that it rebuilds the recorded source exactly; with "
        "--against, also compare with the source file byte for byte.",
    )
    verify.add_argument("path", metavar="OUT.tif")
    verify.add_argument("--against", metavar="SRC.mrc", help="the source MRC file to compare with")
    verify.add_argument("--threads", type=_positive_int, default=_default_threads())
    _add_common(verify)
    verify.set_defaults(handler=_cmd_verify)

    info = commands.add_parser("info", help="describe an MRC file or one of our TIFF stacks")
    info.add_argument("path", metavar="FILE")
    info.add_argument("--json", action="store_true", help="print as JSON")
    info.set_defaults(handler=_cmd_info)

    example = commands.add_parser(
        "example", help="write a small synthetic example movie (float32 electron counts) to try on"
    )
    example.add_argument("directory", metavar="DIR")
    example.add_argument("--frames", type=_positive_int, default=8)
    example.add_argument("--size", type=_positive_int, default=512, help="frame width and height in pixels")
    example.add_argument("--overwrite", action="store_true")
    example.set_defaults(handler=_cmd_example)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except EmpCompressError as error:
        print(f"Error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("Interrupted; no partial output was left behind.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:
        print(
            f"Error: {error.filename or ''}: {error.strerror or error}".replace(": : ", ": "), file=sys.stderr
        )
        return EXIT_FAILURE
