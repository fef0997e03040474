"""Where the compress job runs: a Dask client on a local, existing or batch cluster.

Choice, in this order (two explicit choices at once are refused):

1. ``scheduler_file``: an existing cluster started with ``dask scheduler --scheduler-file F``;
2. ``scheduler_address`` (or the ``DASK_SCHEDULER_ADDRESS`` environment variable when no
   cluster option is given): an existing scheduler, e.g. ``tcp://host:8786``;
3. ``cluster`` = ``slurm``, ``pbs``, ``sge`` or ``lsf``: a dask-jobqueue cluster whose job
   size (cores, memory, queue, ...) comes from the users' ``~/.config/dask/jobqueue.yaml``;
   it is scaled to ``n_jobs`` jobs (default 1) or adapts between ``adapt`` = (MIN, MAX) jobs;
   ``worker_lifetime`` (and ``worker_lifetime_stagger``) make each job's worker leave on its own
   before the job's time limit (dask-worker's ``--lifetime``), so that the scheduler knows at once
   and, with ``adapt``, a new job takes its place;
4. otherwise a :class:`distributed.LocalCluster` sized to the machine: one single-threaded
   worker process per core (the conversion of one movie is one task; processes sidestep
   the GIL) and the machine's memory shared between them, listening on loopback only;
   never more workers than the machine's memory holds the largest conversion
   (:mod:`empcompress.pipeline.memory` states its need).

Memory as a Dask resource: the workers empcompress starts (local, and batch jobs through
``--resources`` in their worker arguments) advertise a ``memory`` resource equal to their
memory limit, and the driver declares every task's need against it
(:func:`worker_memory`), so that a worker with several threads runs only as many big
conversions at once as fit. Workers of an existing cluster are not ours: their tasks
declare memory only if every worker advertises the resource.

Workers of existing and batch clusters must see SRC and DEST under the same paths
(a shared file system); the pipeline checks that before it starts.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import PipelineError

if TYPE_CHECKING:
    from .pipeline.memory import TaskNeed

__all__ = [
    "JOBQUEUE_CLUSTERS",
    "ClusterOptions",
    "ClusterInfo",
    "LocalSizing",
    "local_sizing",
    "choose_connection",
    "parse_adapt",
    "open_cluster",
    "machine_cores",
    "machine_memory_bytes",
    "WorkerSupply",
    "worker_supply",
    "WorkerMemory",
    "worker_memory",
]

#: --cluster names and their dask-jobqueue classes.
JOBQUEUE_CLUSTERS: dict[str, str] = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
}
#: Share of the machine's memory given to the local workers (the rest is for the driver and the OS).
LOCAL_MEMORY_SHARE = 0.9
CONNECT_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class ClusterOptions:
    """How to get workers. Every field is optional; the default is a local cluster."""

    scheduler_address: str | None = None
    scheduler_file: str | None = None
    cluster: str | None = None  # slurm | pbs | sge | lsf
    n_jobs: int | None = None
    adapt: tuple[int, int] | None = None  # (minimum jobs, maximum jobs)
    worker_lifetime: str | None = None  # batch cluster only, e.g. "55m": dask-worker --lifetime
    worker_lifetime_stagger: str | None = None  # batch cluster only: dask-worker --lifetime-stagger
    n_workers: int | None = None  # local cluster only
    threads_per_worker: int | None = None  # local cluster only
    memory_limit_bytes: int | None = None  # per local worker
    dashboard_address: str = "127.0.0.1:8787"  # local cluster; busy port: another is chosen


@dataclass(frozen=True)
class ClusterInfo:
    """What the client is connected to (for the summary and the report)."""

    kind: str  # local | address | scheduler-file | slurm | pbs | sge | lsf
    scheduler_address: str
    dashboard_link: str
    description: str
    #: what the user should know before the run (e.g. a movie too large for this machine); the CLI prints them
    warnings: tuple[str, ...] = ()


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


def _gib(n_bytes: float) -> str:
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
                f"--memory-limit {_gib(memory)}: {largest_what} needs about {_gib(need)} to convert; "
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
                f"--workers {n_workers}: each worker would have {_gib(memory)} of this machine's "
                f"{_gib(usable)}, but {largest_what} needs about {_gib(need)} to convert; "
                f"use --workers {most} or fewer"
            )
    if threads < 1 or workers < 1 or memory < 1:
        raise PipelineError(
            f"invalid local cluster size: {workers} workers x {threads} threads, {memory} bytes"
        )
    warning = ""
    if need > memory:
        warning = (
            f"{largest_what} needs about {_gib(need)} to convert, more than this machine's "
            f"{_gib(usable)} for workers: movies that large fail this run (the others are done); "
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


def parse_adapt(text: str) -> tuple[int, int]:
    """``MIN:MAX`` -> (MIN, MAX), for --adapt."""
    try:
        low_text, high_text = text.split(":")
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise PipelineError(f"--adapt {text}: expected MIN:MAX, two whole numbers such as 0:10") from None
    if low < 0 or high < max(1, low):
        raise PipelineError(f"--adapt {text}: need 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def choose_connection(options: ClusterOptions, *, environ: Mapping[str, str]) -> tuple[str, str]:
    """(kind, target) from the options and the environment; refuses conflicting choices."""
    explicit = [
        (name, value)
        for name, value in (
            ("scheduler-file", options.scheduler_file),
            ("address", options.scheduler_address),
            ("cluster", options.cluster),
        )
        if value
    ]
    if len(explicit) > 1:
        names = " and ".join(
            {"scheduler-file": "--scheduler-file", "address": "--scheduler-address", "cluster": "--cluster"}[
                name
            ]
            for name, _ in explicit
        )
        raise PipelineError(f"{names} choose different clusters; give only one of them")
    if options.cluster is None and (options.n_jobs is not None or options.adapt is not None):
        raise PipelineError("--jobs and --adapt apply to a batch cluster; add --cluster slurm|pbs|sge|lsf")
    if options.cluster is None and (options.worker_lifetime or options.worker_lifetime_stagger):
        raise PipelineError("--lifetime and --lifetime-stagger apply to a batch cluster; add --cluster ...")
    if options.worker_lifetime_stagger and not options.worker_lifetime:
        raise PipelineError("--lifetime-stagger needs --lifetime")
    if options.n_jobs is not None and options.adapt is not None:
        raise PipelineError("--jobs and --adapt exclude each other; give one of them")
    if explicit:
        name, value = explicit[0]
        if name == "cluster":
            if value not in JOBQUEUE_CLUSTERS:
                raise PipelineError(f"--cluster {value}: choose one of {', '.join(JOBQUEUE_CLUSTERS)}")
            return value, value
        return name, str(value)
    from_environment = environ.get("DASK_SCHEDULER_ADDRESS", "").strip()
    if from_environment:
        return "address", from_environment
    return "local", "local"


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


def _setup_plugin(setup: Callable[[], None]) -> Any:
    """A worker plugin running ``setup`` on every worker, present and future, as it starts."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class SetupPlugin(WorkerPlugin):
        name = "empcompress-worker-setup"

        def __init__(self, function: Callable[[], None]) -> None:
            self.function = function

        def setup(self, worker: Any) -> None:
            with contextlib.suppress(Exception):  # a failed warm-up only costs time later
                self.function()

    return SetupPlugin(setup)


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
    there), e.g. to import the code and load compiled kernels before the first
    task. ``largest_need``: the largest task of the drive (from its scan), which
    a local cluster is sized by. Raises :class:`PipelineError` with a hint when
    the cluster cannot be reached or configured.
    """
    from distributed import Client

    kind, target = choose_connection(options, environ=os.environ if environ is None else environ)
    if kind == "local":
        with _local_client(options, largest_need) as (client, info):
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
    cluster = _jobqueue_cluster(kind, _lifetime_args(options))
    try:
        if options.adapt is not None:
            cluster.adapt(minimum_jobs=options.adapt[0], maximum_jobs=options.adapt[1])
            scaling = f"adapting between {options.adapt[0]} and {options.adapt[1]} jobs"
        else:
            jobs = options.n_jobs or 1
            cluster.scale(jobs=jobs)
            scaling = f"{jobs} job{'s' if jobs != 1 else ''}"
        client = Client(cluster)
        try:
            _register_setup(client, worker_setup)
            info = ClusterInfo(
                kind=kind,
                scheduler_address=str(cluster.scheduler_address),
                dashboard_link=str(client.dashboard_link or ""),
                description=(
                    f"{kind.upper()} cluster through dask-jobqueue, {scaling}{_job_memory_text(kind)}"
                ),
            )
            yield client, info
        finally:
            client.close()
    finally:
        cluster.close()


def _job_memory_text(kind: str) -> str:
    worker_memory = jobqueue_worker_memory_bytes(kind)
    return f", {_gib(worker_memory)} per worker (its memory resource)" if worker_memory else ""


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


def _local_description(sizing: LocalSizing, largest_need: TaskNeed | None) -> str:
    threads = sizing.threads_per_worker
    text = (
        f"local cluster: {sizing.n_workers} workers x {threads} thread{'s' if threads != 1 else ''}, "
        f"{_gib(sizing.memory_limit_bytes)} each"
    )
    if largest_need is None or not sizing.largest_need_bytes:
        return text
    from .pipeline.memory import describe_need

    at_once = sizing.n_workers * sizing.n_largest_per_worker
    fewer = "; fewer workers than cores, for memory" if sizing.limited_by_memory else ""
    return f"{text}; the largest conversion, {describe_need(largest_need)}: {at_once} of those at once{fewer}"


@contextlib.contextmanager
def _local_client(
    options: ClusterOptions, largest_need: TaskNeed | None
) -> Iterator[tuple[Any, ClusterInfo]]:
    import dask
    from distributed import Client, LocalCluster

    from .pipeline.memory import RESOURCE, describe_task

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


def _lifetime_args(options: ClusterOptions) -> tuple[str, ...]:
    """dask-worker arguments for the batch jobs' worker lifetime (durations checked here)."""
    from dask.utils import parse_timedelta

    args: list[str] = []
    for flag, value in (
        ("--lifetime", options.worker_lifetime),
        ("--lifetime-stagger", options.worker_lifetime_stagger),
    ):
        if not value:
            continue
        try:
            seconds = parse_timedelta(value)
        except (ValueError, KeyError, TypeError):
            seconds = None
        if seconds is None or seconds <= 0:
            raise PipelineError(f"{flag} {value}: expected a duration such as 55m, 3600s or 1h")
        args += [flag, f"{int(seconds)}s"]
    return tuple(args)


def jobqueue_worker_memory_bytes(kind: str) -> int | None:
    """The memory limit of each worker of a ``kind`` batch job, from the users' jobqueue settings:
    the job's ``memory`` over its ``processes`` (computed as dask-jobqueue does); None if not set."""
    import dask
    from dask.utils import format_bytes, parse_bytes
    from distributed.deploy.local import nprocesses_nthreads

    memory = dask.config.get(f"jobqueue.{kind}.memory", default=None)
    cores = dask.config.get(f"jobqueue.{kind}.cores", default=None)
    processes = dask.config.get(f"jobqueue.{kind}.processes", default=None)
    try:
        if processes is None:
            processes = nprocesses_nthreads(int(cores))[0] if cores else 1
        return int(parse_bytes(format_bytes(int(parse_bytes(memory) / int(processes))))) if memory else None
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _memory_resource_args(kind: str, configured: list[str]) -> list[str]:
    """``--resources memory=BYTES`` for the batch workers, unless the users configure resources
    themselves (then theirs stand, and tasks declare memory only if the workers advertise it)."""
    from .pipeline.memory import RESOURCE

    worker_memory = jobqueue_worker_memory_bytes(kind)
    if worker_memory is None or any(str(arg).startswith("--resources") for arg in configured):
        return []
    return ["--resources", f"{RESOURCE}={worker_memory}"]


def _jobqueue_cluster(
    kind: str, worker_args: tuple[str, ...] = (), *, with_memory_resource: bool = True
) -> Any:
    try:
        import dask_jobqueue
    except ImportError:
        raise PipelineError(
            f"--cluster {kind} needs dask-jobqueue; install it with 'pip install dask-jobqueue'"
        ) from None
    import dask

    cls = getattr(dask_jobqueue, JOBQUEUE_CLUSTERS[kind])
    extra: dict[str, Any] = {}
    configured = list(dask.config.get(f"jobqueue.{kind}.worker-extra-args", default=None) or [])
    resources = _memory_resource_args(kind, configured) if with_memory_resource else []
    if worker_args or resources:  # after the users' own worker-extra-args (a later --lifetime wins)
        extra["worker_extra_args"] = [*configured, *worker_args, *resources]
    # The job's worker keeps its nanny, although a nanny is a second interpreter per job and starts the
    # worker with MALLOC_TRIM_THRESHOLD_=65536 (18-21% more CPU in the jobs, benchmarks/results-slurm.md):
    # without it, a worker whose job was cancelled outlived the job on a SLURM that tracks processes by
    # parent (proctrack/linuxproc, as scripts/start-slurm.sh sets up), orphaned and still running.
    try:
        return cls(**extra)
    except ValueError as error:
        raise PipelineError(
            f"--cluster {kind}: dask-jobqueue cannot size the jobs ({error}); set at least 'cores' and "
            f"'memory' under 'jobqueue: {kind}:' in ~/.config/dask/jobqueue.yaml"
        ) from None
    except (OSError, RuntimeError) as error:
        raise PipelineError(f"--cluster {kind}: cannot start the cluster ({error})") from None


@dataclass(frozen=True)
class WorkerSupply:
    """Workers connected to the scheduler now, and whether more may come."""

    n_connected: int
    #: batch jobs or local worker processes started and not yet connected (or restarting);
    #: None when this process cannot know (an existing cluster started elsewhere)
    n_coming: int | None


def worker_supply(client: Any) -> WorkerSupply:
    """How many workers the client has, and how many its cluster is still bringing up.

    For a cluster this process started (local or dask-jobqueue), the cluster's own list of
    worker processes or batch jobs counts what is coming: a job still in the queue, a job
    whose worker has not connected yet, a local worker its nanny restarts. A batch job that
    ended (time limit, ``scancel``) leaves that list once the scheduler has lost its worker.
    """
    try:
        n_connected = len(client.nthreads())
    except Exception:
        n_connected = 0
    cluster = getattr(client, "cluster", None)
    requested = getattr(cluster, "workers", None)
    if not isinstance(requested, dict):
        return WorkerSupply(n_connected=n_connected, n_coming=None)
    return WorkerSupply(n_connected=n_connected, n_coming=max(0, len(requested) - n_connected))


@dataclass(frozen=True)
class WorkerMemory:
    """What the driver declares task memory against."""

    #: every connected worker advertises the ``memory`` resource: tasks declare their need
    declare: bool
    #: the most memory one worker offers (advertised, or a batch job's worker to come); 0: unknown
    largest_worker_bytes: int
    #: how that was found, for messages ("the workers' memory resource", "each SLURM job's worker")
    source: str


def worker_memory(client: Any) -> WorkerMemory:
    """Whether the client's workers advertise memory, and the most any of them (or, for a
    dask-jobqueue cluster, any worker of a job still to come) offers.

    Workers empcompress started advertise it; an existing cluster's workers count only if
    every one of them does (a worker without the resource would never run a task that
    declares it, so then no task declares memory).
    """
    from .pipeline.memory import RESOURCE

    try:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    except Exception:
        workers = {}
    advertised = [float((worker.get("resources") or {}).get(RESOURCE, -1)) for worker in workers.values()]
    declare = bool(advertised) and all(value >= 0 for value in advertised)
    largest = int(max(advertised)) if declare else 0
    source = "the memory resource the workers advertise"
    job = getattr(getattr(client, "cluster", None), "_dummy_job", None)
    job_memory = getattr(job, "worker_process_memory", None)
    if declare and job_memory:
        from dask.utils import parse_bytes

        with contextlib.suppress(TypeError, ValueError):
            largest = max(largest, int(parse_bytes(job_memory)))
            source = "the memory of each batch job's worker (jobqueue 'memory' over 'processes')"
    return WorkerMemory(declare=declare, largest_worker_bytes=largest, source=source)
