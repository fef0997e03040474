"""The ``empcompress`` command line.

All printing and progress bars live here; the stages it calls are plain
functions. Our errors print as ``Error: message`` and exit with status 1
(2 for bad usage), never with a traceback (``--verbose`` shows one for an
unexpected error, and the library warnings and log lines that are otherwise
kept out of the way). A stop signal (SIGINT, SIGTERM, SIGHUP) removes what was
half-done, prints one line and exits with 128 + its number: 130, 143, 129
(see :mod:`empcompress.interrupts`).

Only light modules are imported here: the heavy ones (NumPy, Numba, Dask) are
imported inside the commands, after the signal handlers are in place.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, interrupts
from .errors import EmpCompressError

if TYPE_CHECKING:
    from .gain import GainOutcome

__all__ = ["main", "build_parser"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # SIGINT; every stop signal exits with 128 + its number

#: The --codec choices (the same as empcompress.encode.CODEC_NAMES, without importing the encoders).
CODEC_NAMES: tuple[str, ...] = ("auto", "lzw", "deflate", "zstd", "none")

ProgressCallback = Callable[[str, int], None]


@contextmanager
def _byte_progress(total_bytes: int, *, description: str, quiet: bool) -> Iterator[ProgressCallback]:
    """A tqdm bar over bytes (hidden when not on a terminal or when quiet)."""
    from tqdm import tqdm

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


def human_bytes(n_bytes: float) -> str:
    """``1.50 GiB`` and so on (imported when first needed: the report module is not light)."""
    from .report import human_bytes as format_bytes

    return format_bytes(n_bytes)


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

    from .gain import estimate_set_gain
    from .gainref import write_gain_reference

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
    from .reconstruct import read_record
    from .restore import restore_movie

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
    from .reconstruct import read_record
    from .verify import verify_tiff

    if Path(args.path).is_dir():
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


# ---------------------------------------------------------------- drives: scan, compress, verify DEST

#: compress finished and every file is in the bag, but some movies were kept as they were (not converted).
EXIT_NOT_ALL_CONVERTED = 3
LOG_INTERVAL_SECONDS = 30.0


def _cmd_scan(args: argparse.Namespace) -> int:
    from .cluster import machine_cores
    from .scan import scan_drive

    plan = scan_drive(
        args.source,
        predict=not args.headers_only,
        n_sample_movies=args.sample_movies,
        n_sample_frames=args.sample_frames,
        n_workers=args.workers or machine_cores(),
    )
    if args.json:
        print(json.dumps(plan.to_dict(), indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{plan.source}: {len(plan.files)} files, {human_bytes(plan.total_size_bytes)}")
    print("\nBy category:")
    for category in plan.categories:
        if category.n_files:
            print(
                f"  {category.category:15s} {category.n_files:7d} files "
                f"{human_bytes(category.size_bytes):>12s}"
                f"   ({category.n_convert} to convert, {category.n_copy} to copy)"
            )
    print("\nBy folder:")
    for folder in plan.folders:
        movies = (
            f", {folder.n_movies} movies ({human_bytes(folder.movie_size_bytes)})" if folder.n_movies else ""
        )
        print(f"  {folder.folder}: {folder.n_files} files, {human_bytes(folder.size_bytes)}{movies}")
    if plan.predictions:
        print("\nMovies (predicted from a sample of frames):")
        for group in plan.predictions:
            if group.kind == "unreadable":
                print(f"  {group.folder or '.'}: {group.n_movies} unreadable as MRC: kept as they are")
                continue
            shape = (
                f"{group.frame_width}x{group.frame_height} mode {group.mode}"
                if group.mode >= 0
                else "unreadable"
            )
            print(
                f"  {group.folder or '.'}: {group.n_movies} x {shape}: {group.kind}, "
                f"{group.stored_dtype or 'kept as is'} {group.codec}, ~{group.predicted_ratio:.2f}x "
                f"({human_bytes(group.size_bytes)} -> ~{human_bytes(group.predicted_output_size_bytes)})"
            )
        if not plan.gain_sets_supported:
            print("  (gain-normalised movies are not recognised by this version: they count as float)")
    if plan.gain_groups:
        print("\nGain groups (gain-normalised movies are stored as counts with one reference per gain):")
        for group in plan.gain_groups:
            where = (
                f"{_printable(group.reference)} ({group.origin}; fits {group.n_fitted} of {group.n_sampled} "
                f"sampled movies, {group.relion_orientation})"
                if group.reference
                else f"one reference {group.origin} per distinct gain"
            )
            print(
                f"  {group.n_movies} movies of {group.frame_width}x{group.frame_height}: {where}; "
                f"{human_bytes(group.reference_size_bytes)} per reference in the bag"
            )
    problems = [entry for entry in plan.files if entry.header_error]
    if problems:
        print("\nMovies that cannot be read as MRC (they will be copied as they are):")
        for entry in problems:
            print(f"  {entry.rel_path}: {entry.header_error}")
    if plan.skipped:
        print("\nNot touched:")
        for skipped in plan.skipped:
            print(f"  {skipped.rel_path}: {skipped.reason}")
    minutes = plan.expected_seconds / 60
    print(
        f"\nExpected: {human_bytes(plan.total_size_bytes)} -> "
        f"~{human_bytes(plan.expected_output_size_bytes)}, "
        f"~{minutes:.1f} min with {plan.n_workers_assumed} workers (scan took {plan.scan_seconds:.1f} s)"
    )
    return EXIT_OK


class _CompressProgress:
    """tqdm bars (files, bytes) on a terminal; periodic log lines otherwise."""

    def __init__(self, *, quiet: bool, log_interval_seconds: float) -> None:
        self.quiet = quiet
        self.interactive = sys.stderr.isatty() and not quiet
        self.log_interval_seconds = log_interval_seconds
        self.files_bar: Any = None
        self.bytes_bar: Any = None
        self.n_todo = 0
        self.bytes_todo = 0
        self.n_done = 0
        self.bytes_done = 0
        self.started = time.monotonic()
        self.last_log = self.started
        self.sealing = False  # the bag's manifests are being written: too late to stop

    def __call__(self, event: Any) -> None:
        from .pipeline import STAGE_REDOING, STAGE_SEALING, FileEvent, PlanEvent, StageEvent

        if isinstance(event, PlanEvent):
            self._plan(event)
        elif isinstance(event, FileEvent):
            self._file(event)
        elif isinstance(event, StageEvent):
            # sealing is fast (the audit hashes nothing): too late to stop; redoing files: it may stop
            if event.stage == STAGE_SEALING:
                self.sealing = True
            elif event.stage == STAGE_REDOING:
                self.sealing = False
            self._log(event.message)

    def _log(self, message: str) -> None:
        if self.quiet:
            return
        if self.files_bar is not None:
            self.files_bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def _plan(self, event: Any) -> None:
        self.n_todo, self.bytes_todo = event.n_todo, event.bytes_todo
        self.started = self.last_log = time.monotonic()
        notes = []
        if event.n_up_to_date:
            notes.append(f"{event.n_up_to_date} already done")
        if event.n_temporaries_removed:
            notes.append(f"{event.n_temporaries_removed} temporary files of an interrupted run removed")
        if event.n_stale_removed:
            notes.append(f"{event.n_stale_removed} outputs of vanished sources removed")
        if event.n_not_touched:
            notes.append(f"{event.n_not_touched} not touched (links, special files)")
        extra = f" ({'; '.join(notes)})" if notes else ""
        self._log(f"{event.n_files} files; {event.n_todo} to do, {human_bytes(event.bytes_todo)}{extra}")
        if self.interactive and event.n_todo:
            from tqdm import tqdm

            self.files_bar = tqdm(total=event.n_todo, desc="files", unit="file", file=sys.stderr, position=0)
            self.bytes_bar = tqdm(
                total=event.bytes_todo,
                desc="bytes",
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                position=1,
            )

    def _file(self, event: Any) -> None:
        self.n_done += 1
        self.bytes_done += event.source_size_bytes
        if event.outcome in ("failed", "kept-as-is"):
            self._log(f"{event.outcome}: {event.rel_path}: {event.message}")
        if self.files_bar is not None:
            self.files_bar.update(1)
            self.bytes_bar.update(event.source_size_bytes)
            return
        now = time.monotonic()
        if now - self.last_log >= self.log_interval_seconds or self.n_done == self.n_todo:
            self.last_log = now
            elapsed = max(now - self.started, 1e-9)
            rate = self.bytes_done / elapsed
            left = (self.bytes_todo - self.bytes_done) / rate if rate > 0 else 0.0
            self._log(
                f"{self.n_done}/{self.n_todo} files, "
                f"{human_bytes(self.bytes_done)}/{human_bytes(self.bytes_todo)}, "
                f"{rate / 1e6:.0f} MB/s, ETA {left / 60:.1f} min"
            )

    def close(self) -> None:
        for bar in (self.files_bar, self.bytes_bar):
            if bar is not None:
                bar.close()
        self.files_bar = self.bytes_bar = None


@contextmanager
def _compress_signals(stop: threading.Event, progress: _CompressProgress) -> Iterator[list[str]]:
    """How compress handles SIGINT, SIGTERM and SIGHUP, by phase (yields the phase, to be updated).

    - ``starting`` (the cluster starting): the first signal unwinds everything, as in every command;
    - ``running`` (compress_drive): the first signal asks the job to stop (finished files are kept,
      running ones abandoned, their temporaries removed, the journal consistent); a second Ctrl-C
      before the bag is being sealed stops at once (the next run removes what that leaves);
    - ``done`` (compress_drive returned, the cluster shutting down): signals are noted; the outcome,
      e.g. a sealed bag, stands.
    """
    phase = ["starting"]

    def say(message: str) -> None:
        with suppress(RuntimeError):  # stderr busy in this very thread (a write the signal interrupted)
            progress._log(message)

    def handle(signum: int, frame: object) -> None:
        first = interrupts.received() is None
        interrupts.note(signum)
        if phase[0] == "starting":
            if first:
                raise interrupts.Interrupted(signum)
        elif phase[0] == "running":
            if not stop.is_set() and progress.sealing:
                stop.set()
                say(
                    f"{interrupts.signal_name(signum)} while the bag is being sealed: finishing that first "
                    f"(it takes seconds)"
                )
            elif not stop.is_set():
                stop.set()
                say(
                    f"Stopping ({interrupts.signal_name(signum)}): running files are abandoned, finished "
                    f"ones are kept (Ctrl-C again to force)"
                )
            elif signum == signal.SIGINT and not progress.sealing:
                raise interrupts.Interrupted(signum)

    previous = interrupts.set_handlers(handle)
    try:
        yield phase
    finally:
        interrupts.restore(previous)


def _cmd_compress(args: argparse.Namespace) -> int:
    if not args.verbose:  # the worker processes' log lines and warnings (they inherit the environment)
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
        os.environ.setdefault("PYTHONWARNINGS", "ignore")
    # Threads started meanwhile keep Ctrl-C blocked, so that only this thread ever takes it: NumPy's
    # native threads (started by these imports) too, which would otherwise drop it while the cluster code
    # ignores SIGINT to start its workers. A Ctrl-C during the imports is delivered right after them.
    with interrupts.sigint_blocked():
        import distributed  # noqa: F401
        from dask.utils import parse_bytes

        from .cluster import ClusterOptions, open_cluster, parse_adapt
        from .journal import ensure_not_locked
        from .pipeline import CompressOptions, compress_drive, warm_up_worker

    cluster_options = ClusterOptions(
        scheduler_address=args.scheduler_address,
        scheduler_file=args.scheduler_file,
        cluster=args.cluster,
        n_jobs=args.jobs,
        adapt=parse_adapt(args.adapt) if args.adapt else None,
        worker_lifetime=args.lifetime,
        worker_lifetime_stagger=args.lifetime_stagger,
        n_workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        memory_limit_bytes=parse_bytes(args.memory_limit) if args.memory_limit else None,
        dashboard_address=args.dashboard_address,
    )
    options = CompressOptions(
        codec=args.codec,
        level=args.level,
        threads_per_task=args.threads_per_task,
        gain_sets=not args.no_gain_sets,
        recheck=args.recheck,
    )
    args.writing = args.dest
    ensure_not_locked(args.dest)
    progress = _CompressProgress(quiet=args.quiet, log_interval_seconds=args.log_interval)
    stop = threading.Event()
    with _compress_signals(stop, progress) as phase, ExitStack() as cluster:
        # Ctrl-C is held back (not lost) while the cluster starts its workers, then delivered
        with interrupts.sigint_blocked():
            client, info = cluster.enter_context(open_cluster(cluster_options, worker_setup=warm_up_worker))
        if not args.quiet:
            dashboard = f"; dashboard: {info.dashboard_link}" if info.dashboard_link else ""
            print(f"Running on {info.description}{dashboard}", file=sys.stderr, flush=True)
        phase[0] = "running"
        try:
            summary = compress_drive(
                args.source,
                args.dest,
                client=client,
                options=options,
                on_event=progress,
                stop=stop,
                cluster_description=info.description,
                dashboard_link=info.dashboard_link,
            )
        finally:
            phase[0] = "done"
            progress.close()
    stopped_by = interrupts.received()
    if args.json:
        print(json.dumps(asdict(summary), indent=2, ensure_ascii=False))
    else:
        _print_compress_summary(summary)
    code: int = summary.exit_code
    if stopped_by is not None and code == EXIT_INTERRUPTED:
        code = interrupts.exit_status(stopped_by)  # 130 SIGINT, 143 SIGTERM, 129 SIGHUP
    elif stopped_by is not None and summary.bag_written and not summary.interrupted:
        print(
            f"{interrupts.signal_name(stopped_by)} came when the work was done: the bag was written and "
            f"stands as reported",
            file=sys.stderr,
        )
    if code == EXIT_OK and not summary.all_converted:
        return EXIT_NOT_ALL_CONVERTED
    return code


def _printable(text: str) -> str:
    """Text any terminal encoding can print (names that are not UTF-8 shown as escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _print_compress_summary(summary: Any) -> None:
    from .report import display_path

    if summary.interrupted:
        print(
            f"Stopped: {summary.n_done_this_run} files finished in this run and kept; the journal is "
            f"consistent and no temporary file was left. Run the same command again to finish."
        )
        return
    if summary.n_done_this_run == 0 and summary.n_failed == 0:
        print(
            f"Nothing to do: all {summary.n_up_to_date} files were already done in an earlier run; "
            f"nothing converted."
        )
    else:
        print(
            f"{summary.n_converted} converted, {summary.n_copied} copied, "
            f"{summary.n_kept_as_is} kept as they were, "
            f"{summary.n_failed} failed, {summary.n_up_to_date} already done "
            f"({human_bytes(summary.bytes_read)} read in {summary.elapsed_seconds:.1f} s, "
            f"{summary.bytes_read / max(summary.elapsed_seconds, 1e-9) / 1e6:.0f} MB/s)"
        )
    for category in summary.categories:
        if category.n_files:
            print(
                f"  {category.category:15s} {category.n_files:7d} files  "
                f"{human_bytes(category.source_size_bytes):>11s}"
                f" -> {human_bytes(category.output_size_bytes):>11s}"
            )
    print(
        f"  {'total':15s} {summary.n_files:7d} files  {human_bytes(summary.source_size_bytes):>11s} -> "
        f"{human_bytes(summary.payload_size_bytes):>11s} ({summary.ratio:.2f}x smaller)"
    )
    for decision in summary.decisions:
        print(f"  {decision.n_movies} movies stored as {decision.stored_dtype} with {decision.codec}")
    for gain in summary.gain_references:
        origin = "found on the drive" if gain.origin == "depositor" else "estimated"
        print(
            f"  gain reference data/{_printable(gain.output_rel_path)} ({origin}): "
            f"{gain.n_converted_with_gain} movies stored as counts, mostly {gain.relion_orientation}"
        )
    if summary.gain_left_out:
        print(
            f"  {len(summary.gain_left_out)} gain-normalised movies fit no gain group: stored as lossless "
            "float32 (report.md says why)"
        )
    if summary.n_unchanged:
        print(f"  {summary.n_unchanged} sources re-read: sha256 as recorded, nothing to redo")
    sections = (
        (f"Movies kept as they were, NOT converted ({len(summary.kept_as_is)}):", summary.kept_as_is),
        (f"FAILED, not in the bag ({len(summary.failures)}); fix them and run again:", summary.failures),
        (f"Audit problems ({len(summary.audit_problems)}):", summary.audit_problems),
        (f"Not archived ({len(summary.not_touched)}):", summary.not_touched),
    )
    for title, problems in sections:
        if problems:
            print(title)
            for problem in problems:
                print(f"  {display_path(problem.rel_path)}: {_printable(problem.reason)}")
    if summary.empty_folders:
        print(f"Empty folders ({len(summary.empty_folders)}): a bag holds files only; listed in report.md")
    if summary.sealed:
        print(f"Bag: {summary.dest} (audit passed, sealed; report: {summary.dest}/report.md)")
    elif summary.bag_written:
        print(
            f"NOT SEALED: {summary.dest} is not a finished bag (no bagit.txt); see {summary.dest}/report.md, "
            f"fix what is listed above and run the same command again"
        )


def _verify_bag(args: argparse.Namespace) -> int:
    from .manifest import payload_bytes_on_disk, verify_bag

    total_bytes = payload_bytes_on_disk(args.path)  # never follows a link of a received bag
    with _byte_progress(total_bytes, description=Path(args.path).name, quiet=args.quiet) as progress:
        result = verify_bag(args.path, full=args.full, threads=args.threads, progress=progress)
    decoded = (
        f"; {result.n_tiffs_decoded} TIFF stacks decoded and rebuild their sources" if result.full else ""
    )
    if result.ok:
        print(
            f"OK {result.dest}: {result.n_payload_files} payload files "
            f"({human_bytes(result.payload_size_bytes)}) "
            f"and {result.n_tag_files} tag files match their checksums{decoded}"
        )
        return EXIT_OK
    print(f"FAILED {result.dest}: {len(result.problems)} problems")
    for problem in result.problems:
        print(f"  {problem.rel_path}: {problem.problem}")
    return EXIT_FAILURE


# ---------------------------------------------------------------- deposition


def _cmd_deposition(args: argparse.Namespace) -> int:
    from .deposition import DEPOSITION_JSON, write_deposition

    args.writing = args.dest
    result, bag_problems = write_deposition(args.dest, template_path=args.template)
    if args.json:
        print(json.dumps(result.document, indent=2, ensure_ascii=False))
    path = Path(args.dest) / DEPOSITION_JSON
    print(f"Wrote {path}: {len(result.groups)} imagesets", file=sys.stderr if args.json else sys.stdout)
    for group in result.groups:
        print(f"  {group.imageset['directory']}: {_printable(group.imageset['name'])}")
    for problem in result.problems:
        print(f"  note: {_printable(problem)}")
    if result.schema.valid and not result.to_fill:
        print("Valid against the EMPIAR deposition schema: ready to submit.")
    else:
        print(
            "Not ready: a person must still fill (give them in a JSON file with --template FILE):"
            if not result.schema.valid
            else "Valid against the EMPIAR deposition schema; still to check:"
        )
        for item in result.to_fill:
            print(f"  - {_printable(item)}")
    if bag_problems:
        print(f"The bag's audit found {len(bag_problems)} problems; it is NOT sealed:")
        for problem in bag_problems:
            print(f"  {_printable(problem)}")
        return EXIT_FAILURE
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
    from .example import write_example_drive, write_example_movie

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


# ---------------------------------------------------------------- parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_gain_reference_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gain", metavar="FILE", help="the gain reference, when it is not beside the TIFF (sha256 checked)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="empcompress",
        description="Lossless compression of cryo-EM movies (MRC -> verified TIFF) for EMPIAR.",
    )
    parser.add_argument("--version", action="version", version=f"empcompress {__version__}")
    _add_verbose(parser, default=False)
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
    convert.add_argument(
        "--gain",
        metavar="FILE|auto",
        help="gain reference (MRC, DM4 or EER .gain TIFF; oriented automatically) or 'auto' to estimate "
        "one: a gain-normalised float32 movie is stored as counts plus gain-reference.mrc beside the "
        "output; raw-count movies get no gain (a given file is carried over unchanged)",
    )
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
    _add_gain_reference_option(restore)
    _add_common(restore)
    restore.set_defaults(handler=_cmd_restore)

    verify = commands.add_parser(
        "verify",
        help="decode a TIFF stack and check it against its record (and its source)",
        description="Decode every page and check that it rebuilds the recorded source exactly; with "
        "--against, also compare with the source file byte for byte.",
    )
    verify.add_argument("path", metavar="OUT.tif|DEST", help="a TIFF stack, or a bag written by compress")
    verify.add_argument("--against", metavar="SRC.mrc", help="the source MRC file to compare with")
    verify.add_argument("--full", action="store_true", help="bag: also decode every TIFF stack and check it")
    verify.add_argument("--threads", type=_positive_int, default=_default_threads())
    _add_gain_reference_option(verify)
    _add_common(verify)
    verify.set_defaults(handler=_cmd_verify)

    gain = commands.add_parser(
        "gain",
        help="gain references of gain-normalised movies",
        description="Work with the gain references of gain-normalised float32 movies.",
    )
    gain_commands = gain.add_subparsers(dest="gain_command", metavar="ACTION", required=True)
    estimate = gain_commands.add_parser(
        "estimate",
        help="estimate one float32 gain reference from movies that share it",
        description="Estimate, per pixel, the float32 gain g for which every value is float32(n * g) "
        "for an integer count n, over the gain-normalised movies given (raw-count and non-integer "
        "movies are skipped), and write it as a float32 MRC in MRC row order. Reports reliable, "
        "unconfirmed, exception and unhit pixels, and movies the gain does not fit.",
    )
    estimate.add_argument("movies", metavar="MOVIE", nargs="+")
    estimate.add_argument("-o", "--output", metavar="gain.mrc", required=True)
    estimate.add_argument(
        "--max-frames", type=_positive_int, help="frames read per movie, spread evenly (default: all)"
    )
    estimate.add_argument("--threads", type=_positive_int, default=_default_threads())
    estimate.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    estimate.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_common(estimate)
    estimate.set_defaults(handler=_cmd_gain_estimate)

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
    example.add_argument(
        "--drive",
        action="store_true",
        help="write a small drive (movies of several kinds and other files) instead",
    )
    example.set_defaults(handler=_cmd_example)

    scan = commands.add_parser(
        "scan",
        help="walk a drive, classify every file and predict what compress will do",
        description="Walk SRC without following symbolic links, classify every file (movie, micrograph, "
        "gain reference, defect file, other), read a few frames of a few movies per folder to predict "
        "the storage decision, and print the plan. Reads only.",
    )
    scan.add_argument("source", metavar="SRC")
    scan.add_argument("--json", action="store_true", help="print the plan as JSON")
    scan.add_argument("--headers-only", action="store_true", help="read no frames (no prediction)")
    scan.add_argument("--sample-movies", type=_positive_int, default=2, help="movies sampled per group")
    scan.add_argument("--sample-frames", type=_positive_int, default=2, help="frames read per sampled movie")
    scan.add_argument("--workers", type=_positive_int, help="workers assumed for the time estimate")
    scan.set_defaults(handler=_cmd_scan)

    compress = commands.add_parser(
        "compress",
        help="compress a whole drive into a verified, checksummed BagIt bag (on Dask)",
        description="DEST mirrors SRC under DEST/data: movies become verified TIFF stacks, every other file "
        "is copied byte for byte; DEST is a BagIt bag with sha256 and md5 manifests and reports. Runs on a "
        "local Dask cluster sized to the machine unless told otherwise. Run the same command again after an "
        "interruption to finish the remaining work only. Exit status: 0 all done, 1 some files failed (not "
        "in the bag), 3 all files in the bag but some movies kept as they were (not converted), 130 stopped.",
    )
    compress.add_argument("source", metavar="SRC")
    compress.add_argument("dest", metavar="DEST")
    compress.add_argument(
        "--codec", choices=CODEC_NAMES, default="auto", help="strip compression (see convert)"
    )
    compress.add_argument("--level", type=int, help="deflate 0-9 or zstd 1-22")
    where = compress.add_argument_group("cluster (default: a local cluster, one worker per core)")
    where.add_argument(
        "--scheduler-address", metavar="ADDRESS", help="existing scheduler (or DASK_SCHEDULER_ADDRESS)"
    )
    where.add_argument("--scheduler-file", metavar="FILE", help="existing cluster's scheduler file")
    where.add_argument(
        "--cluster", choices=("slurm", "pbs", "sge", "lsf"), help="batch cluster via dask-jobqueue"
    )
    where.add_argument("--jobs", type=_positive_int, help="batch jobs to start (default 1)")
    where.add_argument(
        "--adapt", metavar="MIN:MAX", help="let the number of batch jobs adapt between MIN and MAX"
    )
    where.add_argument(
        "--lifetime",
        metavar="DURATION",
        help="batch workers leave after this long (e.g. 50m), before the job's time limit; with --adapt new "
        "jobs replace them (see the README on job time limits)",
    )
    where.add_argument(
        "--lifetime-stagger", metavar="DURATION", help="spread the workers' --lifetime by +/- this much"
    )
    where.add_argument("--workers", type=_positive_int, help="local workers (default: one per core)")
    where.add_argument("--threads-per-worker", type=_positive_int, help="local worker threads (default 1)")
    where.add_argument("--memory-limit", metavar="BYTES", help="memory per local worker, e.g. 4GiB")
    where.add_argument("--dashboard-address", default="127.0.0.1:8787", help="local dashboard (host:port)")
    compress.add_argument(
        "--threads-per-task", type=_positive_int, default=1, help="encoder threads per movie"
    )
    compress.add_argument(
        "--no-gain-sets", action="store_true", help="do not estimate gains for gain-normalised movies"
    )
    compress.add_argument(
        "--recheck",
        action="store_true",
        help="re-read every source already in the bag and compare its sha256 with the journal (not only "
        "size, times and inode); redo what changed",
    )
    compress.add_argument(
        "--log-interval",
        type=float,
        default=LOG_INTERVAL_SECONDS,
        help="seconds between log lines when not on a terminal",
    )
    compress.add_argument("--json", action="store_true", help="print the summary as JSON")
    _add_common(compress)
    compress.set_defaults(handler=_cmd_compress)

    deposition = commands.add_parser(
        "deposition",
        help="write the bag's EMPIAR deposition JSON (imagesets from the bag, the rest from a template)",
        description="Write DEST/empiar-deposition.json for a bag made by compress: one EMPIAR imageset per "
        "group of movies sharing format, frame size, frames, voxel type and pixel size (pixel size from the "
        "headers, else from EPU/SerialEM sidecars, else unknown), the gain references as their own imageset. "
        "Fields only a person knows (title, authors, citation, release) come from --template FILE (an "
        "existing deposition JSON whose other fields are kept), else from the bag's existing file. Checked "
        "against the EMPIAR deposition schema; what remains to fill is listed. The bag's tag manifests are "
        "updated and a sealed bag is sealed again after its audit.",
    )
    deposition.add_argument("dest", metavar="DEST")
    deposition.add_argument("--template", metavar="FILE", help="a deposition JSON with the person's fields")
    deposition.add_argument("--json", action="store_true", help="also print the deposition JSON")
    deposition.set_defaults(handler=_cmd_deposition)
    for command in [*commands.choices.values(), *gain_commands.choices.values()]:
        _add_verbose(command, default=argparse.SUPPRESS)  # -v after the command name too
    return parser


def _add_verbose(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show library warnings and log lines, and the traceback of an unexpected error",
    )


_log_handlers: list[logging.Handler] = []  # the handler _configure_logging added last
_silenced: dict[str, int] = {}  # library loggers silenced, with their levels before


def _configure_logging(*, verbose: bool) -> None:
    """Library warnings and log lines (tifffile, Numba, Dask) go to stderr only with --verbose.

    Without it they are dropped, so that an ``Error:`` line is the only thing a user sees
    when something goes wrong (our own messages are printed, not logged).
    """
    logging.captureWarnings(False)  # (again: a test harness may have put its own hook back meanwhile)
    logging.captureWarnings(True)
    root = logging.getLogger()
    while _log_handlers:
        root.removeHandler(_log_handlers.pop())
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
        for name, level in _silenced.items():  # as they were before a run without --verbose
            logging.getLogger(name).setLevel(level)
        _silenced.clear()
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        warnings.simplefilter("default")
    else:
        handler = logging.NullHandler()  # no "last resort" printing of warnings to stderr
        for name in _LIBRARY_LOGGERS:
            library = logging.getLogger(name)
            _silenced.setdefault(name, library.level)
            library.setLevel(logging.CRITICAL + 1)
    _log_handlers.append(handler)
    root.addHandler(handler)


_LIBRARY_LOGGERS = ("tifffile", "numba", "distributed", "dask", "bokeh", "tornado", "asyncio", "py.warnings")
#: errno values that mean "the disk holding the output cannot take it".
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _os_error_message(error: OSError, *, writing: str | os.PathLike[str] | None) -> str:
    """One line for an OSError: the user's file (never our temporary name), what went wrong, what to do.

    ``writing`` is the output the command was writing (a file, or compress's DEST).
    """
    from .files import TEMP_MARKER

    def text(name: object) -> str | None:
        return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else None

    def is_ours(name: str | None) -> bool:
        return name is not None and TEMP_MARKER in os.path.basename(name)

    output = text(writing)
    where, other = text(error.filename), text(error.filename2)
    if is_ours(where):
        where = other if other is not None and not is_ours(other) else output
    if where is None and (error.errno in _DISK_FULL or error.errno in _NOT_ALLOWED):
        where = output
    about_output = output is not None and where == output
    what = error.strerror or str(error) or type(error).__name__
    folder = os.path.dirname(os.path.abspath(where)) if where else "the output"
    kept = f"nothing half-written was left under {where}; " if about_output else ""
    if error.errno in _DISK_FULL:
        advice = f"{kept}free space on the disk holding {folder} and run the same command again"
    elif error.errno in _NOT_ALLOWED and about_output:
        advice = (
            f"{kept}choose a folder you can write to (or fix the permissions of {folder}) and run the "
            f"same command again"
        )
    elif error.errno in _NOT_ALLOWED:
        advice = "check that you may read it (and write where needed) and run the same command again"
    elif error.errno == errno.EIO:
        advice = f"{kept}the disk may be failing or was disconnected; check it and run the same command again"
    elif error.errno in (errno.ENOENT, errno.ENOTDIR):
        advice = "check the path and run the same command again"
    else:
        advice = f"{kept}fix that and run the same command again"
    return f"{where + ': ' if where else ''}{what}; {advice}"


def _interrupted_message(signum: int, args: argparse.Namespace | None) -> str:
    command = getattr(args, "command", None) or "the command"
    return (
        f"Stopped by {interrupts.signal_name(signum)}: {command} was interrupted and left nothing "
        f"half-written; run the same command again to do the work"
    )


def _run(argv: Sequence[str] | None) -> int:
    args: argparse.Namespace | None = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        _configure_logging(verbose=args.verbose)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except BaseException as error:
        signum = interrupts.received()
        if signum is None and isinstance(error, KeyboardInterrupt):
            signum = getattr(error, "signum", int(signal.SIGINT))
        if signum is not None:  # whatever the unwinding raised on the way, the user stopped us
            print(_interrupted_message(signum, args), file=sys.stderr, flush=True)
            return interrupts.exit_status(signum)
        if isinstance(error, SystemExit):  # argparse: --help, --version, bad usage
            raise
        if isinstance(error, EmpCompressError):
            print(f"Error: {error}", file=sys.stderr)
            return EXIT_FAILURE
        if isinstance(error, OSError):
            message = _os_error_message(error, writing=getattr(args, "writing", None))
            print(f"Error: {message}", file=sys.stderr)
            return EXIT_FAILURE
        if not isinstance(error, Exception):
            raise
        writing = getattr(args, "writing", None)
        if writing is not None and "disk is full" in str(error):  # SQLite's words for ENOSPC (the journal)
            print(
                f"Error: {writing}: the disk is full ({error}); free space on the disk holding {writing} "
                f"and run the same command again",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        verbose = bool(getattr(args, "verbose", False))
        if verbose:
            import traceback

            traceback.print_exc()
        hint = "" if verbose else "; run the same command with --verbose to see the traceback"
        print(f"Error: unexpected {type(error).__name__}: {error}{hint}", file=sys.stderr)
        return EXIT_FAILURE


def _log_unraisable(unraisable: Any) -> None:
    """Errors Python can only report (in atexit callbacks, in __del__): logged, seen with --verbose.

    E.g. Dask closing, at exit, a cluster a signal stopped while it started.
    """
    exc_info = (unraisable.exc_type, unraisable.exc_value, unraisable.exc_traceback)
    message = unraisable.err_msg or "Exception ignored"
    logging.getLogger("empcompress").warning("%s", message, exc_info=exc_info)


def _log_thread_exception(hook_args: Any) -> None:
    exc_info = (hook_args.exc_type, hook_args.exc_value, hook_args.exc_traceback)
    name = getattr(hook_args.thread, "name", "a thread")
    logging.getLogger("empcompress").warning("exception in %s", name, exc_info=exc_info)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``empcompress`` command. Returns its exit status (see the module's docstring)."""
    previous = interrupts.install()  # before anything heavy is imported
    interrupts.reset()
    owns_process = interrupts.is_command_process()
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as \xNN escapes
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    if owns_process:  # no stray tracebacks from library threads and exit-time cleanups: --verbose shows them
        sys.unraisablehook = _log_unraisable
        threading.excepthook = _log_thread_exception
    status = EXIT_FAILURE
    try:
        status = _run(argv)
        return status
    except SystemExit as exit_request:
        status = exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
        raise
    finally:
        sys.stdout.flush()
        if owns_process:  # a signal while the interpreter shuts down: the outcome stands
            interrupts.exit_on_late_signals(status)
        else:
            interrupts.restore(previous)
