"""``open_cluster``: a Dask client on the cluster the options choose, closed with what it started."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import PipelineError
from ..frame_buffers import keeping_frame_buffers
from ..malloc_policy import apply_malloc_policy
from .jobqueue import job_memory_text, lifetime_args, new_jobqueue_cluster
from .jobs import JobWatch
from .local import local_client
from .options import ClusterInfo, ClusterOptions, choose_connection
from .warm_up import start_in_background

if TYPE_CHECKING:
    from ..pipeline.memory import TaskNeed

__all__ = ["CONNECT_TIMEOUT_SECONDS", "idle_frame_buffer_bytes", "open_cluster"]

CONNECT_TIMEOUT_SECONDS = 30


def _setup_plugin(setup: Callable[[], None]) -> Any:
    """A worker plugin running ``setup`` on every worker, present and future, as it starts.

    The plugin applies the malloc policy at once and starts ``setup`` (the warm-up) in a thread of
    its own, beside the worker's start rather than inside it, where the worker's death timeout
    bounds it; the worker's tasks wait for it (:mod:`.warm_up`). The worker keeps its frame
    buffers from conversion to conversion until it closes (:mod:`empcompress.frame_buffers`), idle
    ones within :func:`idle_frame_buffer_bytes`.
    """
    from distributed.diagnostics.plugin import WorkerPlugin

    class SetupPlugin(WorkerPlugin):
        name = "empcompress-worker-setup"

        def __init__(self, function: Callable[[], None]) -> None:
            self.function = function
            self._keeping: contextlib.ExitStack | None = None

        def setup(self, worker: Any) -> None:
            apply_malloc_policy()  # the conversions' malloc thresholds (over the nanny's settings)
            if self._keeping is None:
                self._keeping = contextlib.ExitStack()
                self._keeping.enter_context(
                    keeping_frame_buffers(max_idle_bytes=idle_frame_buffer_bytes(worker))
                )
            start_in_background(self.function)

        def teardown(self, worker: Any) -> None:
            if self._keeping is not None:
                self._keeping.close()
                self._keeping = None

    return SetupPlugin(setup)


def idle_frame_buffer_bytes(worker: Any) -> int | None:
    """How many bytes of frame buffers a worker keeps while no task uses them: below the lowest of its
    memory manager's thresholds (target, spill, pause: fractions of its memory limit) less the process
    itself (:data:`~empcompress.pipeline.memory.BASE_BYTES`), so that what it keeps between tasks never
    makes Dask spill or pause it. None (the high-water mark alone) for a worker without a limit."""
    from ..pipeline.memory import BASE_BYTES

    manager = getattr(worker, "memory_manager", None)
    limit_bytes = getattr(manager, "memory_limit", None)
    if not limit_bytes:
        return None
    fractions = [
        getattr(manager, name, False)
        for name in ("memory_target_fraction", "memory_spill_fraction", "memory_pause_fraction")
    ]
    lowest = min((fraction for fraction in fractions if fraction), default=1.0)
    return max(0, int(lowest * limit_bytes) - BASE_BYTES)


def _register_setup(client: Any, setup: Callable[[], None] | None) -> None:
    if setup is not None:
        with contextlib.suppress(Exception):
            client.register_plugin(_setup_plugin(setup))


@contextlib.contextmanager
def open_cluster(
    options: ClusterOptions,
    *,
    environ: Mapping[str, str] | None = None,
    worker_setup: Callable[[], None] | None = None,
    largest_need: TaskNeed | None = None,
) -> Iterator[tuple[Any, ClusterInfo]]:
    """Yield ``(distributed.Client, ClusterInfo)``; closes what it started on exit.

    ``worker_setup`` runs on every worker as it joins (and on those already
    there), beside its start, e.g. to import the code and load compiled kernels;
    the tasks sent to a worker wait for it (:func:`.warm_up.after_warm_up`).
    ``largest_need``: the largest task of the drive (from its scan), which a
    local cluster is sized by. Raises :class:`PipelineError` with a hint when
    the cluster cannot be reached or configured. A batch cluster's jobs are
    watched while it is open (:class:`~empcompress.cluster.jobs.JobWatch`).
    """
    from distributed import Client

    kind, target = choose_connection(options, environ=os.environ if environ is None else environ)
    if kind == "local":
        with local_client(options, largest_need) as (client, info):
            _register_setup(client, worker_setup)
            yield client, info
        return
    if kind in ("address", "scheduler-file"):
        client = _connect(kind, target)
        try:
            _register_setup(client, worker_setup)
            info = ClusterInfo(
                kind=kind,
                scheduler_address=str(client.scheduler.address),
                dashboard_link=str(client.dashboard_link or ""),
                description=f"existing cluster at {client.scheduler.address} ({_workers_text(client)})",
            )
            yield client, info
        finally:
            client.close()
        return
    cluster = new_jobqueue_cluster(kind, lifetime_args(options))
    watch: JobWatch | None = None
    try:
        if options.adapt is not None:
            adaptive = cluster.adapt(minimum_jobs=options.adapt[0], maximum_jobs=options.adapt[1])
            scaling = f"adapting between {options.adapt[0]} and {options.adapt[1]} jobs"
            watch = JobWatch(cluster, kind=kind, max_jobs=options.adapt[1], adaptive=adaptive)
        else:
            jobs = options.n_jobs or 1
            cluster.scale(jobs=jobs)
            scaling = f"{jobs} job{'s' if jobs != 1 else ''}"
            watch = JobWatch(cluster, kind=kind, max_jobs=jobs)
        watch.start()
        client = Client(cluster)
        try:
            _register_setup(client, worker_setup)
            info = ClusterInfo(
                kind=kind,
                scheduler_address=str(cluster.scheduler_address),
                dashboard_link=str(client.dashboard_link or ""),
                description=f"{kind.upper()} cluster through dask-jobqueue, {scaling}{job_memory_text(kind)}",
            )
            yield client, info
        finally:
            client.close()
    finally:
        if watch is not None:
            watch.stop()
        cluster.close()


def _workers_text(client: Any) -> str:
    try:
        threads = client.nthreads()
    except Exception:
        return "workers unknown"
    return f"{len(threads)} workers, {sum(threads.values())} threads"


def _connect(kind: str, target: str) -> Any:
    from distributed import Client

    try:
        if kind == "scheduler-file":
            if not os.path.isfile(target):
                raise PipelineError(
                    f"{target}: no such scheduler file; start the scheduler with "
                    f"'dask scheduler --scheduler-file {target}' first"
                )
            return Client(scheduler_file=target, timeout=CONNECT_TIMEOUT_SECONDS)
        return Client(target, timeout=CONNECT_TIMEOUT_SECONDS)
    except PipelineError:
        raise
    except (OSError, TimeoutError, ValueError) as error:
        where = f"scheduler file {target}" if kind == "scheduler-file" else f"scheduler {target}"
        raise PipelineError(
            f"cannot reach the Dask {where} ({error}); check that the scheduler is running "
            f"and reachable from here"
        ) from None
