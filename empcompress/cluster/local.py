"""A local cluster sized to this machine: one single-threaded worker process per core, its memory shared.

The conversion of one movie is one task; processes sidestep the GIL. The machine's memory
(less a tenth for the driver and the OS) is shared between the workers, listening on
loopback only, and never more workers than that memory holds the largest conversion
(:mod:`empcompress.pipeline.memory` states its need).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import PipelineError
from .options import ClusterInfo, ClusterOptions

if TYPE_CHECKING:
    from ..pipeline.memory import TaskNeed

__all__ = [
    "LOCAL_MEMORY_SHARE",
    "LocalSizing",
    "local_sizing",
    "local_client",
    "machine_cores",
    "machine_memory_bytes",
    "gib_text",
]

#: Share of the machine's memory given to the local workers (the rest is for the driver and the OS).
LOCAL_MEMORY_SHARE = 0.9


@dataclass(frozen=True)
class LocalSizing:
    n_workers: int
    threads_per_worker: int
    memory_limit_bytes: int
    #: the largest conversion's declared memory (0: not known) and how many of those fit at once
    largest_need_bytes: int = 0
    n_largest_per_worker: int = 0
    #: fewer workers than cores because the largest conversion needs the memory
    limited_by_memory: bool = False
    #: the largest conversion does not fit one worker (it will fail this run): what to tell the user
    warning: str = ""


def machine_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def machine_memory_bytes() -> int:
    """Memory available to this process (cgroup limits included, as Dask sees it)."""
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT)


def gib_text(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def local_sizing(
    *,
    n_cores: int,
    memory_bytes: int,
    n_workers: int | None = None,
    threads_per_worker: int | None = None,
    memory_limit_bytes: int | None = None,
    largest_need_bytes: int = 0,
    largest_what: str = "the largest movie",
) -> LocalSizing:
    """Workers x threads and memory per worker for a local cluster on this machine.

    Default: one single-threaded worker per core, the machine's memory (less a tenth
    for the driver and the OS, :data:`LOCAL_MEMORY_SHARE`) shared equally between them,
    but never more workers than that memory holds the largest conversion
    (``largest_need_bytes``, from :mod:`empcompress.pipeline.memory`): each worker gets
    at least one. Options the user gave are kept; ``--memory-limit`` or ``--workers``
    that leave a worker too little for the largest conversion are refused
    (:class:`PipelineError`, nothing started); a machine too small for it gives one
    worker with all the memory and a ``warning`` (those movies fail this run, the rest
    is done).
    """
    threads = threads_per_worker or 1
    need = max(0, largest_need_bytes)
    usable = int(memory_bytes * LOCAL_MEMORY_SHARE)
    default_workers = max(1, n_cores // threads)
    limited = False
    if memory_limit_bytes:
        memory = memory_limit_bytes
        if need > memory:
            raise PipelineError(
                f"--memory-limit {gib_text(memory)}: {largest_what} needs about {gib_text(need)} to convert; "
                f"give at least --memory-limit {math.ceil(need / 2**30 * 10) / 10:.1f}GiB, or leave "
                f"--memory-limit out to size the workers from the movies"
            )
        workers = n_workers or max(1, min(default_workers, usable // memory))
    else:
        workers = n_workers or default_workers
        if need and not n_workers and usable // need < workers:
            workers = max(1, usable // need)
            limited = True
        memory = usable // workers if workers >= 1 else 0
        if need > memory and n_workers and n_workers > 1:
            most = max(1, usable // need)
            raise PipelineError(
                f"--workers {n_workers}: each worker would have {gib_text(memory)} of this machine's "
                f"{gib_text(usable)}, but {largest_what} needs about {gib_text(need)} to convert; "
                f"use --workers {most} or fewer"
            )
    if threads < 1 or workers < 1 or memory < 1:
        raise PipelineError(
            f"invalid local cluster size: {workers} workers x {threads} threads, {memory} bytes"
        )
    warning = ""
    if need > memory:
        warning = (
            f"{largest_what} needs about {gib_text(need)} to convert, more than this machine's "
            f"{gib_text(usable)} for workers: movies that large fail this run (the others are done); "
            f"convert them on a machine with more memory or a cluster (--cluster, --scheduler-address)"
        )
    return LocalSizing(
        n_workers=workers,
        threads_per_worker=threads,
        memory_limit_bytes=memory,
        largest_need_bytes=need,
        n_largest_per_worker=min(threads, memory // need) if need else 0,
        limited_by_memory=limited,
        warning=warning,
    )


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start worker processes with SIGINT ignored (they inherit it), so that Ctrl-C in a
    terminal reaches only the driver, which stops the work cleanly."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _local_description(sizing: LocalSizing, largest_need: TaskNeed | None) -> str:
    threads = sizing.threads_per_worker
    text = (
        f"local cluster: {sizing.n_workers} workers x {threads} thread{'s' if threads != 1 else ''}, "
        f"{gib_text(sizing.memory_limit_bytes)} each"
    )
    if largest_need is None or not sizing.largest_need_bytes:
        return text
    from ..pipeline.memory import describe_need

    at_once = sizing.n_workers * sizing.n_largest_per_worker
    fewer = "; fewer workers than cores, for memory" if sizing.limited_by_memory else ""
    return f"{text}; the largest conversion, {describe_need(largest_need)}: {at_once} of those at once{fewer}"


@contextlib.contextmanager
def local_client(options: ClusterOptions, largest_need: TaskNeed | None) -> Iterator[tuple[Any, ClusterInfo]]:
    """A client of a new local cluster sized by :func:`local_sizing`; both closed on exit."""
    import dask
    from distributed import Client, LocalCluster

    from ..pipeline.memory import RESOURCE, describe_task

    sizing = local_sizing(
        n_cores=machine_cores(),
        memory_bytes=machine_memory_bytes(),
        n_workers=options.n_workers,
        threads_per_worker=options.threads_per_worker,
        memory_limit_bytes=options.memory_limit_bytes,
        largest_need_bytes=largest_need.need_bytes if largest_need is not None else 0,
        largest_what=describe_task(largest_need) if largest_need is not None else "the largest movie",
    )
    # Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 so that they hand memory back to the OS at
    # once; a conversion allocates frame-sized buffers over and over, and two workers doing that on
    # two cores ran ~14% slower than without it (benchmarks/bench_pipeline.py). Unset it for our workers.
    no_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with _sigint_ignored(), dask.config.set(no_trim):
        cluster = LocalCluster(
            n_workers=sizing.n_workers,
            threads_per_worker=sizing.threads_per_worker,
            memory_limit=sizing.memory_limit_bytes,
            resources={RESOURCE: float(sizing.memory_limit_bytes)},
            processes=True,
            host="127.0.0.1",
            dashboard_address=options.dashboard_address,
        )
    try:
        client = Client(cluster)
        try:
            info = ClusterInfo(
                kind="local",
                scheduler_address=str(cluster.scheduler_address),
                dashboard_link=str(client.dashboard_link or ""),
                description=_local_description(sizing, largest_need),
                warnings=(sizing.warning,) if sizing.warning else (),
            )
            yield client, info
        finally:
            client.close()
    finally:
        cluster.close()
