"""The driver: the ``as_completed`` loop that submits tasks, runs gain sets, and records outcomes.

Runs in the process that called :func:`~empcompress.pipeline.run.compress_drive`;
it is the journal's only writer. Tasks are submitted in a window (a few per worker
thread), largest files first. A float movie's task first classifies it; a
gain-normalised movie comes back unconverted and waits for its set (same payload
folder and frame size); once every float movie of a set is classified, one gain is
estimated from a sample (partials merged pairwise on the cluster), written at the
path the layout gave the set, and the set's movies are converted with it. A movie
that the set's gain fits only in another orientation writes its own reference at
the path the layout gave that movie; both are recorded as generated files.

Memory: when every worker advertises the ``memory`` resource (workers empcompress
starts do; see :mod:`empcompress.cluster`), every task declares its need from
:mod:`.memory`, so that a worker runs only as many big conversions at once as fit; a
movie that needs more than any worker offers fails this run at once with what it
needs, instead of waiting for a worker forever.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..cluster import WorkerMemory, worker_memory
from ..errors import PipelineError
from ..journal import STATE_DONE, STATE_FAILED, Journal, JournalEntry
from ..manifest import PAYLOAD_DIRNAME
from ..scan import ACTION_CONVERT, CATEGORY_GAIN_REFERENCE, FileEntry, gain_support
from .batching import batch_limit, batch_outcomes, fetch_results, is_batchable, n_files, take_batch
from .events import EventCallback, FileEvent, StageEvent
from .gain_groups import GENERATED_SET, ORIGIN_DEPOSITOR, ORIGIN_ESTIMATED, Candidate, GainGrouper
from .layout import PayloadLayout
from .memory import (
    COPY_NEED_BYTES,
    TaskNeed,
    describe_need,
    entry_need,
    task_resources,
)
from .reconcile import remove_output
from .tasks import FileOutcome, FileTask, failed_outcome, lost_task_message, run_file_batch, run_file_task
from .watch import WorkerWatch

__all__ = ["Driver", "DriverOptions", "GAIN_REFERENCE_NAME", "GENERATED_SET", "GENERATED_MOVIE"]

GAIN_REFERENCE_NAME = "gain-reference.mrc"
#: one movie's re-oriented copy of its set's gain: written by 0.2.0 runs; now a record names the
#: group's reference with the movie's orientation instead (old ones are still read and cleaned up)
GENERATED_MOVIE = "gain-reference-reoriented"
FLOAT_MODES = (2, 12)
#: Tasks handed to the scheduler ahead of the workers (small files finish in milliseconds; the
#: scheduler keeps the queue, so big movies are still taken dynamically by whichever worker is free).
MIN_IN_FLIGHT = 32
POLL_SECONDS = 0.01
#: The journal commits the rows of what finished at most this often (a commit syncs its disk: on a
#: shared file system under load, tens of milliseconds each); a crash loses at most these rows, whose
#: outputs the next run redoes.
COMMIT_SECONDS = 2.0
STOP_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class DriverOptions:
    retries: int
    gain_sets: bool
    gain_sample_movies: int
    classify_sample_frames: int
    max_in_flight: int | None


class Driver:
    """Submits tasks in a window and records outcomes in the journal."""

    def __init__(
        self,
        *,
        client: Any,
        journal: Journal,
        source: Path,
        dest: Path,
        layout: PayloadLayout,
        options: DriverOptions,
        on_event: EventCallback,
        stop: threading.Event,
        stop_path: Path,
        previous_rows: dict[str, JournalEntry],
    ) -> None:
        from distributed import as_completed

        self.client = client
        self.journal = journal
        self.dest = dest
        self.payload = dest / PAYLOAD_DIRNAME
        self.source_root = Path(source)
        self.layout = layout
        self.options = options
        self.on_event = on_event
        self.stop = stop
        self.stop_path = stop_path
        self.previous_rows = previous_rows
        self.queue: deque[tuple[str, Any]] = deque()
        self.in_flight: dict[Any, tuple[str, Any]] = {}
        self.completed = as_completed()
        self.counts: Counter[str] = Counter()
        self.bytes_read = 0
        self.bytes_written = 0
        self.grouper: GainGrouper | None = None
        #: depositor gain references copied by this run: None while pending, then whether it worked
        self.reference_copies: dict[str, bool | None] = {}
        self.interrupted = False
        self._window = MIN_IN_FLIGHT
        self._window_checked = 0.0
        self._n_threads = 1  # the workers' threads, as last seen (sizes the batches)
        self.worker_watch = WorkerWatch(client)
        #: each file's declared memory, and what the workers offer (see .memory)
        self.needs: dict[str, TaskNeed] = {}
        self.worker_memory = WorkerMemory(declare=False, largest_worker_bytes=0, source="")

    # ---------------------------------------------------------- submitting

    def window(self) -> int:
        if self.options.max_in_flight:
            return self.options.max_in_flight
        now = time.monotonic()
        if now - self._window_checked > 10:
            self._window_checked = now
            with contextlib.suppress(Exception):
                self._n_threads = max(1, sum(self.client.nthreads().values()))
                self._window = max(MIN_IN_FLIGHT, 4 * self._n_threads)
        return self._window

    def _submit(
        self,
        kind: str,
        payload: Any,
        function: Callable[..., Any],
        *args: Any,
        priority: int = 0,
        need_bytes: int | None = None,
    ) -> None:
        future = self.client.submit(
            function,
            *args,
            pure=False,
            retries=self.options.retries,
            priority=priority,
            resources=self._resources(kind, payload, need_bytes),
        )
        self.in_flight[future] = (kind, payload)
        self.completed.add(future)

    def _resources(self, kind: str, payload: Any, need_bytes: int | None = None) -> dict[str, float] | None:
        """The task's declared memory (None when the workers do not advertise memory)."""
        if need_bytes is None:
            need = self.needs.get(payload.rel_path) if kind == "file" else None
            need_bytes = need.need_bytes if need is not None else COPY_NEED_BYTES
        return self._declare(need_bytes)

    def _declare(self, need_bytes: int) -> dict[str, float] | None:
        """Resources for a task needing ``need_bytes``; a gain task's need is capped at the largest
        worker, so that it cannot wait forever (its movies would otherwise never be grouped)."""
        if not self.worker_memory.declare:
            return None
        return task_resources(min(need_bytes, self.worker_memory.largest_worker_bytes))

    def _too_big(self, need: TaskNeed) -> str:
        """Why a file is not converted this run: it needs more memory than any worker has ("" if it fits)."""
        largest = self.worker_memory.largest_worker_bytes
        if not self.worker_memory.declare or need.need_bytes <= largest:
            return ""
        return (
            f"not converted this run: {describe_need(need)} to convert, more than any Dask worker offers "
            f"({largest / 2**30:.1f} GiB, {self.worker_memory.source}); give the workers more memory "
            f"(--memory-limit for a local cluster; for --cluster the job's 'memory' in jobqueue.yaml, or "
            f"fewer 'processes' per job) and run the same command again"
        )

    def refill(self) -> None:
        while self.queue and len(self.in_flight) < self.window() and not self.stop.is_set():
            kind, payload = self.queue.popleft()
            if is_batchable(kind, payload):  # small files to copy: many per task (see .batching)
                batch = take_batch(
                    self.queue, payload, max_files=batch_limit(len(self.queue) + 1, self._n_threads)
                )
                if len(batch) > 1:
                    self._submit("batch", batch, run_file_batch, tuple(batch))
                    continue
            self._submit(kind, payload, run_file_task, payload)

    # ---------------------------------------------------------- planning the work

    def plan_tasks(self, tasks: list[FileTask], entries: dict[str, FileEntry]) -> None:
        """Queue the tasks; float movies are classified first, and gain-normalised ones grouped."""
        gain = gain_support() if self.options.gain_sets else None
        self.grouper = self._new_grouper(tasks, entries) if gain is not None else None
        self.worker_memory = worker_memory(self.client)
        queued: list[FileTask] = []
        for task in tasks:
            entry = entries[task.rel_path]
            need = entry_need(entry, threads=task.threads)
            if need.need_bytes != COPY_NEED_BYTES:  # conversions only: not a row per copied file
                self.needs[task.rel_path] = need
            too_big = self._too_big(need)
            if too_big:
                self._fail(task, too_big)
                continue
            if (
                self.grouper is not None
                and task.action == ACTION_CONVERT
                and entry.mode in FLOAT_MODES
                and not entry.header_error
                and not task.expected_source_sha256
            ):
                self.grouper.expect(task, (entry.frame_height, entry.frame_width))
                task = replace(
                    task, classify_first=True, classify_sample_frames=self.options.classify_sample_frames
                )
            queued.append(task)
        for task in sorted(queued, key=lambda t: -t.source_size_bytes):
            self.queue.append(("file", task))

    def _new_grouper(self, tasks: list[FileTask], entries: dict[str, FileEntry]) -> GainGrouper:
        """The grouper, with every gain reference that may fit: the drive's and our earlier ones."""
        grouper = GainGrouper(
            client=self.client,
            submit=self._submit,
            resources=self._declare,
            enqueue=lambda task: self.queue.appendleft(("file", task)),
            fail=self._fail,
            name_reference=self._name_group_reference,
            record_reference=self.journal.record_generated,
            copy_done=lambda rel_path: self.reference_copies.get(rel_path, True),
            payload=self.payload,
            sample_movies=self.options.gain_sample_movies,
            classify_sample_frames=self.options.classify_sample_frames,
            on_event=self.on_event,
        )
        this_run = {task.rel_path for task in tasks}
        rows = self.previous_rows  # the journal as this drive starts (not read again: a row per file)
        self.reference_copies = {}
        for entry in sorted(entries.values(), key=lambda e: e.rel_path):
            if entry.category != CATEGORY_GAIN_REFERENCE or entry.mode != 2 or entry.n_frames != 1:
                continue  # restore reads float32 MRC references; other formats are copied only
            row = rows.get(entry.rel_path)
            if entry.rel_path in this_run:
                self.reference_copies[entry.rel_path] = None
            elif row is None or row.state != STATE_DONE:
                continue
            output = self.layout.output_of(entry.rel_path)
            grouper.candidates.append(
                Candidate(output, str(self.source_root / entry.rel_path), ORIGIN_DEPOSITOR, entry.rel_path)
            )
        for path, generated in sorted(self.journal.generated_entries().items()):
            if generated.kind == GENERATED_SET and generated.state == STATE_DONE:
                grouper.candidates.append(Candidate(path, str(self.payload / path), ORIGIN_ESTIMATED))
        return grouper

    def _name_group_reference(self, folder: str, identity: dict[str, Any]) -> str:
        """A new payload path for a group's reference (never one an earlier group's TIFFs name)."""
        key = f"{GENERATED_SET}:{json.dumps(identity, sort_keys=True)}:{time.time_ns()}"
        return self.layout.claim_generated(folder, GAIN_REFERENCE_NAME, identity=key)

    # ---------------------------------------------------------- handling results

    def handle(self, future: Any, result: Any = None) -> None:
        """Record what ``future`` did; ``result``: a batch's outcomes when already fetched."""
        kind, payload = self.in_flight.pop(future)
        if kind == "file":
            self._handle_file(future, payload)
        elif kind == "batch":
            for task, outcome in batch_outcomes(future, payload, result=result):
                self.record(task, outcome)
        elif kind == "gain" and self.grouper is not None:
            self.grouper.handle(payload, future)

    def _handle_file(self, future: Any, task: FileTask) -> None:
        try:
            outcome: FileOutcome = future.result()
        except Exception as error:  # the task itself died: lost workers, out of memory, ...
            outcome = failed_outcome(task, lost_task_message(error))
        if task.classify_first and not outcome.stopped and self.grouper is not None:
            self.grouper.classified(task, needs_gain=outcome.needs_gain)
        if not outcome.needs_gain:
            self.record(task, outcome)

    def record(self, task: FileTask, outcome: FileOutcome) -> None:
        if outcome.stopped or outcome.needs_gain:
            self.counts["stopped"] += 1
            return
        previous = self.previous_rows.get(task.rel_path)
        if outcome.unchanged and previous is not None:
            self.journal.record(
                replace(
                    previous,
                    source_size_bytes=outcome.source_size_bytes,
                    source_mtime_ns=outcome.source_mtime_ns,
                    source_ctime_ns=outcome.source_ctime_ns,
                    source_inode=outcome.source_inode,
                )
            )
            self.counts["unchanged"] += 1
            self.on_event(FileEvent(task.rel_path, "unchanged", outcome.source_size_bytes, 0, ""))
            self._reference_copy_recorded(task.rel_path, ok=previous.state == STATE_DONE)
            return
        row = JournalEntry(
            rel_path=task.rel_path,
            category=task.category,
            action=task.action,
            state=STATE_DONE if outcome.ok else STATE_FAILED,
            source_size_bytes=outcome.source_size_bytes,
            source_mtime_ns=outcome.source_mtime_ns,
            output_rel_path=outcome.output_rel_path,
            source_sha256=outcome.source_sha256,
            outcome=outcome.outcome,
            output_size_bytes=outcome.output_size_bytes,
            output_sha256=outcome.output_sha256,
            output_md5=outcome.output_md5,
            stored_dtype=outcome.stored_dtype,
            decision=outcome.decision,
            codec=outcome.codec,
            gain_reference=outcome.gain_reference_rel_path,
            message=outcome.message,
            attempts=(previous.attempts if previous else 0) + 1,
            elapsed_seconds=outcome.elapsed_seconds,
            source_ctime_ns=outcome.source_ctime_ns,
            source_inode=outcome.source_inode,
        )
        self.journal.record(row)
        self._reference_copy_recorded(task.rel_path, ok=row.state == STATE_DONE)
        if (
            previous is not None
            and previous.output_rel_path != row.output_rel_path
            and row.state == STATE_DONE
        ):
            remove_output(self.payload, previous.output_rel_path, layout=self.layout)
        label = outcome.outcome if outcome.ok else "failed"
        self.counts[label] += 1
        self.bytes_read += outcome.source_size_bytes if outcome.ok else 0
        self.bytes_written += outcome.output_size_bytes if outcome.ok else 0
        self.on_event(
            FileEvent(
                task.rel_path, label, outcome.source_size_bytes, outcome.output_size_bytes, outcome.message
            )
        )

    # ---------------------------------------------------------- the loop

    def _release_waiting(self) -> bool:
        """Movies still waiting for a reference copy that never came back fail this run (the next run
        tries again); returns whether work is left to wait for."""
        if self.grouper is not None:
            self.grouper.fail_waiting()
        self.refill()
        return bool(self.in_flight)

    def _fail(self, task: FileTask, message: str) -> None:
        """A movie whose gain group could not be decided this run: a failure, retried by the next."""
        self.record(task, failed_outcome(task, message))

    def _reference_copy_recorded(self, rel_path: str, *, ok: bool) -> None:
        if rel_path in self.reference_copies and self.grouper is not None:
            self.reference_copies[rel_path] = ok
            self.grouper.copy_recorded(rel_path, ok=ok)

    def run(self) -> None:
        self.refill()
        while (self.in_flight or self._release_waiting()) and not self.stop.is_set():
            # the rows of everything that finishes in the next COMMIT_SECONDS: one commit (each commit
            # syncs the journal's disk several times); whatever was recorded is committed however the
            # block ends, and a row is recorded only once its output is in place and durable
            with self.journal.batch():
                self._run_for(COMMIT_SECONDS)
        if self.stop.is_set():
            self.interrupted = True
        elif self.queue:
            raise PipelineError("internal error: work left in the queue with nothing running")

    def _run_for(self, seconds: float) -> None:
        """Record what finishes and submit more, for about ``seconds``."""
        deadline = time.monotonic() + seconds
        while (self.in_flight or self._release_waiting()) and not self.stop.is_set():
            if not self.completed.has_ready():
                if self.worker_watch.all_gone():
                    self._no_worker_left()
                if time.monotonic() >= deadline:
                    return
                time.sleep(POLL_SECONDS)
                continue
            ready = [f for f in self.completed.next_batch(block=False) if f in self.in_flight]
            batches = [f for f in ready if self.in_flight[f][0] == "batch"]
            results = fetch_results(self.client, batches)  # one round trip for all of them
            for future in ready:
                if future in self.in_flight:
                    self.handle(future, results.get(future))
            self.refill()
            if time.monotonic() >= deadline:
                return

    def _no_worker_left(self) -> None:
        """Every worker is gone and none is coming (batch jobs ended): stop, saying what ended them
        where the cluster's job watch knows it; the journal keeps what finished and the same command
        does the rest."""
        n_left = n_files(self.in_flight.values()) + n_files(self.queue)
        with contextlib.suppress(Exception):
            self.client.cancel(list(self.in_flight))
        self.in_flight.clear()
        self.queue.clear()
        supply = self.worker_watch.last
        gone = supply.jobs_gone if supply is not None else ""
        why = f": {gone};" if gone else " (their processes or batch jobs ended);"
        raise PipelineError(
            f"no Dask worker is left and none is coming{why} "
            f"the files finished so far are kept; run the same command again to finish the other {n_left} "
            f"(with --adapt MIN:MAX new jobs replace those that end; see the README on job time limits)"
        )

    def wind_down(self) -> None:
        """After a stop: cancel queued tasks, let running ones notice the stop file, keep finished ones."""
        self.interrupted = True
        self.queue.clear()
        with contextlib.suppress(OSError):
            self.stop_path.touch()
        self.on_event(StageEvent("stopping: waiting for running tasks to abandon their work"))
        futures = list(self.in_flight)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        with contextlib.suppress(Exception):
            self.client.cancel(
                [
                    f
                    for f in futures
                    if f.status == "pending" and self.in_flight[f][0] not in ("file", "batch")
                ]
            )
        while self.in_flight and time.monotonic() < deadline:
            for future in list(self.in_flight):
                if future.status == "pending":
                    continue
                kind, payload = self.in_flight.pop(future)
                if kind == "file" and future.status == "finished":
                    with contextlib.suppress(Exception):
                        self.record(payload, future.result())
                elif kind == "batch" and future.status == "finished":
                    with contextlib.suppress(Exception):
                        for task, outcome in batch_outcomes(future, payload):
                            self.record(task, outcome)
            time.sleep(0.05)
        with contextlib.suppress(Exception):
            self.client.cancel(list(self.in_flight))
        self.in_flight.clear()
