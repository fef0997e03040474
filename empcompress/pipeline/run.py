"""``compress_drive``: a whole drive (SRC) to an audited, sealed BagIt bag (DEST), on Dask.

The stages, each in its own module of this package:

1. **reconcile** (:mod:`.reconcile`): remove temporaries of interrupted runs, check
   the generated files against their sha256, draw the layout (:mod:`.layout`, journal
   names first), and compare each source with its journal row (size, mtime, ctime,
   inode; with ``recheck`` its sha256) to find the work;
2. **drive** (:mod:`.driver`, tasks in :mod:`.tasks`): convert and copy on the
   cluster, gain sets included; the journal records each finished file;
3. **seal** (:mod:`.seal`): remove what no row accounts for, write manifests and
   reports, audit the payload against the journal and every TIFF's dependencies;
   a failed audit redoes the affected files once, then seals (``bagit.txt``) only
   when everything is proven. Failures of this run (unreadable files and folders,
   I/O errors, lost workers) leave DEST unsealed, exit code 1, and the same
   command retries them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..cluster import WorkerSupply
from ..deposition.writer import RESEAL_MARKER
from ..errors import PipelineError
from ..journal import STATE_DIRNAME, GeneratedEntry, Journal, JournalEntry, is_journal_dest
from ..manifest import PAYLOAD_DIRNAME, BagProblem, remove_bag_declaration
from ..report import CompressSummary, FileProblem, bag_info_fields, write_reports
from ..scan import FileEntry, ScanPlan, scan_drive
from .driver import Driver, DriverOptions
from .events import STAGE_REDOING, STAGE_SEALING, EventCallback, PlanEvent, StageEvent
from .layout import PayloadLayout
from .reconcile import (
    check_generated,
    draw_layout,
    forget_unused_generated,
    forget_vanished,
    is_up_to_date,
    prune_empty_folders,
    remove_orphans,
    sweep_temporaries,
)
from .seal import audit_mapping, expected_payload, write_and_seal
from .summary import build_summary
from .tasks import FileTask, check_paths_task
from .watch import WorkerWatch

__all__ = ["CompressOptions", "compress_drive", "check_locations", "CHECK_PATHS_TIMEOUT_SECONDS"]

#: How long a worker may take to say whether it sees SRC and DEST once it has the check (a worker
#: whose file system hangs, e.g. a dead NFS mount, would never answer).
CHECK_PATHS_TIMEOUT_SECONDS = 120.0
CHECK_POLL_SECONDS = 0.5


@dataclass(frozen=True)
class CompressOptions:
    """Options of the compress job."""

    codec: str = "auto"
    level: int | None = None
    threads_per_task: int = 1
    retries: int = 2  # re-runs of a task that raised unexpectedly (a lost worker is retried by the scheduler)
    gain_sets: bool = True  # estimate one gain per set of gain-normalised movies
    gain_sample_movies: int = 8  # movies per set used to estimate its gain
    classify_sample_frames: int = 4
    max_in_flight: int | None = None  # default: 4 x worker threads, at least 32
    recheck: bool = False  # compare every source's sha256 with the journal, not only size and times


def check_locations(source: Path, dest: Path) -> None:
    """Refuse DEST inside SRC, SRC inside DEST, the same folder (paths already fully resolved)."""
    if not source.is_dir():
        raise PipelineError(f"{source}: not a folder; give the top folder of the drive to compress")
    if dest == source or dest.is_relative_to(source):
        raise PipelineError(f"{dest}: is inside the source {source}; choose a destination outside it")
    if source.is_relative_to(dest):
        raise PipelineError(f"{dest}: contains the source {source}; choose a destination outside it")
    if dest.exists() and not dest.is_dir():
        raise PipelineError(f"{dest}: exists and is not a folder; choose a new or empty folder")
    if dest.is_dir() and not is_journal_dest(dest) and not _only_our_empty_start(dest):
        raise PipelineError(
            f"{dest}: is not empty and was not made by empcompress; choose a new or empty folder "
            f"(nothing in it was changed)"
        )


def _only_our_empty_start(dest: Path) -> bool:
    """DEST is empty, or holds only what a run killed before its journal existed left: no files."""
    for child in dest.iterdir():
        if child.name not in (STATE_DIRNAME, PAYLOAD_DIRNAME) or not child.is_dir():
            return False
        if child.name == PAYLOAD_DIRNAME and any(path.is_file() for path in child.rglob("*")):
            return False
    return True


def _check_own_folders(dest: Path) -> None:
    """DEST's ``data/`` and ``.empcompress/`` are real folders of DEST, never links to elsewhere."""
    for name in (PAYLOAD_DIRNAME, STATE_DIRNAME):
        path = dest / name
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise PipelineError(
                f"{path}: is a symbolic link or not a folder; a destination's {name} must be a real folder "
                f"(nothing was changed); move it away and run the same command again"
            )


def _check_workers_see(client: Any, paths: tuple[Path, ...], *, stop: threading.Event) -> bool:
    """Refuse a cluster whose workers do not see ``paths`` (SRC and DEST's payload).

    Waits for the first worker, but not for one that cannot come (every batch job ended: see
    :class:`WorkerWatch`), nor for a worker that does not answer within
    :data:`CHECK_PATHS_TIMEOUT_SECONDS` of getting the check (a hung file system). Returns False
    when ``stop`` was set meanwhile (nothing checked), True when the workers see the paths.
    """
    from distributed import TimeoutError as NoAnswerYet  # asyncio's, not the builtin before Python 3.11

    wanted = tuple(str(path) for path in paths)
    future = client.submit(check_paths_task, wanted, pure=False)
    watch = WorkerWatch(client)
    on_worker, since = "", 0.0
    try:
        while True:
            try:
                missing = future.result(timeout=CHECK_POLL_SECONDS)
                break
            except NoAnswerYet:
                pass
            except Exception as error:
                raise PipelineError(
                    f"the Dask cluster cannot run tasks ({type(error).__name__}: {error}); check the "
                    f"cluster and run the same command again"
                ) from None
            if stop.is_set():
                return False
            if watch.all_gone():
                raise PipelineError(_no_worker_message(watch.last))
            worker = _worker_running(client, future.key)
            if worker != on_worker:
                on_worker, since = worker, time.monotonic()
            elif worker and time.monotonic() - since > CHECK_PATHS_TIMEOUT_SECONDS:
                host = worker.split("://")[-1].rsplit(":", 1)[0]
                raise PipelineError(
                    f"the Dask worker on {host} did not say within {CHECK_PATHS_TIMEOUT_SECONDS:.0f} s "
                    f"whether it sees {' and '.join(wanted)}: a file system there does not answer (an "
                    f"NFS server down?); check on that machine that both are mounted and readable "
                    f"(e.g. 'ls {wanted[-1]}'), then run the same command again (files finished so far "
                    f"are kept)"
                )
    finally:
        with contextlib.suppress(Exception):
            future.cancel()
    if missing:
        raise PipelineError(
            f"the Dask workers cannot see {', '.join(missing)}; SRC and DEST must be on a file system "
            f"shared by the workers, under the same paths"
        )
    return True


def _worker_running(client: Any, key: Any) -> str:
    """The address of the worker the task ``key`` was given to ("" while it waits for one)."""
    try:
        processing = client.processing()
    except Exception:
        return ""
    return next((worker for worker, keys in processing.items() if key in keys), "")


def _no_worker_message(supply: WorkerSupply | None) -> str:
    """Why the run stops before it started any work: no worker, and none coming."""
    ended = supply.jobs_ended if supply is not None else ""
    if ended:
        return (
            f"no Dask worker connected and none is coming: {ended}; fix that (the job settings are in "
            f"~/.config/dask/jobqueue.yaml), then run the same command again: it does the rest (files "
            f"finished so far are kept)"
        )
    return (
        "no Dask worker connected and none is coming (every batch job ended, or the cluster has no "
        "worker); once workers can start, run the same command again: it does the rest (files finished "
        "so far are kept)"
    )


def _task(
    entry: FileEntry,
    *,
    layout: PayloadLayout,
    source: Path,
    payload: Path,
    options: CompressOptions,
    stop_path: Path,
    expected_sha256: str = "",
) -> FileTask:
    output = layout.output_of(entry.rel_path)
    return FileTask(
        rel_path=entry.rel_path,
        source_path=str(source / entry.rel_path),
        output_path=str(payload / output),
        output_rel_path=output,
        kept_output_path=str(payload / layout.kept_output_of(entry.rel_path)),
        kept_output_rel_path=layout.kept_output_of(entry.rel_path),
        action=entry.action,
        category=entry.category,
        stop_path=str(stop_path),
        payload_root=str(payload),
        codec=options.codec,
        level=options.level,
        threads=options.threads_per_task,
        source_size_bytes=entry.size_bytes,
        expected_source_sha256=expected_sha256,
    )


def _redo_for(
    problems: tuple[BagProblem, ...], rows: dict[str, JournalEntry], entries: dict[str, FileEntry]
) -> set[str]:
    """The sources whose outputs (or the files their outputs need) an audit found wrong."""
    by_output = {f"{PAYLOAD_DIRNAME}/{row.output_rel_path}": name for name, row in rows.items()}
    redo = set()
    for problem in problems:
        if problem.rel_path in by_output:
            redo.add(by_output[problem.rel_path])
        for name, row in rows.items():
            if row.gain_reference and f"{PAYLOAD_DIRNAME}/{row.gain_reference}" == problem.rel_path:
                redo.add(name)
        if problem.rel_path in entries:  # a source with no row
            redo.add(problem.rel_path)
    return redo


def _write_reports(
    dest: Path, summary: CompressSummary, entries: list[JournalEntry], generated: list[GeneratedEntry]
) -> tuple[str, ...]:
    """The reports; a full or failing destination disk stops the run with one clear line."""
    try:
        return write_reports(dest, summary=summary, entries=entries, generated=generated)
    except OSError as error:
        where = error.filename or dest
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise PipelineError(
                f"{where}: the disk holding the destination is full ({error.strerror}); free space there "
                "and run the same command again (what is done is kept)"
            ) from None
        raise PipelineError(
            f"{where}: the reports could not be written ({error.strerror or error}); run the same "
            "command again (what is done is kept)"
        ) from None


def compress_drive(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    client: object,
    options: CompressOptions | None = None,
    on_event: EventCallback | None = None,
    stop: threading.Event | None = None,
    cluster_description: str = "",
    dashboard_link: str = "",
    scanned: ScanPlan | None = None,
) -> CompressSummary:
    """Compress the drive ``source`` into the bag ``dest`` on the Dask ``client``'s cluster.

    ``scanned``: the scan of ``source`` the caller already made (``scan_drive(source,
    predict=False)``, e.g. to size a local cluster by its largest movie): not scanned again.

    Returns the summary (``summary.complete`` and ``summary.exit_code`` say what was
    proven). Raises :class:`PipelineError` when the job cannot start (bad locations,
    DEST held by another run, workers that cannot see the files).
    """
    options = options or CompressOptions()
    emit: EventCallback = on_event or (lambda event: None)
    stop = stop or threading.Event()
    started_wall = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    started = time.perf_counter()
    source_path = Path(source).resolve()
    dest_path = Path(dest).resolve()  # DEST itself, symlinks included, not only its parent
    check_locations(source_path, dest_path)
    payload = dest_path / PAYLOAD_DIRNAME
    _check_own_folders(dest_path)
    try:
        payload.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"{payload}: cannot create the destination ({error.strerror})") from None
    with Journal.open(dest_path, source=str(source_path)) as journal:
        _check_own_folders(dest_path)  # again, now that no other run can change them
        remove_bag_declaration(dest_path)  # from here on DEST changes: it is not a bag until sealed again
        # this run decides whether the bag is sealed again, not an earlier `deposition` stopped midway
        (dest_path / STATE_DIRNAME / RESEAL_MARKER).unlink(missing_ok=True)
        n_temporaries = sweep_temporaries(dest_path)
        for old in (dest_path / STATE_DIRNAME).glob("stop-*"):
            with contextlib.suppress(OSError):
                old.unlink()
        stop_path = dest_path / STATE_DIRNAME / f"stop-{secrets.token_hex(8)}"
        if scanned is not None and Path(scanned.source).resolve() == source_path:
            plan = scanned
        else:
            emit(StageEvent(f"scanning {source_path}"))
            plan = scan_drive(source_path, predict=False)
        entries = {entry.rel_path: entry for entry in plan.files}
        rows = journal.entries()
        lost = check_generated(journal, payload)
        layout, displaced = draw_layout(plan.files, rows, journal.generated_entries())
        for name in displaced:
            journal.remove_generated(name)
        lost |= set(displaced)
        unreadable = tuple(item.rel_path for item in plan.skipped if item.unreadable)
        n_stale = forget_vanished(journal, rows, entries, payload, layout, unreadable=unreadable)
        prune_empty_folders(payload)
        # rows of files under a folder that could not be read this time are kept, with their outputs
        # (``rows`` is the journal now: forget_vanished removed the same rows from both)
        for name, kept in rows.items():
            if name not in entries and kept.output_rel_path:
                layout.reserve_kept(name, kept.output_rel_path)
        kept_names = set(entries) | set(rows)
        work: list[FileEntry] = []
        recheck: list[FileEntry] = []
        for entry in plan.files:
            row = rows.get(entry.rel_path)
            if not is_up_to_date(entry, row, payload, layout, lost):
                work.append(entry)
            elif options.recheck and row is not None and row.source_sha256:
                recheck.append(entry)
        n_up_to_date = len(plan.files) - len(work) - len(recheck)
        emit(
            PlanEvent(
                n_files=len(plan.files),
                n_todo=len(work) + len(recheck),
                n_up_to_date=n_up_to_date,
                bytes_todo=sum(entry.size_bytes for entry in work + recheck),
                n_stale_removed=n_stale,
                n_not_touched=sum(not item.unreadable for item in plan.skipped),
                n_temporaries_removed=n_temporaries,
                n_unreadable=sum(item.unreadable for item in plan.skipped),
            )
        )
        driver = Driver(
            client=client,
            journal=journal,
            source=source_path,
            dest=dest_path,
            layout=layout,
            options=DriverOptions(
                retries=options.retries,
                gain_sets=options.gain_sets,
                gain_sample_movies=options.gain_sample_movies,
                classify_sample_frames=options.classify_sample_frames,
                max_in_flight=options.max_in_flight,
            ),
            on_event=emit,
            stop=stop,
            stop_path=stop_path,
            previous_rows=rows,
        )

        def make_tasks(todo: list[FileEntry], checks: list[FileEntry]) -> list[FileTask]:
            def task(entry: FileEntry, expected_sha256: str = "") -> FileTask:
                return _task(
                    entry,
                    layout=layout,
                    source=source_path,
                    payload=payload,
                    options=options,
                    stop_path=stop_path,
                    expected_sha256=expected_sha256,
                )

            return [task(entry) for entry in todo] + [
                task(entry, rows[entry.rel_path].source_sha256) for entry in checks
            ]

        def drive(todo: list[FileEntry], checks: list[FileEntry]) -> None:
            failed = False
            try:
                if todo or checks:
                    emit(
                        StageEvent("checking that the workers see SRC and DEST (waits for the first worker)")
                    )
                    if _check_workers_see(client, (source_path, payload), stop=stop):
                        driver.plan_tasks(make_tasks(todo, checks), entries)
                        driver.run()
                    else:
                        driver.interrupted = True
            except KeyboardInterrupt:
                driver.interrupted = True
            except BaseException:  # the journal's disk is full, the cluster died, ...: stop the workers too
                failed = True
                raise
            finally:
                if failed:  # keep the error: what stopping the work raises meanwhile is not news
                    if driver.in_flight or driver.queue:
                        with contextlib.suppress(BaseException):
                            driver.wind_down()
                    with contextlib.suppress(OSError):
                        sweep_temporaries(dest_path)
                elif driver.interrupted:
                    driver.wind_down()
                    sweep_temporaries(dest_path)
                with contextlib.suppress(OSError):
                    stop_path.unlink()

        def summarise(
            rows: dict[str, JournalEntry],
            generated: dict[str, GeneratedEntry],
            *,
            sealed: bool,
            audit_problems: tuple[BagProblem, ...] = (),
        ) -> CompressSummary:
            return build_summary(
                plan=plan,
                rows=rows,
                generated=generated,
                driver=driver,
                source=source_path,
                dest=dest_path,
                started_at=started_wall,
                elapsed_seconds=time.perf_counter() - started,
                n_up_to_date=n_up_to_date,
                n_stale=n_stale,
                cluster=cluster_description,
                dashboard_link=dashboard_link,
                bag_written=not driver.interrupted,
                sealed=sealed,
                audit_problems=tuple(FileProblem(p.rel_path, p.problem) for p in audit_problems),
            )

        drive(work, recheck)
        del work, recheck  # the tasks are done: keep no per-file list longer than needed
        sealed = False
        audit_problems: tuple[BagProblem, ...] = ()
        for attempt in range(2):
            if driver.interrupted:
                break
            emit(
                StageEvent("auditing the payload and writing the bag's manifests and reports", STAGE_SEALING)
            )
            rows = journal.entries()
            generated = forget_unused_generated(journal, rows, journal.generated_entries(), payload)
            files = expected_payload(rows, generated, kept_names)
            remove_orphans(payload, {file.rel_path for file in files})
            summary = summarise(rows, generated, sealed=True)
            summary = replace(
                summary, sealed=not summary.failures
            )  # what the reports say if the audit passes
            in_bag = [rows[name] for name in sorted(rows) if name in entries]
            tag_files = _write_reports(dest_path, summary, in_bag, list(generated.values()))
            result = write_and_seal(
                dest_path,
                payload=files,
                bag_info=bag_info_fields(summary),
                tag_files=tag_files,
                mapping_problems=audit_mapping(rows, generated, entries),
                seal=not summary.failures,
            )
            audit_problems = result.problems
            sealed = result.sealed
            del files, in_bag
            if not audit_problems:
                break
            redo = _redo_for(audit_problems, rows, entries)
            if attempt == 1 or not redo:
                summary = summarise(rows, generated, sealed=False, audit_problems=audit_problems)
                in_bag = [rows[name] for name in sorted(rows) if name in entries]
                _write_reports(dest_path, summary, in_bag, list(generated.values()))
                emit(StageEvent(f"the audit found {len(audit_problems)} problems; the bag is not sealed"))
                break
            emit(
                StageEvent(
                    f"the audit found {len(audit_problems)} problems; redoing {len(redo)} files",
                    STAGE_REDOING,
                )
            )
            for name in redo:
                journal.remove(name)
            rows = driver.previous_rows = journal.entries()
            drive([entries[name] for name in sorted(redo) if name in entries], [])
            rows = {}  # read again below (after the redo), not held twice meanwhile
        if not rows or driver.interrupted:
            rows = journal.entries()
        return summarise(rows, journal.generated_entries(), sealed=sealed, audit_problems=audit_problems)
