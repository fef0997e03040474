"""What the run has to work with: workers connected and coming, and the memory they offer."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from .jobs import watch_of

__all__ = ["WorkerSupply", "worker_supply", "WorkerMemory", "worker_memory"]


@dataclass(frozen=True)
class WorkerSupply:
    """Workers connected to the scheduler now, and whether more may come."""

    n_connected: int
    #: batch jobs or local worker processes started and not yet connected (or restarting);
    #: None when this process cannot know (an existing cluster started elsewhere)
    n_coming: int | None
    #: batch jobs that ended before their worker connected: how, and where their output is ("" if none)
    jobs_ended: str = ""
    #: what ended the batch jobs, connected or not, as far as known, and where their output is ("2
    #: SLURM jobs reached their time limit (TIMEOUT: jobs 41, 42); ..."); "" for a cluster whose jobs
    #: this process does not watch (local, or started elsewhere)
    jobs_gone: str = ""


def worker_supply(client: Any) -> WorkerSupply:
    """How many workers the client has, and how many its cluster is still bringing up.

    For a batch cluster this process opened, its :class:`~empcompress.cluster.jobs.JobWatch`
    counts what is coming: a job still in the queue, a job whose worker has not connected yet;
    not a job that ended (time limit, ``scancel``, a failed start) nor, after too many failed
    starts in a row, any new one; and it says what ended the jobs (``jobs_gone``). For a local
    cluster, its list of worker processes counts (a worker its nanny restarts is coming).
    """
    try:
        n_connected = len(client.nthreads())
    except Exception:
        n_connected = 0
    cluster = getattr(client, "cluster", None)
    watch = watch_of(cluster)
    if watch is not None:
        try:
            workers = client.scheduler_info(n_workers=-1)["workers"]
            names = [worker.get("name") for worker in workers.values()]
        except Exception:
            return WorkerSupply(
                n_connected=n_connected,
                n_coming=None,
                jobs_ended=watch.ended_text(),
                jobs_gone=watch.gone_text(),
            )
        return WorkerSupply(
            n_connected=len(names),
            n_coming=watch.n_coming(names),
            jobs_ended=watch.ended_text(),
            jobs_gone=watch.gone_text(),
        )
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
    from ..pipeline.memory import RESOURCE

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
