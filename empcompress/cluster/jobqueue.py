"""dask-jobqueue clusters (SLURM, PBS, SGE, LSF): the users' job settings, our worker arguments.

The job size (cores, memory, queue, ...) comes from the users' ``~/.config/dask/jobqueue.yaml``
(or ``DASK_JOBQUEUE__SLURM__*`` variables). empcompress adds to the workers' arguments, after
the users' own ``worker-extra-args``: ``--lifetime`` (and ``--lifetime-stagger``) when asked,
so that each job's worker leaves on its own before the job's time limit, and ``--resources
memory=BYTES`` (the worker's memory limit, unless the users set resources themselves); and to
the users' ``job-script-prologue`` a last line that keeps the job's nanny from pinning glibc's
malloc thresholds in its worker (:data:`NANNY_MALLOC_EXPORT`).
"""

from __future__ import annotations

from typing import Any

from ..errors import PipelineError
from .local import gib_text
from .options import JOBQUEUE_CLUSTERS, ClusterOptions

__all__ = [
    "NANNY_MALLOC_EXPORT",
    "lifetime_args",
    "jobqueue_worker_memory_bytes",
    "new_jobqueue_cluster",
    "job_memory_text",
]

#: The last line of every job script's prologue: the job's nanny starts its worker without Dask's
#: ``MALLOC_TRIM_THRESHOLD_=65536``, as a local cluster's workers are (glibc's adaptive thresholds
#: kept; pinned, a worker converted with 7-22% more CPU, benchmarks/results-slurm.md). The value is a
#: Python literal that Dask merges into ``distributed.nanny.pre-spawn-environ``; None unsets a key.
NANNY_MALLOC_EXPORT = "export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON=\"{'MALLOC_TRIM_THRESHOLD_': None}\""


def lifetime_args(options: ClusterOptions) -> tuple[str, ...]:
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


def job_memory_text(kind: str) -> str:
    """ ", 2.0 GiB per worker (its memory resource)" for the start-up line ("" when not set)."""
    worker_memory = jobqueue_worker_memory_bytes(kind)
    return f", {gib_text(worker_memory)} per worker (its memory resource)" if worker_memory else ""


def _memory_resource_args(kind: str, configured: list[str]) -> list[str]:
    """``--resources memory=BYTES`` for the batch workers, unless the users configure resources
    themselves (then theirs stand, and tasks declare memory only if the workers advertise it)."""
    from ..pipeline.memory import RESOURCE

    worker_memory = jobqueue_worker_memory_bytes(kind)
    if worker_memory is None or any(str(arg).startswith("--resources") for arg in configured):
        return []
    return ["--resources", f"{RESOURCE}={worker_memory}"]


def new_jobqueue_cluster(
    kind: str, worker_args: tuple[str, ...] = (), *, with_memory_resource: bool = True
) -> Any:
    """A dask-jobqueue cluster of ``kind`` (no job submitted yet); :class:`PipelineError` with what
    to set when dask-jobqueue is missing or cannot size the jobs."""
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
    # The job's worker keeps its nanny (a second interpreter per job): without it, a worker whose job
    # was cancelled outlived the job on a SLURM that tracks processes by parent (proctrack/linuxproc,
    # as scripts/start-slurm.sh sets up), orphaned and still running. But the nanny must not start it
    # with MALLOC_TRIM_THRESHOLD_=65536, as the local cluster's do not (local.py).
    prologue = list(
        dask.config.get(f"jobqueue.{kind}.job-script-prologue", default=None)
        or dask.config.get(f"jobqueue.{kind}.env-extra", default=None)  # its deprecated name
        or []
    )
    extra["job_script_prologue"] = [*prologue, NANNY_MALLOC_EXPORT]
    try:
        return cls(**extra)
    except ValueError as error:
        raise PipelineError(
            f"--cluster {kind}: dask-jobqueue cannot size the jobs ({error}); set at least 'cores' and "
            f"'memory' under 'jobqueue: {kind}:' in ~/.config/dask/jobqueue.yaml"
        ) from None
    except (OSError, RuntimeError) as error:
        raise PipelineError(f"--cluster {kind}: cannot start the cluster ({error})") from None
