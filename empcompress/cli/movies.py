"""Commands on one movie: ``convert``, ``gain estimate``, ``restore``, ``verify FILE``, ``info``,
``example``."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..gain import GainOutcome
from ..malloc_policy import apply_malloc_policy
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    _byte_progress,
    human_bytes,
)

# ---------------------------------------------------------------- convert


def _cmd_convert(args: argparse.Namespace) -> int:
    from ..convert import convert_movie
    from ..mrc import read_header

    apply_malloc_policy()  # fixed malloc thresholds if the environment pinned glibc's (malloc_policy)
    source = Path(args.source)
    output = Path(args.output) if args.output else source.with_suffix(".tif")
    args.writing = output
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
            gain=args.gain,
        )
    for warning in result.warnings:
        print(f"Warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(asdict(result), indent=2))
        return EXIT_OK
    if result.gain is not None:
        _print_gain_outcome(result.gain)
    seconds = max(result.elapsed_seconds, 1e-9)
    print(
        f"{result.source_path} -> {result.output_path}\n"
        f"  {result.n_frames} frames of {result.frame_shape[1]}x{result.frame_shape[0]}, "
        f"{result.decision.reason}\n"
        f"  codec {result.codec}; {human_bytes(result.source_size_bytes)} -> "
        f"{human_bytes(result.output_size_bytes)} ({result.ratio:.2f}x smaller)\n"
        f"  verified bit for bit in {seconds:.1f} s ({result.source_size_bytes / seconds / 1e6:.0f} MB/s)"
    )
    return EXIT_OK


def _print_gain_outcome(outcome: GainOutcome) -> None:
    if outcome.action == "applied":
        created = "written" if outcome.created_reference else "reused"
        print(
            f"  gain reference {outcome.reference_path} ({created}, sha256 {outcome.reference_sha256}); "
            f"orientation: {outcome.orientation}\n"
            f"  {outcome.n_exceptions} exception values ({100 * outcome.exception_fraction:.4f}%) kept "
            f"exactly in the record"
        )
    elif outcome.action == "carried-over":
        print(
            f"  raw counts: gain reference carried over unchanged to {outcome.reference_path} "
            f"(sha256 {outcome.reference_sha256}); the TIFF's record names it"
        )
    else:
        print(f"  gain not applied: {outcome.reason}")


# ---------------------------------------------------------------- gain estimate


def _cmd_gain_estimate(args: argparse.Namespace) -> int:
    import numba
    from tqdm import tqdm

    from ..gain import estimate_set_gain
    from ..gainref import write_gain_reference

    numba.set_num_threads(max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
    output = Path(args.output)
    args.writing = output
    if output.exists() and not args.overwrite:
        print(f"Error: {output}: already exists; choose another name or pass --overwrite", file=sys.stderr)
        return EXIT_FAILURE
    with tqdm(
        total=len(args.movies),
        desc="gain",
        unit="movie",
        disable=True if args.quiet else None,
        leave=False,
        file=sys.stderr,
    ) as bar:
        result = estimate_set_gain(
            args.movies, max_frames=args.max_frames, progress=lambda stage, n: bar.update(n)
        )
    estimate = result.estimate
    sha256 = write_gain_reference(output, estimate.gain, overwrite=args.overwrite)
    n_pixels = max(1, estimate.n_pixels)
    rows = [
        ("reliable (2+ distinct values reproduced)", estimate.n_reliable),
        ("unconfirmed (one distinct value)", estimate.n_unconfirmed),
        ("exception (some value not reproduced)", estimate.n_exception),
        ("unhit (gain 1.0, counts 0)", estimate.n_unhit),
    ]
    if args.json:
        document = {
            "output": str(output),
            "sha256": sha256,
            "n_frames": estimate.n_frames,
            "movies_used": list(result.used),
            "movies_skipped": [{"path": p, "reason": r} for p, r in result.skipped],
            "movies_not_fitting": [{"path": p, "exception_fraction": f} for p, f in result.misfits],
            "pixels": {
                "total": estimate.n_pixels,
                "reliable": estimate.n_reliable,
                "unconfirmed": estimate.n_unconfirmed,
                "exception": estimate.n_exception,
                "unhit": estimate.n_unhit,
            },
        }
        print(json.dumps(document, indent=2))
    else:
        print(
            f"{output}: float32 gain reference, MRC row order, sha256 {sha256}\n"
            f"  from {estimate.n_frames} frames of {len(result.used)} gain-normalised movies"
        )
        for label, count in rows:
            print(f"  {label}: {count} pixels ({100 * count / n_pixels:.3f}%)")
        for path, reason in result.skipped:
            print(f"  skipped {path}: {reason}")
        for path, fraction in result.misfits:
            print(
                f"  Warning: {path}: this gain does not reproduce {100 * fraction:.2f}% of its sampled "
                f"values; it probably belongs to another gain reference",
                file=sys.stderr,
            )
    return EXIT_OK


# ---------------------------------------------------------------- restore


def _cmd_restore(args: argparse.Namespace) -> int:
    from ..reconstruct import read_record
    from ..restore import restore_movie

    apply_malloc_policy()
    record = read_record(args.tiff)
    output = Path(args.output) if args.output else Path(args.tiff).with_name(record.source.name)
    args.writing = output
    with _byte_progress(
        record.source.size_bytes, description=Path(args.tiff).name, quiet=args.quiet
    ) as progress:
        result = restore_movie(
            args.tiff,
            output,
            overwrite=args.overwrite,
            threads=args.threads,
            progress=progress,
            gain_path=args.gain,
        )
    print(
        f"{result.tiff_path} -> {result.output_path}: {result.size_bytes} bytes, "
        f"sha256 {result.sha256} (matches)"
    )
    return EXIT_OK


# ---------------------------------------------------------------- verify


def _cmd_verify(args: argparse.Namespace) -> int:
    from ..reconstruct import read_record
    from ..verify import verify_tiff

    apply_malloc_policy()
    if Path(args.path).is_dir():
        from .drives import _verify_bag

        return _verify_bag(args)
    record = read_record(args.path)
    with _byte_progress(
        record.source.size_bytes, description=Path(args.path).name, quiet=args.quiet
    ) as progress:
        result = verify_tiff(
            args.path, against=args.against, threads=args.threads, progress=progress, gain_path=args.gain
        )
    against = f" and matches {args.against} byte for byte" if result.compared_with_source else ""
    print(
        f"OK {result.path}: {result.n_frames} frames decode to the recorded source "
        f"(sha256 {result.source_sha256}){against}"
    )
    return EXIT_OK


# ---------------------------------------------------------------- info


def _cmd_info(args: argparse.Namespace) -> int:
    from ..info import describe_file

    description = describe_file(args.path)
    if args.json:
        print(json.dumps(description, indent=2, default=str))
    else:
        for key, value in description.items():
            print(f"{key}: {value}")
    return EXIT_OK


# ---------------------------------------------------------------- example


def _cmd_example(args: argparse.Namespace) -> int:
    from ..example import write_example_drive, write_example_movie

    directory = Path(args.directory)
    if args.drive:
        if directory.exists() and any(directory.iterdir()) and not args.overwrite:
            print(
                f"Error: {directory}: is not empty; pass --overwrite to write the drive into it",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        write_example_drive(directory, frame_shape=(args.size, args.size))
        print(f"wrote an example drive to {directory}: count movies, a gain-normalised set, other files")
        return EXIT_OK
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "example_movie.mrc"
    if path.exists() and not args.overwrite:
        print(f"Error: {path}: already exists; pass --overwrite to write it again", file=sys.stderr)
        return EXIT_FAILURE
    write_example_movie(path, n_frames=args.frames, frame_shape=(args.size, args.size))
    print(f"wrote {path} ({args.frames} frames of {args.size}x{args.size} float32 electron counts)")
    return EXIT_OK
