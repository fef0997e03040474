"""What the user asked for: the cluster options, and which kind of cluster they choose."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import PipelineError

__all__ = ["JOBQUEUE_CLUSTERS", "ClusterOptions", "ClusterInfo", "choose_connection", "parse_adapt"]

#: --cluster names and their dask-jobqueue classes.
JOBQUEUE_CLUSTERS: dict[str, str] = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
}


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
