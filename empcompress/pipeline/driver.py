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
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import EmpCompressError, PipelineError
from ..journal import STATE_DONE, STATE_FAILED, GeneratedEntry, Journal, JournalEntry
from ..manifest import PAYLOAD_DIRNAME
from ..scan import ACTION_CONVERT, FileEntry, gain_support
from .events import EventCallback, FileEvent, StageEvent
from .layout import PayloadLayout
from .reconcile import remove_output
from .tasks import (
    FileOutcome,
    FileTask,
    GainWriteResult,
    gain_merge_task,
    gain_partial_task,
    gain_write_task,
    run_file_task,
)

__all__ = ["Driver", "DriverOptions", "GAIN_REFERENCE_NAME", "GENERATED_SET", "GENERATED_MOVIE"]

GAIN_REFERENCE_NAME = "gain-reference.mrc"
GENERATED_SET = "gain-reference"  # one per set of gain-normalised movies
GENERATED_MOVIE = "gain-reference-reoriented"  # one movie's re-oriented copy of its set's gain
FLOAT_MODES = (2, 12)
PRIORITY_GAIN = 5
#: Tasks handed to the scheduler ahead of the workers (small files finish in milliseconds; the
#: scheduler keeps the queue, so big movies are still taken dynamically by whichever worker is free).
MIN_IN_FLIGHT = 32
POLL_SECONDS = 0.01
STOP_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class DriverOptions:
    retries: int
    gain_sets: bool
    gain_sample_movies: int
    classify_sample_frames: int
    max_in_flight: int | None


@dataclass
class _GainSet:
    folder: str  # payload folder
    frame_shape: tuple[int, int]
    output_rel_path: str = ""
    n_pending_classifications: int = 0
    members: list[FileTask] = field(default_factory=list)


class Driver:
    """Submits tasks in a window and records outcomes in the journal."""

    def __init__(
        self,
        *,
        client: Any,
        journal: Journal,
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
        self.gain_sets: dict[tuple[str, int, int], _GainSet] = {}
        self.gain_set_of: dict[str, tuple[str, int, int]] = {}
        self.interrupted = False
        self._window = MIN_IN_FLIGHT
        self._window_checked = 0.0

    # ---------------------------------------------------------- submitting

    def window(self) -> int:
        if self.options.max_in_flight:
            return self.options.max_in_flight
        now = time.monotonic()
        if now - self._window_checked > 10:
            self._window_checked = now
            with contextlib.suppress(Exception):
                self._window = max(MIN_IN_FLIGHT, 4 * sum(self.client.nthreads().values()))
        return self._window

    def _submit(
        self, kind: str, payload: Any, function: Callable[..., Any], *args: Any, priority: int = 0
    ) -> None:
        future = self.client.submit(
            function, *args, pure=False, retries=self.options.retries, priority=priority
        )
        self.in_flight[future] = (kind, payload)
        self.completed.add(future)

    def refill(self) -> None:
        while self.queue and len(self.in_flight) < self.window() and not self.stop.is_set():
            kind, payload = self.queue.popleft()
            self._submit(kind, payload, run_file_task, payload)

    # ---------------------------------------------------------- planning the work

    def plan_tasks(self, tasks: list[FileTask], entries: dict[str, FileEntry]) -> None:
        """Queue the tasks; float movies are classified first and grouped into gain sets."""
        gain = gain_support() if self.options.gain_sets else None
        generated = self.journal.generated_entries()
        self.gain_sets.clear()  # a repair round plans afresh
        self.gain_set_of.clear()
        queued: list[FileTask] = []
        for task in tasks:
            entry = entries[task.rel_path]
            if (
                gain is not None
                and task.action == ACTION_CONVERT
                and entry.mode in FLOAT_MODES
                and not entry.header_error
                and not task.expected_source_sha256
            ):
                folder = str(PurePosixPath(task.output_rel_path).parent)
                folder = "" if folder == "." else folder
                key = (folder, entry.frame_height, entry.frame_width)
                gain_set = self.gain_sets.setdefault(
                    key, _GainSet(folder, (entry.frame_height, entry.frame_width))
                )
                gain_set.n_pending_classifications += 1
                self.gain_set_of[task.rel_path] = key
                own = self._name_generated(
                    generated,
                    kind=GENERATED_MOVIE,
                    match={"movie": task.rel_path},
                    folder=folder,
                    name=f"{PurePosixPath(task.output_rel_path).stem}.gain-reference.mrc",
                )
                task = replace(
                    task,
                    classify_first=True,
                    classify_sample_frames=self.options.classify_sample_frames,
                    own_gain_reference_path=str(self.payload / own),
                    own_gain_reference_rel_path=own,
                )
            queued.append(task)
        for gain_set in self.gain_sets.values():
            gain_set.output_rel_path = self._name_generated(
                generated,
                kind=GENERATED_SET,
                match={"folder": gain_set.folder, "frame_shape": list(gain_set.frame_shape)},
                folder=gain_set.folder,
                name=GAIN_REFERENCE_NAME,
            )
        for task in sorted(queued, key=lambda t: -t.source_size_bytes):
            self.queue.append(("file", task))

    def _name_generated(
        self,
        generated: dict[str, GeneratedEntry],
        *,
        kind: str,
        match: dict[str, Any],
        folder: str,
        name: str,
    ) -> str:
        """The journal's path for this generated file (stable), or a new one from the layout."""
        for path, entry in generated.items():
            detail = entry.detail
            matches = entry.kind == kind and all(detail.get(key) == value for key, value in match.items())
            if matches and self.layout.owner(path) == f"generated:{path}":
                return path
        identity = f"{kind}:{json.dumps(match, sort_keys=True)}"
        return self.layout.claim_generated(folder, name, identity=identity)

    # ---------------------------------------------------------- handling results

    def handle(self, future: Any) -> None:
        kind, payload = self.in_flight.pop(future)
        if kind == "file":
            self._handle_file(future, payload)
        elif kind == "gain":
            self._handle_gain(future, payload)

    def _handle_file(self, future: Any, task: FileTask) -> None:
        try:
            outcome: FileOutcome = future.result()
        except Exception as error:  # the task itself died: lost workers, out of memory, ...
            outcome = FileOutcome(
                rel_path=task.rel_path,
                ok=False,
                outcome="",
                output_rel_path=task.output_rel_path,
                message=f"the task failed on the cluster ({type(error).__name__}: {error}); "
                "run again to retry",
            )
        if task.classify_first and not outcome.stopped:
            self._classified(task, needs_gain=outcome.needs_gain)
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
            return
        if outcome.own_reference_written is not None:
            size_bytes, sha256, md5 = outcome.own_reference_written
            self.journal.record_generated(
                GeneratedEntry(
                    output_rel_path=task.own_gain_reference_rel_path,
                    kind=GENERATED_MOVIE,
                    state=STATE_DONE,
                    output_size_bytes=size_bytes,
                    output_sha256=sha256,
                    output_md5=md5,
                    detail_json=json.dumps({"movie": task.rel_path, "set": task.gain_reference_rel_path}),
                )
            )
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

    def _classified(self, task: FileTask, *, needs_gain: bool) -> None:
        """A float movie came back: converted already, or gain-normalised (then it waits for its set)."""
        gain_set = self.gain_sets[self.gain_set_of[task.rel_path]]
        gain_set.n_pending_classifications -= 1
        if needs_gain:
            gain_set.members.append(replace(task, classify_first=False))
        if gain_set.n_pending_classifications == 0 and gain_set.members:
            self._start_gain_set(gain_set)

    def _start_gain_set(self, gain_set: _GainSet) -> None:
        known = self.journal.generated_entries().get(gain_set.output_rel_path)
        if known is not None and known.state == STATE_DONE:
            self._convert_members(gain_set)
            return
        members = sorted(gain_set.members, key=lambda t: t.rel_path)
        n_sample = max(1, min(len(members), self.options.gain_sample_movies))
        step = len(members) / n_sample
        sample = [members[int(i * step)] for i in range(n_sample)]
        self.on_event(
            StageEvent(
                f"estimating the gain of {len(members)} gain-normalised movies in {gain_set.folder or '.'} "
                f"from {len(sample)} of them"
            )
        )
        level = [
            self.client.submit(gain_partial_task, task.source_path, None, pure=False, priority=PRIORITY_GAIN)
            for task in sample
        ]
        while len(level) > 1:
            merged = [
                self.client.submit(
                    gain_merge_task, level[i], level[i + 1], pure=False, priority=PRIORITY_GAIN
                )
                for i in range(0, len(level) - 1, 2)
            ]
            if len(level) % 2:
                merged.append(level[-1])
            level = merged
        path = self.payload / gain_set.output_rel_path
        self._submit("gain", gain_set, gain_write_task, level[0], str(path), priority=PRIORITY_GAIN)

    def _handle_gain(self, future: Any, gain_set: _GainSet) -> None:
        try:
            result: GainWriteResult = future.result()
        except Exception as error:
            message = (
                str(error) if isinstance(error, EmpCompressError) else f"{type(error).__name__}: {error}"
            )
            self.on_event(
                StageEvent(f"no gain for {gain_set.folder or '.'} ({message}); converting without one")
            )
            for task in gain_set.members:
                self.queue.appendleft(("file", task))
            return
        self.journal.record_generated(
            GeneratedEntry(
                output_rel_path=gain_set.output_rel_path,
                kind=GENERATED_SET,
                state=STATE_DONE,
                output_size_bytes=result.output_size_bytes,
                output_sha256=result.output_sha256,
                output_md5=result.output_md5,
                detail_json=json.dumps(
                    {
                        "folder": gain_set.folder,
                        "frame_shape": list(gain_set.frame_shape),
                        "n_members": len(gain_set.members),
                        "estimate": json.loads(result.detail_json),
                    }
                ),
            )
        )
        self.on_event(StageEvent(f"wrote {PAYLOAD_DIRNAME}/{gain_set.output_rel_path}"))
        self._convert_members(gain_set)

    def _convert_members(self, gain_set: _GainSet) -> None:
        path = str(self.payload / gain_set.output_rel_path)
        for task in sorted(gain_set.members, key=lambda t: t.source_size_bytes):
            self.queue.appendleft(
                (
                    "file",
                    replace(task, gain_reference_path=path, gain_reference_rel_path=gain_set.output_rel_path),
                )
            )

    # ---------------------------------------------------------- the loop

    def run(self) -> None:
        self.refill()
        while self.in_flight and not self.stop.is_set():
            if not self.completed.has_ready():
                time.sleep(POLL_SECONDS)
                continue
            for future in self.completed.next_batch(block=False):
                if future in self.in_flight:
                    self.handle(future)
            self.refill()
        if self.stop.is_set():
            self.interrupted = True
        elif self.queue:
            raise PipelineError("internal error: work left in the queue with nothing running")

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
                [f for f in futures if f.status == "pending" and self.in_flight[f][0] != "file"]
            )
        while self.in_flight and time.monotonic() < deadline:
            for future in list(self.in_flight):
                if future.status == "pending":
                    continue
                kind, payload = self.in_flight.pop(future)
                if kind == "file" and future.status == "finished":
                    with contextlib.suppress(Exception):
                        self.record(payload, future.result())
            time.sleep(0.05)
        with contextlib.suppress(Exception):
            self.client.cancel(list(self.in_flight))
        self.in_flight.clear()
