"""The compress job: a whole drive (SRC) to a verified, checksummed BagIt bag (DEST), on Dask.

DEST mirrors SRC's tree under ``DEST/data/``: every MRC movie becomes a verified
TIFF stack (``x.mrc`` -> ``x.tif``), every other file is copied byte for byte.
The driver (the process calling :func:`compress_drive`) scans SRC, compares the
plan with the journal, and hands the remaining work to the Dask cluster as one
task per file, a bounded number of tasks in flight (a few per worker thread), the
largest files first, collected with ``as_completed`` (dynamic scheduling: a big
movie never holds up the others). Only the driver writes the journal.

Safety rules:

- Every output is written under a temporary name in its final folder and renamed
  only once verified: ``convert_movie`` decodes the TIFF and compares it with the
  source; a copy is re-read and its sha256 compared. A task killed part-way (worker
  lost, ``kill -9``) leaves only a temporary file, which the next run removes before
  it starts; its task is retried on another worker by the scheduler.
- The journal row of a file is written after its output is in place, so a row in
  state ``done`` always describes a verified output (see :mod:`empcompress.journal`).
- Checksums are computed in the read pass that makes the output: the source's sha256
  by the conversion's survey pass or by the copy loop; the TIFF's sha256 and md5 come
  with the :class:`~empcompress.convert.ConversionResult`; a copy's from the copy loop.
- A movie that cannot be converted (corrupt, truncated, not really MRC, failed
  verification) is *kept as it is*: copied byte for byte and reported. A file that
  cannot even be copied is reported as failed and left out of the bag. Neither stops
  the run.
- Stopping (Ctrl-C, SIGTERM, ``stop`` event): queued tasks are cancelled, running
  ones see a stop file in ``DEST/.empcompress`` within a fraction of a second and
  abandon their temporary output; the journal keeps every finished file.
- Re-running the same command does only what is left: a file whose journal row is
  ``done`` with the same source size and mtime and whose output is present with the
  recorded size is not touched again. A changed source is redone; outputs of sources
  that disappeared are removed. A re-run over a finished DEST converts nothing.

Gain-normalised movies (with :mod:`empcompress.gain`, issue 3): the task of a float
movie first looks at its middle frame (integer counts: converted at once) and otherwise
classifies it from a few frames; a gain-normalised movie is handed back unconverted and
grouped with the others of its folder and frame size into a set; once every float movie
of a set is classified, one gain is estimated per set from a sample of its movies
(partial estimates computed in parallel and merged pairwise on the cluster), written
once as ``gain-reference.mrc`` in the set's folder in DEST, and the set's movies are
converted with it. A movie that does not fit its set's gain is converted without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import EmpCompressError, GainError, PipelineError, VerificationError
from .journal import (
    OUTCOME_CONVERTED,
    OUTCOME_COPIED,
    OUTCOME_KEPT_AS_IS,
    STATE_DIRNAME,
    STATE_DONE,
    STATE_FAILED,
    GeneratedEntry,
    Journal,
    JournalEntry,
    is_journal_dest,
)
from .manifest import PAYLOAD_DIRNAME, PayloadFile, remove_bag_declaration, write_bag
from .report import (
    CategoryReport,
    CompressSummary,
    DecisionReport,
    FileProblem,
    GainSetReport,
    bag_info_fields,
    write_reports,
)
from .scan import (
    ACTION_CONVERT,
    CATEGORIES,
    KIND_GAIN_NORMALISED,
    FileEntry,
    ScanPlan,
    gain_support,
    scan_drive,
)
from .write import TEMP_MARKER, commit_output, temporary_output

__all__ = [
    "CompressOptions",
    "FileTask",
    "FileOutcome",
    "PlanEvent",
    "FileEvent",
    "StageEvent",
    "PipelineEvent",
    "run_file_task",
    "warm_up_worker",
    "copy_with_digests",
    "sweep_temporaries",
    "compress_drive",
    "GAIN_REFERENCE_NAME",
]

COPY_CHUNK_BYTES = 8 << 20
STOP_CHECK_SECONDS = 0.2
STOP_GRACE_SECONDS = 60.0
GAIN_REFERENCE_NAME = "gain-reference.mrc"
FLOAT_MODES = (2, 12)
PRIORITY_GAIN = 5
#: Tasks handed to the scheduler ahead of the workers (small files finish in milliseconds; the
#: scheduler keeps the queue, so big movies are still taken dynamically by whichever worker is free).
MIN_IN_FLIGHT = 32
POLL_SECONDS = 0.01


@dataclass(frozen=True)
class CompressOptions:
    """Options of the compress job (all keyword-only in :func:`compress_drive`)."""

    codec: str = "auto"
    level: int | None = None
    threads_per_task: int = 1
    retries: int = 2  # re-runs of a task that raised unexpectedly (a lost worker is retried by the scheduler)
    gain_sets: bool = True  # estimate one gain per set of gain-normalised movies (needs empcompress.gain)
    gain_sample_movies: int = 8  # movies per set used to estimate its gain
    classify_sample_frames: int = 4
    max_in_flight: int | None = None  # default: 4 x worker threads, at least 32


# ---------------------------------------------------------------- tasks (run on workers)


@dataclass(frozen=True)
class FileTask:
    """One file to convert or copy. Paths are absolute and must be valid on the workers."""

    rel_path: str
    source_path: str
    output_path: str
    output_rel_path: str
    action: str
    category: str
    stop_path: str
    codec: str = "auto"
    level: int | None = None
    threads: int = 1
    gain_reference_path: str = ""
    gain_reference_rel_path: str = ""
    source_size_bytes: int = 0  # as scanned, for ordering and progress
    classify_first: bool = False  # float movie: stop before converting if it is gain-normalised
    classify_sample_frames: int = 4


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file (returned by the worker; errors are data, not exceptions)."""

    rel_path: str
    ok: bool
    outcome: str  # converted | copied | kept-as-is | "" (failed or stopped)
    output_rel_path: str
    message: str = ""
    stopped: bool = False
    needs_gain: bool = False  # gain-normalised: to be converted with its set's gain (nothing written)
    source_size_bytes: int = 0
    source_mtime_ns: int = 0
    source_sha256: str = ""
    output_size_bytes: int = 0
    output_sha256: str = ""
    output_md5: str = ""
    stored_dtype: str = ""
    decision: str = ""
    codec: str = ""
    gain_reference_rel_path: str = ""
    elapsed_seconds: float = 0.0
    worker: str = ""


class _StopRequestedError(Exception):
    """Raised inside a task when the driver asked the job to stop."""


class _StopCheck:
    """Progress callback that raises :class:`_StopRequestedError` once the stop file exists."""

    def __init__(self, stop_path: str) -> None:
        self.stop_path = stop_path
        self._last_check = 0.0

    def __call__(self, stage: str, n_bytes: int) -> None:
        now = time.monotonic()
        if now - self._last_check >= STOP_CHECK_SECONDS:
            self._last_check = now
            if os.path.exists(self.stop_path):
                raise _StopRequestedError()


def copy_with_digests(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[int, str, str]:
    """Copy ``source`` to ``output`` byte for byte; returns (size, sha256, md5).

    Both digests are computed while copying (one read of the source). The copy is
    written under a temporary name, re-read and compared (sha256) before it is
    renamed into place, with the source's modification time.
    """
    source, output = Path(source), Path(output)
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    size_bytes = 0
    buffer = bytearray(COPY_CHUNK_BYTES)
    view = memoryview(buffer)
    with temporary_output(output) as temporary:
        with open(source, "rb") as reader, open(temporary, "xb") as writer:
            status = os.fstat(reader.fileno())
            while n_read := reader.readinto(buffer):
                chunk = view[:n_read]
                writer.write(chunk)
                sha256.update(chunk)
                md5.update(chunk)
                size_bytes += n_read
                if progress is not None:
                    progress("copy", n_read)
        check = hashlib.sha256()
        with open(temporary, "rb") as reader:
            while n_read := reader.readinto(buffer):
                check.update(view[:n_read])
        if check.hexdigest() != sha256.hexdigest() or temporary.stat().st_size != size_bytes:
            raise VerificationError(
                f"{output}: the copy does not read back as written; check the destination disk"
            )
        os.utime(temporary, ns=(status.st_atime_ns, status.st_mtime_ns))
        commit_output(temporary, output)
    return size_bytes, sha256.hexdigest(), md5.hexdigest()


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _convert(task: FileTask, stop: _StopCheck, *, gain: str | None) -> Any:
    from .convert import convert_movie

    options: dict[str, Any] = {
        "codec": task.codec,
        "level": task.level,
        "threads": task.threads,
        "overwrite": True,
        "progress": stop,
    }
    if gain is not None:
        options["gain"] = gain
    return convert_movie(task.source_path, task.output_path, **options)


def run_file_task(task: FileTask) -> FileOutcome:
    """Convert or copy one file (runs on a worker). Never raises for a bad file."""
    started = time.perf_counter()
    stop = _StopCheck(task.stop_path)
    base = FileOutcome(
        rel_path=task.rel_path,
        ok=False,
        outcome="",
        output_rel_path=task.output_rel_path,
        worker=_worker_name(),
    )
    try:
        status = os.stat(task.source_path)
    except OSError as error:
        return replace(
            base, message=f"cannot be read ({error.strerror})", elapsed_seconds=time.perf_counter() - started
        )
    base = replace(base, source_size_bytes=status.st_size, source_mtime_ns=status.st_mtime_ns)
    try:
        if task.classify_first and _kind_of(task) == KIND_GAIN_NORMALISED:
            return replace(base, needs_gain=True, elapsed_seconds=time.perf_counter() - started)
        Path(task.output_path).parent.mkdir(parents=True, exist_ok=True)
        if task.action == ACTION_CONVERT:
            outcome = _convert_or_keep(task, stop, base)
        else:
            outcome = _copy(task, stop, base, outcome=OUTCOME_COPIED, message="")
    except _StopRequestedError:
        outcome = replace(base, stopped=True, message="stopped before it was finished")
    except (EmpCompressError, OSError) as error:
        outcome = replace(base, message=_error_text(error))
    return replace(outcome, elapsed_seconds=time.perf_counter() - started)


def _error_text(error: BaseException) -> str:
    if isinstance(error, OSError):
        return f"{error.filename or ''}: {error.strerror or error}".lstrip(": ")
    return str(error)


def _copy(task: FileTask, stop: _StopCheck, base: FileOutcome, *, outcome: str, message: str) -> FileOutcome:
    output_path = task.output_path
    output_rel_path = task.output_rel_path
    if outcome == OUTCOME_KEPT_AS_IS:
        output_rel_path = task.rel_path
        output_path = str(Path(task.output_path).parent / PurePosixPath(task.rel_path).name)
    size_bytes, sha256, md5 = copy_with_digests(task.source_path, output_path, progress=stop)
    return replace(
        base,
        ok=True,
        outcome=outcome,
        output_rel_path=output_rel_path,
        message=message,
        source_size_bytes=size_bytes,
        source_sha256=sha256,
        output_size_bytes=size_bytes,
        output_sha256=sha256,
        output_md5=md5,
    )


def _convert_or_keep(task: FileTask, stop: _StopCheck, base: FileOutcome) -> FileOutcome:
    gain = task.gain_reference_path or None
    note = ""
    try:
        try:
            result = _convert(task, stop, gain=gain)
        except GainError as error:
            if gain is None:
                raise
            note = f"did not fit its set's gain reference ({error}); converted without it"
            gain = None
            result = _convert(task, stop, gain=None)
    except _StopRequestedError:
        raise
    except Exception as error:  # fail closed: whatever went wrong, keep the original bytes
        reason = str(error) if isinstance(error, EmpCompressError) else f"{type(error).__name__}: {error}"
        return _copy(task, stop, base, outcome=OUTCOME_KEPT_AS_IS, message=f"not converted: {reason}")
    with contextlib.suppress(OSError):
        os.utime(task.output_path, ns=(base.source_mtime_ns, base.source_mtime_ns))
    decision = result.decision
    warnings = "; ".join(result.warnings)
    outcome = getattr(result, "gain", None)
    if gain and (outcome is None or getattr(outcome, "action", "") != "applied"):
        # convert_movie kept the values as floats: the set's gain did not fit this movie
        reason = getattr(outcome, "reason", "") or "the gain was not applied"
        note = f"did not fit its set's gain reference ({reason}); stored without it"
        gain = None
    return replace(
        base,
        ok=True,
        outcome=OUTCOME_CONVERTED,
        message="; ".join(part for part in (note, warnings) if part),
        source_size_bytes=result.source_size_bytes,
        source_sha256=result.source_sha256,
        output_size_bytes=result.output_size_bytes,
        output_sha256=result.output_sha256,
        output_md5=result.output_md5,
        stored_dtype=decision.stored_dtype,
        decision=decision.reason,
        codec=result.codec,
        gain_reference_rel_path=task.gain_reference_rel_path if gain else "",
    )


def warm_up_worker() -> None:
    """Import the conversion code and load its compiled kernels (run once per worker as it starts).

    Converts a tiny synthetic movie in a temporary folder, so that the first real
    task does not pay for imports and Numba's cache loading; with the gain module,
    its kernels are loaded too.
    """
    import tempfile

    import numpy as np

    from .convert import convert_movie

    with tempfile.TemporaryDirectory(prefix="empcompress-warm-up-") as directory:
        movie = Path(directory) / "warm-up.mrc"
        header = np.zeros(256, dtype="<i4")
        header[0:4] = (8, 8, 2, 2)  # nx, ny, nz, mode 2
        header[7:10] = (8, 8, 2)
        header.view("<f4")[10:13] = 8.0
        header[16:19] = (1, 2, 3)
        header.view("S4")[52] = b"MAP "
        header.view("u1")[212:214] = (0x44, 0x44)
        frames = np.arange(128, dtype="<f4").reshape(2, 8, 8) % 5
        movie.write_bytes(header.tobytes() + frames.tobytes())
        convert_movie(movie, Path(directory) / "warm-up.tif")
        gain = gain_support()
        if gain is not None:
            gain.classify_movie(movie, n_sample_frames=2)
            partial = gain.gain_partial_from_movie(movie)
            gain.finalize_gain(gain.merge_gain_partials(partial, partial))


def check_paths_task(paths: tuple[str, ...]) -> tuple[str, ...]:
    """The paths this worker cannot see (runs on a worker)."""
    return tuple(path for path in paths if not os.path.isdir(path))


# ---------------------------------------------------------------- gain tasks (run on workers)


def _kind_of(task: FileTask) -> str:
    """counts | gain-normalised | float, cheaply: one frame tells integer counts at once."""
    from . import kernels
    from .mrc import MrcMovie

    try:
        with MrcMovie(task.source_path) as movie:
            frame = movie.read_frame(movie.header.nz // 2)
            if frame.dtype.kind != "f" or kernels.float_frame_stats(frame)[0]:
                return "counts"
    except EmpCompressError:
        return "float"  # not readable as MRC: the conversion says why and keeps it as it is
    return classify_task(task.source_path, task.classify_sample_frames)


def classify_task(path: str, n_sample_frames: int) -> str:
    """counts | gain-normalised | float (runs on a worker; errors say float: converted as is)."""
    gain = gain_support()
    if gain is None:
        return "float"
    try:
        movie_class = gain.classify_movie(path, n_sample_frames=n_sample_frames)
    except EmpCompressError:
        return "float"
    kind = str(getattr(movie_class, "kind", movie_class)).lower().replace("_", "-")
    return KIND_GAIN_NORMALISED if kind.startswith("gain") else kind


def gain_partial_task(path: str, max_frames: int | None) -> Any:
    gain = gain_support()
    assert gain is not None
    return gain.gain_partial_from_movie(path, max_frames=max_frames)


def gain_merge_task(first: Any, second: Any) -> Any:
    gain = gain_support()
    assert gain is not None
    return gain.merge_gain_partials(first, second)


@dataclass(frozen=True)
class GainWriteResult:
    output_size_bytes: int
    output_sha256: str
    output_md5: str
    detail_json: str


def gain_write_task(partial: Any, output_path: str) -> GainWriteResult:
    """Finalize a merged partial and write the gain reference through a temporary name."""
    gain = gain_support()
    assert gain is not None
    estimate = gain.finalize_gain(partial)
    final = Path(output_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with temporary_output(final) as temporary:
        named = temporary.with_name(temporary.name + ".mrc")  # writers may insist on the suffix
        try:
            written_sha256 = gain.write_gain_reference(named, getattr(estimate, "gain", estimate))
            size_bytes = named.stat().st_size
            sha256, md5 = hashlib.sha256(), hashlib.md5()
            with open(named, "rb") as handle:
                while chunk := handle.read(COPY_CHUNK_BYTES):
                    sha256.update(chunk)
                    md5.update(chunk)
            if isinstance(written_sha256, str) and written_sha256 and written_sha256 != sha256.hexdigest():
                raise VerificationError(f"{final}: the gain reference does not read back as written")
            commit_output(named, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                named.unlink()
    detail = (
        {
            key: value
            for key, value in vars(estimate).items()
            if isinstance(value, (int, float, str, bool)) and not key.startswith("_")
        }
        if hasattr(estimate, "__dict__")
        else {}
    )
    return GainWriteResult(size_bytes, sha256.hexdigest(), md5.hexdigest(), json.dumps(detail, default=str))


# ---------------------------------------------------------------- events (for the CLI)


@dataclass(frozen=True)
class PlanEvent:
    """The plan of this run, once SRC is scanned and compared with the journal."""

    n_files: int
    n_todo: int
    n_up_to_date: int
    bytes_todo: int
    n_stale_removed: int
    n_not_touched: int
    n_temporaries_removed: int


@dataclass(frozen=True)
class FileEvent:
    """One file finished (or failed)."""

    rel_path: str
    outcome: str  # converted | copied | kept-as-is | failed
    source_size_bytes: int
    output_size_bytes: int
    message: str


@dataclass(frozen=True)
class StageEvent:
    """Something worth a line in the log (gain estimation, stopping, writing the bag)."""

    message: str


PipelineEvent = PlanEvent | FileEvent | StageEvent
EventCallback = Callable[[PipelineEvent], None]


# ---------------------------------------------------------------- the driver


def sweep_temporaries(dest: str | os.PathLike[str]) -> int:
    """Remove temporary files left in DEST by interrupted runs; returns how many."""
    removed = 0
    for directory, _, names in os.walk(dest):
        for name in names:
            if TEMP_MARKER in name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    removed += 1
    return removed


def _check_locations(source: Path, dest: Path) -> None:
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


def _up_to_date(entry: FileEntry, row: JournalEntry | None, payload: Path) -> bool:
    if row is None or row.state != STATE_DONE:
        return False
    if (row.source_size_bytes, row.source_mtime_ns, row.action) != (
        entry.size_bytes,
        entry.mtime_ns,
        entry.action,
    ):
        return False
    if row.outcome == OUTCOME_CONVERTED and row.output_rel_path != entry.output_rel_path:
        return False
    try:
        return (payload / row.output_rel_path).stat().st_size == row.output_size_bytes
    except OSError:
        return False


@dataclass
class _GainSet:
    folder: str
    frame_shape: tuple[int, int]
    output_rel_path: str = ""
    n_pending_classifications: int = 0
    members: list[FileTask] = field(default_factory=list)


class _Driver:
    """The as_completed loop: submits tasks in a window, records outcomes in the journal."""

    def __init__(
        self,
        *,
        client: Any,
        journal: Journal,
        dest: Path,
        options: CompressOptions,
        on_event: EventCallback,
        stop: threading.Event,
        stop_path: Path,
        planned_outputs: set[str],
    ) -> None:
        from distributed import as_completed

        self.client = client
        self.journal = journal
        self.dest = dest
        self.payload = dest / PAYLOAD_DIRNAME
        self.options = options
        self.on_event = on_event
        self.stop = stop
        self.stop_path = stop_path
        self.planned_outputs = planned_outputs
        self.queue: deque[tuple[str, Any]] = deque()
        self.in_flight: dict[Any, tuple[str, Any]] = {}
        self.completed = as_completed()
        self.counts: Counter[str] = Counter()
        self.bytes_read = 0
        self.bytes_written = 0
        self.gain_sets: dict[tuple[str, int, int], _GainSet] = {}
        self.gain_set_of: dict[str, tuple[str, int, int]] = {}
        self.previous_rows: dict[str, JournalEntry] = {}
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
        gain = gain_support() if self.options.gain_sets else None
        queued: list[FileTask] = []
        for task in tasks:
            entry = entries[task.rel_path]
            if (
                gain is not None
                and task.action == ACTION_CONVERT
                and entry.mode in FLOAT_MODES
                and not entry.header_error
            ):
                key = (entry.folder, entry.frame_height, entry.frame_width)
                gain_set = self.gain_sets.setdefault(
                    key, _GainSet(entry.folder, (entry.frame_height, entry.frame_width))
                )
                gain_set.n_pending_classifications += 1
                self.gain_set_of[task.rel_path] = key
                task = replace(
                    task, classify_first=True, classify_sample_frames=self.options.classify_sample_frames
                )
            queued.append(task)
        self._name_gain_references()
        for task in sorted(queued, key=lambda t: -t.source_size_bytes):
            self.queue.append(("file", task))

    def _name_gain_references(self) -> None:
        by_folder: dict[str, list[_GainSet]] = defaultdict(list)
        for gain_set in self.gain_sets.values():
            by_folder[gain_set.folder].append(gain_set)
        for folder, sets in by_folder.items():
            for gain_set in sets:
                name = GAIN_REFERENCE_NAME
                if len(sets) > 1:
                    name = f"gain-reference-{gain_set.frame_shape[1]}x{gain_set.frame_shape[0]}.mrc"
                rel = str(PurePosixPath(folder) / name) if folder else name
                if rel in self.planned_outputs:
                    rel = (
                        str(PurePosixPath(folder) / f"empcompress-{name}")
                        if folder
                        else f"empcompress-{name}"
                    )
                gain_set.output_rel_path = rel

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
        )
        self.journal.record(row)
        if (
            previous is not None
            and previous.output_rel_path != row.output_rel_path
            and row.state == STATE_DONE
        ):
            _remove_output(
                self.payload, previous.output_rel_path, keep=self.planned_outputs | {row.output_rel_path}
            )
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
        path = self.payload / gain_set.output_rel_path
        if known is not None and known.state == STATE_DONE and _size_is(path, known.output_size_bytes):
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
                kind="gain-reference",
                state=STATE_DONE,
                output_size_bytes=result.output_size_bytes,
                output_sha256=result.output_sha256,
                output_md5=result.output_md5,
                detail_json=json.dumps(
                    {
                        "folder": gain_set.folder,
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


def _size_is(path: Path, size_bytes: int) -> bool:
    try:
        return path.stat().st_size == size_bytes
    except OSError:
        return False


def _remove_output(payload: Path, rel_path: str, *, keep: set[str]) -> bool:
    """Remove one output of ours from the payload (never one that is planned)."""
    if not rel_path or rel_path in keep:
        return False
    path = payload / rel_path
    if not path.resolve().is_relative_to(payload.resolve()):
        return False
    try:
        path.unlink()
        return True
    except (FileNotFoundError, IsADirectoryError):
        return False


def _check_workers_see(client: Any, paths: Iterable[Path]) -> None:
    wanted = tuple(str(path) for path in paths)
    try:
        missing = client.submit(check_paths_task, wanted, pure=False).result()
    except Exception as error:
        raise PipelineError(f"the Dask cluster cannot run tasks ({type(error).__name__}: {error})") from None
    if missing:
        raise PipelineError(
            f"the Dask workers cannot see {', '.join(missing)}; SRC and DEST must be on a file system "
            f"shared by the workers, under the same paths"
        )


def _make_tasks(
    work: list[FileEntry], *, source: Path, payload: Path, options: CompressOptions, stop_path: Path
) -> list[FileTask]:
    return [
        FileTask(
            rel_path=entry.rel_path,
            source_path=str(source / entry.rel_path),
            output_path=str(payload / entry.output_rel_path),
            output_rel_path=entry.output_rel_path,
            action=entry.action,
            category=entry.category,
            stop_path=str(stop_path),
            codec=options.codec,
            level=options.level,
            threads=options.threads_per_task,
            source_size_bytes=entry.size_bytes,
        )
        for entry in work
    ]


def compress_drive(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    client: Any,
    options: CompressOptions | None = None,
    on_event: EventCallback | None = None,
    stop: threading.Event | None = None,
    cluster_description: str = "",
    dashboard_link: str = "",
) -> CompressSummary:
    """Compress the drive ``source`` into the bag ``dest`` on the Dask ``client``'s cluster.

    Returns the summary; the bag (manifests, bag-info, reports) is written unless
    the run was stopped (``stop`` set, or KeyboardInterrupt). Raises
    :class:`PipelineError` when the job cannot start (bad locations, DEST held by
    another run, workers that cannot see the files).
    """
    options = options or CompressOptions()
    emit: EventCallback = on_event or (lambda event: None)
    stop = stop or threading.Event()
    started_wall = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    started = time.perf_counter()
    source_path = Path(source).resolve()
    dest_path = Path(dest).absolute()
    dest_path = dest_path.parent.resolve() / dest_path.name
    _check_locations(source_path, dest_path)
    payload = dest_path / PAYLOAD_DIRNAME
    try:
        payload.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PipelineError(f"{payload}: cannot create the destination ({error.strerror})") from None
    with Journal.open(dest_path, source=str(source_path)) as journal:
        n_temporaries = sweep_temporaries(dest_path)
        for old in (dest_path / STATE_DIRNAME).glob("stop-*"):
            with contextlib.suppress(OSError):
                old.unlink()
        stop_path = dest_path / STATE_DIRNAME / f"stop-{secrets.token_hex(8)}"
        emit(StageEvent(f"scanning {source_path}"))
        plan = scan_drive(source_path, predict=False)
        entries = {entry.rel_path: entry for entry in plan.files}
        rows = journal.entries()
        planned_outputs = {entry.output_rel_path for entry in plan.files}
        n_stale = _forget_vanished(journal, rows, entries, payload, planned_outputs)
        lost_gains = _forget_lost_gain_references(journal, payload)
        work = [
            entry
            for entry in plan.files
            if not _up_to_date(entry, rows.get(entry.rel_path), payload)
            or rows[entry.rel_path].gain_reference in lost_gains
        ]
        n_up_to_date = len(plan.files) - len(work)
        emit(
            PlanEvent(
                n_files=len(plan.files),
                n_todo=len(work),
                n_up_to_date=n_up_to_date,
                bytes_todo=sum(entry.size_bytes for entry in work),
                n_stale_removed=n_stale,
                n_not_touched=len(plan.skipped),
                n_temporaries_removed=n_temporaries,
            )
        )
        driver = _Driver(
            client=client,
            journal=journal,
            dest=dest_path,
            options=options,
            on_event=emit,
            stop=stop,
            stop_path=stop_path,
            planned_outputs=planned_outputs,
        )
        driver.previous_rows = rows
        try:
            if work:
                remove_bag_declaration(dest_path)
                emit(StageEvent("checking that the workers see SRC and DEST (waits for the first worker)"))
                _check_workers_see(client, (source_path, payload))
                tasks = _make_tasks(
                    work, source=source_path, payload=payload, options=options, stop_path=stop_path
                )
                driver.plan_tasks(tasks, entries)
                driver.run()
        except KeyboardInterrupt:
            driver.interrupted = True
        finally:
            if driver.interrupted:
                driver.wind_down()
                sweep_temporaries(dest_path)
            with contextlib.suppress(OSError):
                stop_path.unlink()
        rows = journal.entries()
        generated = journal.generated_entries()
        bag_written = False
        n_orphans = 0
        if not driver.interrupted:
            emit(StageEvent("writing the bag's manifests and reports"))
            generated = _forget_unused_gain_references(journal, rows, generated, payload)
            n_orphans = _remove_orphans(payload, rows, generated, entries)
        summary = _summary(
            plan=plan,
            rows=rows,
            generated=generated,
            driver=driver,
            source=source_path,
            dest=dest_path,
            started_at=started_wall,
            elapsed_seconds=time.perf_counter() - started,
            n_up_to_date=n_up_to_date,
            n_stale=n_stale + n_orphans,
            cluster=cluster_description,
            dashboard_link=dashboard_link,
            bag_written=not driver.interrupted,
        )
        if not driver.interrupted:
            in_bag = [rows[name] for name in sorted(rows) if name in entries]
            done_generated = [entry for entry in generated.values() if entry.state == STATE_DONE]
            tag_files = write_reports(dest_path, summary=summary, entries=in_bag, generated=done_generated)
            payload_files = [
                PayloadFile(row.output_rel_path, row.output_size_bytes, row.output_sha256, row.output_md5)
                for row in in_bag
                if row.state == STATE_DONE
            ] + [
                PayloadFile(
                    entry.output_rel_path, entry.output_size_bytes, entry.output_sha256, entry.output_md5
                )
                for entry in done_generated
            ]
            write_bag(
                dest_path, payload=payload_files, bag_info=bag_info_fields(summary), tag_files=tag_files
            )
            bag_written = True
        return replace(summary, bag_written=bag_written, elapsed_seconds=time.perf_counter() - started)


def _forget_vanished(
    journal: Journal,
    rows: dict[str, JournalEntry],
    entries: dict[str, FileEntry],
    payload: Path,
    planned_outputs: set[str],
) -> int:
    """Remove the outputs and rows of sources that are no longer in SRC."""
    removed = 0
    for rel_path, row in list(rows.items()):
        if rel_path in entries:
            continue
        if row.state == STATE_DONE:
            _remove_output(payload, row.output_rel_path, keep=planned_outputs)
        journal.remove(rel_path)
        del rows[rel_path]
        removed += 1
    return removed


def _forget_lost_gain_references(journal: Journal, payload: Path) -> set[str]:
    """Gain references of ours that are no longer in DEST as written; their movies must be redone."""
    lost = set()
    for name, entry in journal.generated_entries().items():
        if entry.state != STATE_DONE or not _size_is(payload / name, entry.output_size_bytes):
            journal.remove_generated(name)
            lost.add(name)
    return lost


def _forget_unused_gain_references(
    journal: Journal, rows: dict[str, JournalEntry], generated: dict[str, GeneratedEntry], payload: Path
) -> dict[str, GeneratedEntry]:
    """Remove gain references no converted movie uses any more (after a complete run)."""
    used = {row.gain_reference for row in rows.values() if row.state == STATE_DONE and row.gain_reference}
    kept = {}
    for name, entry in generated.items():
        if name in used:
            kept[name] = entry
            continue
        journal.remove_generated(name)
        with contextlib.suppress(OSError):
            (payload / name).unlink()
    return kept


def _remove_orphans(
    payload: Path,
    rows: dict[str, JournalEntry],
    generated: dict[str, GeneratedEntry],
    entries: dict[str, FileEntry],
) -> int:
    """Remove payload files no journal row accounts for (outputs of earlier, interrupted attempts)."""
    expected = {
        row.output_rel_path for name, row in rows.items() if row.state == STATE_DONE and name in entries
    }
    expected |= {name for name, entry in generated.items() if entry.state == STATE_DONE}
    removed = 0
    for directory, _, names in os.walk(payload):
        for name in names:
            path = Path(directory) / name
            rel = path.relative_to(payload).as_posix()
            if rel not in expected:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
    return removed


def _summary(
    *,
    plan: ScanPlan,
    rows: dict[str, JournalEntry],
    generated: dict[str, GeneratedEntry],
    driver: _Driver,
    source: Path,
    dest: Path,
    started_at: str,
    elapsed_seconds: float,
    n_up_to_date: int,
    n_stale: int,
    cluster: str,
    dashboard_link: str,
    bag_written: bool,
) -> CompressSummary:
    planned = {entry.rel_path: entry for entry in plan.files}
    in_bag = [row for name, row in rows.items() if name in planned and row.state == STATE_DONE]
    categories = []
    for category in CATEGORIES:
        members = [entry for entry in plan.files if entry.category == category]
        outputs = [
            rows[e.rel_path] for e in members if e.rel_path in rows and rows[e.rel_path].state == STATE_DONE
        ]
        categories.append(
            CategoryReport(
                category=category,
                n_files=len(members),
                source_size_bytes=sum(entry.size_bytes for entry in members),
                output_size_bytes=sum(row.output_size_bytes for row in outputs),
            )
        )
    decisions: dict[tuple[str, str], list[JournalEntry]] = defaultdict(list)
    for row in in_bag:
        if row.outcome == OUTCOME_CONVERTED:
            stored = row.stored_dtype + (" (counts with a gain reference)" if row.gain_reference else "")
            decisions[(stored, row.codec)].append(row)
    decision_reports = tuple(
        DecisionReport(
            stored_dtype=stored,
            codec=codec,
            n_movies=len(members),
            source_size_bytes=sum(row.source_size_bytes for row in members),
            output_size_bytes=sum(row.output_size_bytes for row in members),
        )
        for (stored, codec), members in sorted(decisions.items())
    )
    gain_reports = []
    for name, entry in sorted(generated.items()):
        if entry.state != STATE_DONE:
            continue
        users = [row for row in in_bag if row.gain_reference == name]
        detail = entry.detail
        gain_reports.append(
            GainSetReport(
                output_rel_path=name,
                folder=str(detail.get("folder", "")),
                n_members=int(detail.get("n_members", len(users))),
                n_converted_with_gain=len(users),
                output_sha256=entry.output_sha256,
                detail=entry.detail_json,
            )
        )
    failures = tuple(
        FileProblem(name, row.message or "failed")
        for name, row in sorted(rows.items())
        if name in planned and row.state == STATE_FAILED
    )
    kept = tuple(
        FileProblem(row.rel_path, row.message or "kept as it was")
        for row in sorted(in_bag, key=lambda r: r.rel_path)
        if row.outcome == OUTCOME_KEPT_AS_IS
    )
    payload_size = sum(row.output_size_bytes for row in in_bag)
    payload_size += sum(entry.output_size_bytes for entry in generated.values() if entry.state == STATE_DONE)
    return CompressSummary(
        source=str(source),
        dest=str(dest),
        cluster=cluster,
        dashboard_link=dashboard_link,
        started_at=started_at,
        elapsed_seconds=elapsed_seconds,
        interrupted=driver.interrupted,
        n_files=len(plan.files),
        n_up_to_date=n_up_to_date,
        n_converted=driver.counts[OUTCOME_CONVERTED],
        n_copied=driver.counts[OUTCOME_COPIED],
        n_kept_as_is=driver.counts[OUTCOME_KEPT_AS_IS],
        n_failed=driver.counts["failed"],
        bytes_read=driver.bytes_read,
        bytes_written=driver.bytes_written,
        n_stale_removed=n_stale,
        source_size_bytes=sum(entry.size_bytes for entry in plan.files),
        payload_size_bytes=payload_size,
        categories=tuple(categories),
        decisions=decision_reports,
        gain_references=tuple(gain_reports),
        failures=failures,
        kept_as_is=kept,
        not_touched=tuple(FileProblem(item.rel_path, item.reason) for item in plan.skipped),
        bag_written=bag_written,
    )
