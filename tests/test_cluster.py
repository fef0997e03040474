"""Choosing and opening the Dask cluster (local, existing, dask-jobqueue)."""

from __future__ import annotations

import functools
import time
from pathlib import Path
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
    monkeypatch.setattr(cluster_module, "_jobqueue_cluster", lambda kind, *args: _fake_batch_cluster(calls))
    with open_cluster(options, environ={}) as (client, info):
        assert info.kind == options.cluster
        assert info.scheduler_address.startswith("tcp://127.0.0.1:")
        assert client.submit(len, "abc").result() == 3
    assert calls == [call]


def test_worker_lifetime_reaches_the_job_script_after_the_users_own_arguments() -> None:
    settings = {
        "jobqueue.slurm.cores": 1,
        "jobqueue.slurm.memory": "2GiB",
        "jobqueue.slurm.worker-extra-args": ["--preload", "site.py"],
        "jobqueue.slurm.scheduler-options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    }
    options = ClusterOptions(cluster="slurm", worker_lifetime="50m", worker_lifetime_stagger="5 minutes")
    with dask.config.set(settings):
        cluster = cluster_module._jobqueue_cluster("slurm", cluster_module._lifetime_args(options))
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "--preload site.py --lifetime 3000s --lifetime-stagger 300s" in script


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ClusterOptions(worker_lifetime="50m"), "apply to a batch cluster"),
        (ClusterOptions(cluster="slurm", worker_lifetime_stagger="5m"), "needs --lifetime"),
    ],
)
def test_lifetime_options_are_checked(options: ClusterOptions, message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        choose_connection(options, environ={})


@pytest.mark.parametrize("bad", ["soon", "-5m", "0s"])
def test_a_lifetime_that_is_not_a_duration_is_refused(bad: str) -> None:
    with pytest.raises(PipelineError, match=f"--lifetime {bad}: expected a duration"):
        cluster_module._lifetime_args(ClusterOptions(cluster="slurm", worker_lifetime=bad))


class _FakeClient:
    def __init__(self, connected: int, requested: int | None) -> None:
        self.connected = connected
        if requested is not None:
            self.cluster = type(
                "Cluster", (), {"workers": {f"job-{i}": object() for i in range(requested)}}
            )()

    def nthreads(self) -> dict[str, int]:
        return {f"tcp://127.0.0.1:{i}": 1 for i in range(self.connected)}


def test_worker_supply_counts_connected_workers_and_jobs_still_coming() -> None:
    assert cluster_module.worker_supply(_FakeClient(2, 2)) == cluster_module.WorkerSupply(2, 0)
    assert cluster_module.worker_supply(_FakeClient(1, 3)) == cluster_module.WorkerSupply(1, 2)
    assert cluster_module.worker_supply(_FakeClient(0, 0)) == cluster_module.WorkerSupply(0, 0)
    # a cluster started elsewhere: what is coming is unknown
    assert cluster_module.worker_supply(_FakeClient(0, None)) == cluster_module.WorkerSupply(0, None)


def test_the_watch_says_all_gone_only_after_the_grace_period() -> None:
    from empcompress.pipeline.watch import WorkerWatch

    watch = WorkerWatch(_FakeClient(0, 0), grace_seconds=0.3, unknown_grace_seconds=60, check_seconds=0)
    assert not watch.all_gone()  # the first sight of no worker starts the grace period
    time.sleep(0.35)
    assert watch.all_gone()
    for client in (_FakeClient(1, 1), _FakeClient(0, 1)):  # a worker, or a job in the queue
        watch = WorkerWatch(client, grace_seconds=0, check_seconds=0)
        assert not watch.all_gone() and not watch.all_gone()
    unknown = WorkerWatch(_FakeClient(0, None), grace_seconds=0, unknown_grace_seconds=0.3, check_seconds=0)
    assert not unknown.all_gone() and not unknown.all_gone()
    time.sleep(0.35)
    assert unknown.all_gone()


def test_a_run_whose_workers_are_all_gone_stops_and_says_the_same_command_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster with no worker and none coming (every batch job ended): compress stops cleanly."""
    from distributed import Client, LocalCluster

    from empcompress.journal import Journal
    from empcompress.pipeline import compress_drive
    from empcompress.pipeline import driver as driver_module
    from empcompress.pipeline import run as run_module
    from empcompress.pipeline.watch import WorkerWatch

    source = tmp_path / "drive"
    source.mkdir()
    for index in range(5):
        (source / f"file-{index}.txt").write_text(str(index), encoding="utf-8")
    dest = tmp_path / "bag"
    monkeypatch.setattr(run_module, "_check_workers_see", lambda client, paths: None)
    monkeypatch.setattr(
        driver_module, "WorkerWatch", functools.partial(WorkerWatch, grace_seconds=0.5, check_seconds=0.1)
    )
    with (
        LocalCluster(
            n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        started = time.monotonic()
        with pytest.raises(PipelineError) as raised:
            compress_drive(source, dest, client=client)
        assert time.monotonic() - started < 30
    message = str(raised.value)
    assert (
        "no Dask worker is left" in message and "run the same command again to finish the other 5" in message
    )
    assert not (dest / "bagit.txt").exists()
    with Journal.open(dest, source=str(source.resolve())) as journal:  # consistent, and free again
        assert journal.entries() == {}
