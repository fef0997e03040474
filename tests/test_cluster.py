"""Choosing and opening the Dask cluster (local, existing, dask-jobqueue)."""

from __future__ import annotations

from typing import Any

import dask
import dask_jobqueue  # noqa: F401  (loads its configuration defaults outside any dask.config.set)
import pytest

from empcompress import cluster as cluster_module
from empcompress.cluster import (
    ClusterOptions,
    choose_connection,
    local_sizing,
    open_cluster,
    parse_adapt,
)
from empcompress.errors import PipelineError


def test_default_is_a_local_cluster() -> None:
    assert choose_connection(ClusterOptions(), environ={}) == ("local", "local")


def test_environment_address_is_used_when_nothing_else_is_said() -> None:
    environ = {"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:8786"}
    assert choose_connection(ClusterOptions(), environ=environ) == ("address", "tcp://127.0.0.1:8786")
    # an explicit choice wins over the environment
    assert choose_connection(ClusterOptions(scheduler_file="/x/s.json"), environ=environ) == (
        "scheduler-file",
        "/x/s.json",
    )
    assert choose_connection(ClusterOptions(cluster="slurm"), environ=environ) == ("slurm", "slurm")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ClusterOptions(scheduler_address="tcp://127.0.0.1:1", cluster="pbs"), "give only one"),
        (ClusterOptions(scheduler_file="f", scheduler_address="tcp://127.0.0.1:1"), "give only one"),
        (ClusterOptions(n_jobs=3), "add --cluster"),
        (ClusterOptions(cluster="slurm", n_jobs=2, adapt=(0, 4)), "exclude each other"),
        (ClusterOptions(cluster="condor"), "choose one of slurm, pbs, sge, lsf"),
    ],
)
def test_conflicting_choices_are_refused(options: ClusterOptions, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        choose_connection(options, environ={})


def test_local_sizing_uses_every_core_and_shares_memory() -> None:
    sizing = local_sizing(n_cores=8, memory_bytes=32 << 30)
    assert (sizing.n_workers, sizing.threads_per_worker) == (8, 1)
    assert sizing.memory_limit_bytes == int((32 << 30) * 0.9 / 8)
    sizing = local_sizing(n_cores=8, memory_bytes=32 << 30, threads_per_worker=2)
    assert (sizing.n_workers, sizing.threads_per_worker) == (4, 2)
    sizing = local_sizing(n_cores=2, memory_bytes=8 << 30, n_workers=1, memory_limit_bytes=1 << 30)
    assert (sizing.n_workers, sizing.memory_limit_bytes) == (1, 1 << 30)


def test_parse_adapt() -> None:
    assert parse_adapt("0:10") == (0, 10)
    for bad in ("10", "a:b", "5:2", "0:0", "-1:3"):
        with pytest.raises(PipelineError, match="--adapt"):
            parse_adapt(bad)


def test_local_cluster_runs_tasks_and_gives_a_loopback_dashboard() -> None:
    options = ClusterOptions(n_workers=1, memory_limit_bytes=512 << 20, dashboard_address="127.0.0.1:0")
    with open_cluster(options, environ={}) as (client, info):
        assert client.submit(sum, [1, 2, 3]).result() == 6
        assert info.kind == "local"
        assert info.scheduler_address.startswith("tcp://127.0.0.1:")
        assert info.dashboard_link.startswith("http://127.0.0.1:")
        assert "1 workers x 1 thread" in info.description
        workers = client.scheduler_info()["workers"]
        assert [worker["memory_limit"] for worker in workers.values()] == [512 << 20]


def test_an_unreachable_scheduler_gives_a_clear_error(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT_SECONDS", 1)
    unreachable = ClusterOptions(scheduler_address="tcp://127.0.0.1:9")
    with pytest.raises(PipelineError, match=r"cannot reach the Dask scheduler tcp://127\.0\.0\.1:9"):  # noqa: SIM117
        with open_cluster(unreachable, environ={}):
            pass
    missing = ClusterOptions(scheduler_file=str(tmp_path / "none.json"))
    with pytest.raises(PipelineError, match="no such scheduler file"), open_cluster(missing, environ={}):
        pass


def test_jobqueue_without_job_size_says_where_to_set_it() -> None:
    no_size = {"jobqueue.slurm.cores": None, "jobqueue.slurm.memory": None}
    with dask.config.set(no_size), pytest.raises(PipelineError, match=r"jobqueue\.yaml"):
        cluster_module._jobqueue_cluster("slurm")


def test_jobqueue_takes_the_users_defaults() -> None:
    settings = {
        "jobqueue.pbs.cores": 4,
        "jobqueue.pbs.memory": "16GB",
        "jobqueue.pbs.queue": "archive",
        "jobqueue.pbs.scheduler-options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    }
    with dask.config.set(settings):
        cluster = cluster_module._jobqueue_cluster("pbs")
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "#PBS -q archive" in script
    assert "ncpus=4" in script


def _fake_batch_cluster(calls: list[tuple[str, dict[str, int]]]) -> Any:
    """Stands in for a dask-jobqueue cluster: records scaling, runs work in-process on loopback."""
    from distributed import LocalCluster

    class FakeBatchCluster(LocalCluster):  # type: ignore[misc]
        def scale(self, n: int = 0, **kwargs: int) -> None:
            if kwargs:
                calls.append(("scale", kwargs))
            else:
                super().scale(n)

        def adapt(self, **kwargs: int) -> None:  # type: ignore[override]
            calls.append(("adapt", kwargs))

    return FakeBatchCluster(
        n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address="127.0.0.1:0"
    )


@pytest.mark.parametrize(
    ("options", "call"),
    [
        (ClusterOptions(cluster="slurm", n_jobs=3), ("scale", {"jobs": 3})),
        (ClusterOptions(cluster="sge"), ("scale", {"jobs": 1})),
        (ClusterOptions(cluster="lsf", adapt=(1, 5)), ("adapt", {"minimum_jobs": 1, "maximum_jobs": 5})),
    ],
)
def test_batch_clusters_are_scaled_as_asked(
    monkeypatch: pytest.MonkeyPatch, options: ClusterOptions, call: tuple[str, dict[str, int]]
) -> None:
    calls: list[tuple[str, dict[str, int]]] = []
    monkeypatch.setattr(cluster_module, "_jobqueue_cluster", lambda kind: _fake_batch_cluster(calls))
    with open_cluster(options, environ={}) as (client, info):
        assert info.kind == options.cluster
        assert info.scheduler_address.startswith("tcp://127.0.0.1:")
        assert client.submit(len, "abc").result() == 3
    assert calls == [call]
