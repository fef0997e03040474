"""Small files travel in batches: one Dask task for many of them.

A task costs a few milliseconds of scheduling and a round trip to fetch its result,
whatever it does; an EPU session has a ``.xml`` and a ``.jpg`` (a few KiB each) beside
every movie, so one task per file spent more time on Dask than on the files. Files
to copy (never movies) of at most :data:`SMALL_FILE_BYTES` are grouped, in queue order,
into batches of at most :data:`BATCH_MAX_BYTES` bytes and :func:`batch_limit` files: up to
:data:`BATCH_MAX_FILES` when many are queued (each batch costs a round trip, a journal
commit and a flush of the destination's file system: 100,000 files in ~100 batches, not
~400), fewer when few are left, so that every worker gets a share of a small drive.
The driver's window counts a batch as one task, so what is in flight (and in the
scheduler's memory) stays bounded by the window, never by the number of files.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from ..scan import ACTION_CONVERT
from .tasks import FileOutcome, FileTask, failed_outcome, lost_task_message

__all__ = [
    "SMALL_FILE_BYTES",
    "BATCH_MAX_FILES",
    "BATCH_MAX_BYTES",
    "BATCH_MIN_FILES",
    "batch_limit",
    "is_batchable",
    "take_batch",
    "fetch_results",
    "batch_outcomes",
    "n_files",
]

SMALL_FILE_BYTES = 1 << 20
BATCH_MAX_FILES = 1024
BATCH_MIN_FILES = 64
BATCH_MAX_BYTES = 32 << 20


def batch_limit(n_queued: int, n_threads: int) -> int:
    """Files per batch with ``n_queued`` tasks waiting for ``n_threads`` worker threads: half of each
    thread's share, within [BATCH_MIN_FILES, BATCH_MAX_FILES]."""
    share = n_queued // max(1, 2 * n_threads)
    return max(BATCH_MIN_FILES, min(BATCH_MAX_FILES, share))


def is_batchable(kind: str, payload: Any) -> bool:
    """A queued file task that may share a batch: a small file to copy."""
    return (
        kind == "file"
        and isinstance(payload, FileTask)
        and payload.action != ACTION_CONVERT
        and payload.source_size_bytes <= SMALL_FILE_BYTES
    )


def take_batch(
    queue: deque[tuple[str, Any]], first: FileTask, *, max_files: int | None = None
) -> list[FileTask]:
    """``first`` and the batchable tasks right behind it in the queue (taken off it), within the limits
    (``max_files``: at most that many files, and never more than :data:`BATCH_MAX_FILES`)."""
    batch = [first]
    size_bytes = first.source_size_bytes
    limit = BATCH_MAX_FILES if max_files is None else min(max_files, BATCH_MAX_FILES)
    while queue and len(batch) < limit:
        kind, payload = queue[0]
        if not is_batchable(kind, payload) or size_bytes + payload.source_size_bytes > BATCH_MAX_BYTES:
            break
        queue.popleft()
        batch.append(payload)
        size_bytes += payload.source_size_bytes
    return batch


def fetch_results(client: Any, futures: list[Any]) -> dict[Any, Any]:
    """The results of finished tasks, fetched together: one round trip to the workers for all of them
    instead of one each (the driver's thread waits for each). A task whose result does not come this
    way is left out: its own ``result()`` then says what happened."""
    finished = [future for future in futures if future.status == "finished"]
    if len(finished) < 2:
        return {}
    try:
        results = client.gather(finished, errors="skip")  # None where a result was lost
    except Exception:
        return {}
    return {future: result for future, result in zip(finished, results, strict=True) if result is not None}


def batch_outcomes(
    future: Any, tasks: list[FileTask], *, result: Any = None
) -> Iterator[tuple[FileTask, FileOutcome]]:
    """Each task of a finished batch with its outcome (``result``: the batch's result if already
    fetched); a batch that died fails every file (retried by the next run)."""
    try:
        outcomes = tuple(future.result() if result is None else result)
        if len(outcomes) != len(tasks):
            raise RuntimeError(f"{len(outcomes)} outcomes for {len(tasks)} files")
    except Exception as error:  # the task itself died: lost workers, out of memory, ...
        message = lost_task_message(error)
        outcomes = tuple(failed_outcome(task, message) for task in tasks)
    yield from zip(tasks, outcomes, strict=True)


def n_files(entries: Any) -> int:
    """Files in (kind, payload) pairs, a batch counting as its files."""
    return sum(len(payload) if kind == "batch" else 1 for kind, payload in entries)
