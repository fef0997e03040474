"""Commands on a whole drive: ``scan``, ``compress`` (progress, signals, summary), ``verify DEST``,
``deposition``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import interrupts

if TYPE_CHECKING:
    pass
from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    _byte_progress,
    _printable,
    human_bytes,
)

# ---------------------------------------------------------------- drives: scan, compress, verify DEST

#: compress finished and every file is in the bag, but some movies were kept as they were (not converted).
EXIT_NOT_ALL_CONVERTED = 3
LOG_INTERVAL_SECONDS = 30.0


def _cmd_scan(args: argparse.Namespace) -> int:
    from ..cluster import machine_cores, machine_memory_bytes
    from ..scan import scan_drive
    from ..scan.predict import predict_memory

    plan = scan_drive(
        args.source,
        predict=not args.headers_only,
        n_sample_movies=args.sample_movies,
        n_sample_frames=args.sample_frames,
        n_workers=args.workers or machine_cores(),
    )
    memory = predict_memory(plan.files, memory_bytes=machine_memory_bytes(), n_cores=machine_cores())
    if args.json:
        document = plan.to_dict()
        document["memory"] = asdict(memory) if memory is not None else None
        print(json.dumps(document, indent=2, ensure_ascii=False))
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
    if memory is not None:
        _print_memory(memory)
    minutes = plan.expected_seconds / 60
    print(
        f"\nExpected: {human_bytes(plan.total_size_bytes)} -> "
        f"~{human_bytes(plan.expected_output_size_bytes)}, "
        f"~{minutes:.1f} min with {plan.n_workers_assumed} workers (scan took {plan.scan_seconds:.1f} s)"
    )
    return EXIT_OK


def _print_memory(memory: Any) -> None:
    threads = memory.threads_per_worker
    print(
        f"\nMemory: the largest conversion, {_printable(memory.largest_rel_path)} ({memory.frame_width}x"
        f"{memory.frame_height}, mode {memory.mode}), needs up to ~{human_bytes(memory.need_bytes)} "
        f"(a bound; README: Memory)"
    )
    print(
        f"  compress on this machine: {memory.n_workers} workers x {threads} "
        f"thread{'s' if threads != 1 else ''}, "
        f"{human_bytes(memory.worker_memory_bytes)} each: {memory.n_per_worker} at once per worker, "
        f"{memory.n_at_once} on the machine"
    )
    if memory.warning:
        print(f"  Warning: {memory.warning}")


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
        from ..pipeline import STAGE_REDOING, STAGE_SEALING, FileEvent, PlanEvent, StageEvent

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

        from ..cluster import ClusterOptions, open_cluster, parse_adapt
        from ..journal import ensure_not_locked
        from ..pipeline import CompressOptions, compress_drive, warm_up_worker
        from ..pipeline.memory import largest_need

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
        scanned = _scan_for_sizing(args, cluster_options, progress)
        largest = largest_need(scanned.files, threads=args.threads_per_task) if scanned is not None else None
        # stop signals are held back (not lost) while the cluster starts its workers, then acted on: a
        # worker process spawned as the program exits would print a traceback to the user's terminal
        with interrupts.stops_held():
            client, info = cluster.enter_context(
                open_cluster(cluster_options, worker_setup=warm_up_worker, largest_need=largest)
            )
        if not args.quiet:
            dashboard = f"; dashboard: {info.dashboard_link}" if info.dashboard_link else ""
            print(f"Running on {info.description}{dashboard}", file=sys.stderr, flush=True)
        for warning in info.warnings:
            print(f"Warning: {warning}", file=sys.stderr, flush=True)
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
                scanned=scanned,
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


def _scan_for_sizing(args: argparse.Namespace, cluster_options: Any, progress: _CompressProgress) -> Any:
    """The drive's scan, which a local cluster is sized by (its largest movie) and compress then
    uses; None for other clusters (the driver checks each task against their workers) or if SRC
    cannot be scanned (compress_drive then says why)."""
    from ..cluster import choose_connection
    from ..errors import EmpCompressError
    from ..scan import scan_drive

    if choose_connection(cluster_options, environ=os.environ)[0] != "local":
        return None
    progress._log(f"scanning {args.source} (the local workers are sized by its movies' frames)")
    try:
        return scan_drive(args.source, predict=False)
    except (EmpCompressError, OSError):
        return None


def _print_compress_summary(summary: Any) -> None:
    from ..report import display_path

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
    from ..manifest import payload_bytes_on_disk, verify_bag

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
    from ..deposition import DEPOSITION_JSON, write_deposition

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
