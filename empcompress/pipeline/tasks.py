"""The tasks that run on Dask workers: convert or copy one file, classify a float movie, gain partials.

A task writes only the payload paths the driver gave it (see :mod:`.layout`) and
returns what happened as data (:class:`FileOutcome`); it never raises for a bad
file and never touches the journal. Failures are classified:

- a property of the data (the file is not readable as MRC, truncated, an
  unsupported mode, or its TIFF does not reproduce it) keeps the original bytes:
  the movie is copied byte for byte, ``kept-as-is``, and that is final;
- anything else (an I/O error on a flaky drive, out of memory, the source changed
  while it was read, a full destination) is a *failure of this run*: nothing is
  recorded as done, the next run retries it, and the exit code says so.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from ..cluster.warm_up import after_warm_up
from ..errors import EmpCompressError, GainError, InputError, VerificationError
from ..files import (
    commit_output,
    file_digests,
    file_sha256,
    open_regular,
    sync_file_system,
    temporary_output,
)
from ..frame_buffers import trimming_idle_frame_buffers
from ..journal import OUTCOME_CONVERTED, OUTCOME_COPIED, OUTCOME_KEPT_AS_IS
from ..scan import ACTION_CONVERT, KIND_GAIN_NORMALISED, gain_support

__all__ = [
    "FileTask",
    "FileOutcome",
    "failed_outcome",
    "lost_task_message",
    "run_file_task",
    "run_file_batch",
    "copy_with_digests",
    "warm_up_worker",
    "check_paths_task",
    "classify_task",
    "StopRequestedError",
]

COPY_CHUNK_BYTES = 8 << 20
STOP_CHECK_SECONDS = 0.2


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
    kept_output_path: str = ""  # where a movie that cannot be converted is copied as it is
    kept_output_rel_path: str = ""
    payload_root: str = ""
    codec: str = "auto"
    level: int | None = None
    threads: int = 1
    gain_reference_path: str = ""  # its gain group's reference (absolute), to convert with
    gain_reference_rel_path: str = ""
    source_size_bytes: int = 0  # as scanned, for ordering and progress
    classify_first: bool = False  # float movie: stop before converting if it is gain-normalised
    classify_sample_frames: int = 4
    expected_source_sha256: str = ""  # recheck: only hash the source; redo only if it differs
    #: a copy in a batch: renamed without fsync; the batch makes its files durable at once
    defer_sync: bool = False
    gain_note: str = ""  # gain-normalised but no gain group took it: why (said in the outcome)


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
    unchanged: bool = False  # recheck: the source's sha256 is the journal's (nothing written)
    source_size_bytes: int = 0
    source_mtime_ns: int = 0
    source_ctime_ns: int = 0
    source_inode: int = 0
    source_sha256: str = ""
    output_size_bytes: int = 0
    output_sha256: str = ""
    output_md5: str = ""
    stored_dtype: str = ""
    decision: str = ""
    codec: str = ""
    gain_reference_rel_path: str = ""  # payload path of the reference the TIFF's record names
    elapsed_seconds: float = 0.0
    worker: str = ""


def failed_outcome(task: FileTask, message: str) -> FileOutcome:
    """The outcome of a file that failed this run (nothing written; the next run retries it)."""
    return FileOutcome(
        rel_path=task.rel_path, ok=False, outcome="", output_rel_path=task.output_rel_path, message=message
    )


def lost_task_message(error: BaseException) -> str:
    """Why a task that died on the cluster (a lost worker, out of memory, ...) has no outcome."""
    return f"the task failed on the cluster ({type(error).__name__}: {error}); run again to retry"


class StopRequestedError(Exception):
    """Raised inside a task when the driver asked the job to stop."""


class _StopCheck:
    """Progress callback that raises :class:`StopRequestedError` once the stop file exists."""

    def __init__(self, stop_path: str) -> None:
        self.stop_path = stop_path
        self._last_check = 0.0

    def __call__(self, stage: str, n_bytes: int) -> None:
        now = time.monotonic()
        if now - self._last_check >= STOP_CHECK_SECONDS:
            self._last_check = now
            if os.path.exists(self.stop_path):
                raise StopRequestedError()


def copy_with_digests(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    progress: Callable[[str, int], None] | None = None,
    durable: bool = True,
) -> tuple[int, str, str]:
    """Copy ``source`` to ``output`` byte for byte; returns (size, sha256, md5).

    Both digests are computed while copying (one read of the source). The copy is
    written under a temporary name, re-read and compared (sha256) before it is
    renamed into place, with the source's modification time.
    """
    import hashlib

    sha256, md5 = hashlib.sha256(), hashlib.md5()
    size_bytes = 0
    with temporary_output(output) as temporary:
        # unbuffered writer: no isatty/seek probes per file (an EPU drive has 100,000 small ones)
        with open_regular(source) as reader, open(temporary, "xb", buffering=0) as writer:
            status = os.fstat(reader.fileno())
            # a small file gets a small buffer: zeroing 8 MiB per file cost more than copying it
            buffer = bytearray(min(COPY_CHUNK_BYTES, max(status.st_size + 1, 64 << 10)))
            view = memoryview(buffer)
            while n_read := reader.readinto(buffer):  # type: ignore[attr-defined]
                chunk = view[:n_read]
                n_written = 0
                while n_written < n_read:  # a raw write may write less than it was given
                    n_written += writer.write(chunk[n_written:])
                sha256.update(chunk)
                md5.update(chunk)
                size_bytes += n_read
                if progress is not None:
                    progress("copy", n_read)
            written_bytes = os.fstat(writer.fileno()).st_size
        if file_sha256(temporary) != sha256.hexdigest() or written_bytes != size_bytes:
            raise VerificationError(
                f"{output}: the copy does not read back as written; check the destination disk"
            )
        os.utime(temporary, ns=(status.st_atime_ns, status.st_mtime_ns))
        commit_output(temporary, output, durable=durable)
    return size_bytes, sha256.hexdigest(), md5.hexdigest()


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _stat_key(status: os.stat_result) -> tuple[int, int]:
    return status.st_size, status.st_mtime_ns


@after_warm_up
@trimming_idle_frame_buffers  # (buffers still in use when the conversion's scope closed are idle now)
def run_file_task(
    task: FileTask,
    *,
    worker: str = "",
    stop: _StopCheck | None = None,
    folders: set[str] | None = None,
    durable: bool | None = None,
) -> FileOutcome:
    """Convert or copy one file (runs on a worker). Never raises for a bad file.

    A batch (:func:`run_file_batch`) passes what its files share: the ``worker``'s name, one
    ``stop`` check, the output ``folders`` it already made (each made once per batch), and
    ``durable=False`` (a copy is renamed without fsync: the batch makes its files durable at
    once); by default a copy is durable unless ``task.defer_sync``.
    """
    started = time.perf_counter()
    stop = stop or _StopCheck(task.stop_path)
    worker = worker or _worker_name()
    try:
        status = os.stat(task.source_path, follow_symlinks=False)
    except OSError as error:
        return FileOutcome(
            rel_path=task.rel_path,
            ok=False,
            outcome="",
            output_rel_path=task.output_rel_path,
            message=f"cannot be read ({error.strerror})",
            elapsed_seconds=time.perf_counter() - started,
            worker=worker,
        )
    base = FileOutcome(
        rel_path=task.rel_path,
        ok=False,
        outcome="",
        output_rel_path=task.output_rel_path,
        source_size_bytes=status.st_size,
        source_mtime_ns=status.st_mtime_ns,
        source_ctime_ns=status.st_ctime_ns,
        source_inode=status.st_ino,
        worker=worker,
    )
    try:
        if task.expected_source_sha256:
            digest = file_digests(task.source_path, algorithms=("sha256",), progress=stop)["sha256"]
            if digest == task.expected_source_sha256:
                return replace(
                    base,
                    ok=True,
                    unchanged=True,
                    source_sha256=digest,
                    elapsed_seconds=time.perf_counter() - started,
                )
        if task.classify_first and _kind_of(task) == KIND_GAIN_NORMALISED:
            return replace(base, needs_gain=True, elapsed_seconds=time.perf_counter() - started)
        _make_folder(os.path.dirname(task.output_path), folders)
        if task.action == ACTION_CONVERT:
            outcome = _convert_or_keep(task, stop, base)
        else:
            durable = not task.defer_sync if durable is None else durable
            outcome = _copy(task, stop, base, outcome=OUTCOME_COPIED, message="", durable=durable)
        after = os.stat(task.source_path, follow_symlinks=False)
        if _stat_key(after) != _stat_key(status):
            outcome = replace(
                base,
                message="the source changed while it was read; it is redone by the next run",
            )
    except StopRequestedError:
        outcome = replace(base, stopped=True, message="stopped before it was finished")
    except MemoryError:
        outcome = replace(base, message="out of memory while converting; run again with fewer workers")
    except Exception as error:  # I/O errors, a lost file, our own errors: a failure of this run
        outcome = replace(base, message=_error_text(error))
    return replace(outcome, elapsed_seconds=time.perf_counter() - started)


def _make_folder(folder: str, made: set[str] | None) -> None:
    """The output's folder (and its parents), unless this batch made it already."""
    if made is not None and folder in made:
        return
    os.makedirs(folder, exist_ok=True)
    if made is not None:
        made.add(folder)


def _error_text(error: BaseException) -> str:
    if isinstance(error, OSError):
        return f"{error.filename or ''}: {error.strerror or error}".lstrip(": ")
    if isinstance(error, EmpCompressError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _copy(
    task: FileTask,
    stop: _StopCheck,
    base: FileOutcome,
    *,
    outcome: str,
    message: str,
    durable: bool | None = None,
) -> FileOutcome:
    output_path, output_rel_path = task.output_path, task.output_rel_path
    if outcome == OUTCOME_KEPT_AS_IS:
        output_path, output_rel_path = _kept_output(task)
        Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    size_bytes, sha256, md5 = copy_with_digests(
        task.source_path,
        output_path,
        progress=stop,
        durable=not task.defer_sync if durable is None else durable,
    )
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


def _kept_output(task: FileTask) -> tuple[str, str]:
    """Where a movie kept as it is goes: the layout's path, or its own name beside the TIFF's."""
    if task.kept_output_path:
        return task.kept_output_path, task.kept_output_rel_path
    name = PurePosixPath(task.rel_path).name
    return str(Path(task.output_path).with_name(name)), str(
        PurePosixPath(task.output_rel_path).with_name(name)
    )


def _convert(task: FileTask, stop: _StopCheck, *, gain: str | None) -> Any:
    from ..convert import convert_movie

    return convert_movie(
        task.source_path,
        task.output_path,
        codec=task.codec,
        level=task.level,
        threads=task.threads,
        overwrite=True,
        progress=stop,
        gain=gain,
    )


def _payload_relative(path: str, task: FileTask) -> str:
    relative = PurePosixPath(Path(os.path.relpath(path, task.payload_root)).as_posix())
    if not task.payload_root or relative.parts[:1] == ("..",):
        raise VerificationError(f"{task.output_path}: its gain reference {path} is outside the bag")
    return str(relative)


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
    except (InputError, VerificationError) as error:
        # a property of the data: it cannot be stored as a TIFF that gives it back exactly
        return _copy(task, stop, base, outcome=OUTCOME_KEPT_AS_IS, message=f"not converted: {error}")
    gain_outcome: Any = getattr(result, "gain", None)
    if gain and _names_another_reference(gain_outcome, task):
        # the record must name the group's reference, never a file the layout did not plan
        if gain_outcome.created_reference:
            with contextlib.suppress(OSError):
                os.unlink(gain_outcome.reference_path)
        note = "its TIFF could not name its gain group's reference; converted without it"
        gain = None
        try:
            result = _convert(task, stop, gain=None)
        except (InputError, VerificationError) as error:
            return _copy(task, stop, base, outcome=OUTCOME_KEPT_AS_IS, message=f"not converted: {error}")
        gain_outcome = getattr(result, "gain", None)
    with contextlib.suppress(OSError):
        os.utime(task.output_path, ns=(base.source_mtime_ns, base.source_mtime_ns))
    decision = result.decision
    warnings = "; ".join(result.warnings)
    reference_rel_path = ""
    if gain and gain_outcome is not None and gain_outcome.action == "applied" and gain_outcome.reference_path:
        reference_rel_path = task.gain_reference_rel_path
    elif gain:
        reason = getattr(gain_outcome, "reason", "") or "the gain was not applied"
        note = f"did not fit its set's gain reference ({reason}); stored without it"
    return replace(
        base,
        ok=True,
        outcome=OUTCOME_CONVERTED,
        message="; ".join(part for part in (task.gain_note, note, warnings) if part),
        source_size_bytes=result.source_size_bytes,
        source_sha256=result.source_sha256,
        output_size_bytes=result.output_size_bytes,
        output_sha256=result.output_sha256,
        output_md5=result.output_md5,
        stored_dtype=decision.stored_dtype,
        decision=decision.reason,
        codec=result.codec,
        gain_reference_rel_path=reference_rel_path,
    )


def _names_another_reference(gain_outcome: Any, task: FileTask) -> bool:
    """The conversion applied a gain but its record names a file other than the group's reference."""
    if gain_outcome is None or gain_outcome.action != "applied" or not gain_outcome.reference_path:
        return False
    try:
        named = _payload_relative(gain_outcome.reference_path, task)
    except VerificationError:
        return True
    return named != task.gain_reference_rel_path or bool(gain_outcome.created_reference)


def warm_up_worker() -> None:
    """Import the conversion code and load its compiled kernels (run once per worker as it starts).

    Converts a tiny synthetic movie in a temporary folder, so that the first real
    task does not pay for imports and Numba's cache loading; with the gain module,
    its kernels are loaded too.
    """
    import tempfile

    import numpy as np

    from ..convert import convert_movie

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
    """The paths this worker cannot see (runs on a worker).

    Not made to wait for the warm-up (:func:`~empcompress.cluster.warm_up.after_warm_up`): it runs no
    kernels, and the client bounds its answer (``CHECK_PATHS_TIMEOUT_SECONDS``) to tell a hung file
    system, which a slow warm-up must not look like.
    """
    return tuple(path for path in paths if not os.path.isdir(path))


# ---------------------------------------------------------------- gain tasks


def _kind_of(task: FileTask) -> str:
    """counts | gain-normalised | float, cheaply: one frame tells integer counts at once."""
    from .. import kernels
    from ..mrc import MrcMovie

    try:
        with MrcMovie(task.source_path) as movie:
            frame = movie.read_frame(movie.header.nz // 2)
            if frame.dtype.kind != "f" or kernels.float_frame_stats(frame)[0]:
                return "counts"
    except InputError:
        return "float"  # not readable as MRC: the conversion says why and keeps it as it is
    return classify_task(task.source_path, task.classify_sample_frames)


@after_warm_up
@trimming_idle_frame_buffers
def classify_task(path: str, n_sample_frames: int) -> str:
    """counts | gain-normalised | float (runs on a worker; unreadable data says float: converted as is)."""
    gain = gain_support()
    if gain is None:
        return "float"
    try:
        movie_class = gain.classify_movie(path, n_sample_frames=n_sample_frames)
    except InputError:
        return "float"
    kind = str(getattr(movie_class, "kind", movie_class)).lower().replace("_", "-")
    return KIND_GAIN_NORMALISED if kind.startswith("gain") else kind


# ---------------------------------------------------------------- batches of small files


@after_warm_up
def run_file_batch(tasks: tuple[FileTask, ...]) -> tuple[FileOutcome, ...]:
    """Copy a batch of small files, one after the other (runs on a worker); one outcome per task.

    One Dask task (one round trip between client, scheduler and worker) for many small files
    (an EPU session's ``.xml`` and ``.jpg`` beside every movie). Each file still goes through
    :func:`run_file_task`: temporary name, verified, renamed; a stop request leaves the rest
    as stopped, with nothing written. What the files share is done once per batch: the
    worker's name, the output folders, and making the copies durable (one flush at the end).
    """
    outcomes: list[FileOutcome] = []
    worker = _worker_name()
    folders: set[str] = set()
    stops: dict[str, _StopCheck] = {}
    for index, task in enumerate(tasks):
        stop = stops.get(task.stop_path) or stops.setdefault(task.stop_path, _StopCheck(task.stop_path))
        outcome = run_file_task(task, worker=worker, stop=stop, folders=folders, durable=False)
        outcomes.append(outcome)
        if outcome.stopped or os.path.exists(task.stop_path):
            outcomes += [
                FileOutcome(
                    rel_path=rest.rel_path,
                    ok=False,
                    outcome="",
                    output_rel_path=rest.output_rel_path,
                    message="stopped before it was started",
                    stopped=True,
                    worker=outcome.worker,
                )
                for rest in tasks[index + 1 :]
            ]
            break
    written = [task.output_path for task, outcome in zip(tasks, outcomes, strict=True) if outcome.ok]
    try:
        sync_file_system(written)  # before any of them can be recorded as done
    except OSError as error:
        message = f"could not be made durable on the destination ({_error_text(error)}); run again"
        outcomes = [
            replace(outcome, ok=False, outcome="", message=message) if outcome.ok else outcome
            for outcome in outcomes
        ]
    return tuple(outcomes)
