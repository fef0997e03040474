"""Choosing and opening the Dask cluster (local, existing, dask-jobqueue)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dask
import dask_jobqueue  # noqa: F401  (loads its configuration defaults outside any dask.config.set)
import pytest

from empcompress import cluster as cluster_module
from empcompress.cluster import (
    ClusterOptions,
    choose_connection,
    lifetime_args,
    local_sizing,
    new_jobqueue_cluster,
    open_cluster,
    parse_adapt,
)
from empcompress.cluster import connect as connect_module
from empcompress.cluster import warm_up as warm_up_module
from empcompress.cluster.jobqueue import NANNY_MALLOC_EXPORT
from empcompress.cluster.warm_up import after_warm_up
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
    monkeypatch.setattr(connect_module, "CONNECT_TIMEOUT_SECONDS", 1)
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
        new_jobqueue_cluster("slurm")


def test_jobqueue_takes_the_users_defaults() -> None:
    settings = {
        "jobqueue.pbs.cores": 4,
        "jobqueue.pbs.memory": "16GB",
        "jobqueue.pbs.queue": "archive",
        "jobqueue.pbs.scheduler-options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    }
    with dask.config.set(settings):
        cluster = new_jobqueue_cluster("pbs")
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
    monkeypatch.setattr(
        connect_module, "new_jobqueue_cluster", lambda kind, *args: _fake_batch_cluster(calls)
    )
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
        cluster = new_jobqueue_cluster("slurm", lifetime_args(options))
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    assert "--preload site.py --lifetime 3000s --lifetime-stagger 300s" in script


@pytest.mark.parametrize("prologue_key", ["job-script-prologue", "env-extra"])
def test_the_jobs_nanny_starts_its_worker_without_pinned_malloc_thresholds(prologue_key: str) -> None:
    """The job script's last prologue line, run by bash, unsets Dask's MALLOC_TRIM_THRESHOLD_ for the
    worker the job's nanny spawns; the users' own prologue and Dask's other pre-spawn settings stay."""
    import subprocess
    import sys
    import warnings

    settings = {
        "jobqueue.slurm.cores": 1,
        "jobqueue.slurm.memory": "2GiB",
        f"jobqueue.slurm.{prologue_key}": ["export SITE_SETTING=1"],
        "jobqueue.slurm.scheduler-options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    }
    with dask.config.set(settings), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # env-extra is deprecated in dask-jobqueue
        cluster = new_jobqueue_cluster("slurm")
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    lines = script.splitlines()
    worker_line = next(index for index, line in enumerate(lines) if "distributed.cli.dask_worker" in line)
    assert lines[worker_line - 2 : worker_line] == ["export SITE_SETTING=1", NANNY_MALLOC_EXPORT]
    show = (
        "from distributed.nanny import _get_env_variables as get; "
        "print(sorted(get('distributed.nanny.pre-spawn-environ')))"
    )
    environ = {"PATH": "/usr/bin:/bin"}
    spawned = subprocess.run(
        ["bash", "-c", f'{NANNY_MALLOC_EXPORT}\n"$0" -c "$1"', sys.executable, show],
        capture_output=True, text=True, check=True, env=environ,
    ).stdout  # fmt: skip
    default = subprocess.run(
        [sys.executable, "-c", show], capture_output=True, text=True, check=True, env=environ
    ).stdout
    assert "MALLOC_TRIM_THRESHOLD_" in default  # what Dask's nanny does unless told otherwise
    assert "MALLOC_TRIM_THRESHOLD_" not in spawned
    assert "OMP_NUM_THREADS" in spawned  # merged into Dask's defaults, not replacing them


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
        lifetime_args(ClusterOptions(cluster="slurm", worker_lifetime=bad))


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
    monkeypatch.setattr(run_module, "_check_workers_see", lambda client, paths, *, stop: True)
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


# ---------------------------------------------------------------- batch jobs that die (cluster.jobs)


class _FakeJobCluster:
    """Stands in for a dask-jobqueue cluster: its plan, its submitted jobs, the workers connected."""

    def __init__(self) -> None:
        self.worker_spec: dict[str, dict[str, Any]] = {}
        self.workers: dict[str, Any] = {}
        self.scheduler_info: dict[str, dict[str, Any]] = {"workers": {}}
        self.scaled_down: list[str] = []

    def submit(self, name: str, job_id: str) -> None:
        self.worker_spec[name] = {}
        self.workers[name] = SimpleNamespace(job_id=job_id)

    def connect(self, worker_name: str) -> None:
        self.scheduler_info["workers"][f"tcp://10.0.0.1/{worker_name}"] = {"name": worker_name}

    def disconnect(self, worker_name: str) -> None:
        del self.scheduler_info["workers"][f"tcp://10.0.0.1/{worker_name}"]

    async def scale_down(self, names: list[str]) -> None:
        self.scaled_down += names
        for name in names:
            self.worker_spec.pop(name, None)
            self.workers.pop(name, None)


class _Squeue:
    """What SLURM says of each job (a job not in ``states`` is not listed: ended and forgotten)."""

    def __init__(self) -> None:
        self.states: dict[str, str] = {}
        self.asked: list[list[str]] = []
        self.answer = True
        self.meanwhile: Any = None  # what happens in the cluster while squeue answers

    async def __call__(self, job_ids: Any) -> dict[str, str] | None:
        self.asked.append(list(job_ids))
        if self.meanwhile is not None:
            self.meanwhile()
        return dict(self.states) if self.answer else None


def _watched(max_jobs: int = 1, adaptive: Any = None) -> tuple[Any, _FakeJobCluster, _Squeue, list[float]]:
    from empcompress.cluster.jobs import JobWatch

    cluster, squeue, now = _FakeJobCluster(), _Squeue(), [0.0]
    watch = JobWatch(
        cluster, kind="slurm", max_jobs=max_jobs, adaptive=adaptive, query=squeue, connect_seconds=100,
        clock=lambda: now[0],
    )  # fmt: skip
    return watch, cluster, squeue, now


def _names(cluster: _FakeJobCluster) -> list[str]:
    return [worker["name"] for worker in cluster.scheduler_info["workers"].values()]


def test_a_job_that_fails_before_its_worker_connects_is_no_longer_coming() -> None:
    watch, cluster, squeue, _now = _watched(max_jobs=2)
    cluster.submit("C-0", "41")
    cluster.submit("C-1", "42")
    squeue.states = {"41": "PENDING", "42": "PENDING"}
    asyncio.run(watch.check())
    assert watch.n_coming(_names(cluster)) == 2 and cluster.scaled_down == [] and watch.ended_text() == ""
    squeue.states = {"41": "FAILED", "42": "PENDING"}
    asyncio.run(watch.check())
    assert cluster.scaled_down == ["C-0"]  # out of the plan: --adapt may request another job
    assert watch.n_coming(_names(cluster)) == 1
    squeue.states = {"42": "RUNNING"}  # job 41 no longer listed at all
    asyncio.run(watch.check())
    assert squeue.asked[-1] == ["42"]
    text = watch.ended_text()
    assert text.startswith(
        "1 SLURM job ended before its worker connected: job 41 (failed); each job's output"
    )
    del squeue.states["42"]  # cancelled and already forgotten by SLURM (squeue no longer lists it)
    asyncio.run(watch.check())
    assert cluster.scaled_down == ["C-0", "C-1"] and watch.n_coming(_names(cluster)) == 0
    assert "2 SLURM jobs ended before their workers connected: job 41 (failed), job 42 (ended)" in (
        watch.ended_text()
    )


def test_a_job_running_without_its_worker_for_too_long_is_cancelled() -> None:
    watch, cluster, squeue, now = _watched()
    cluster.submit("C-0", "7")
    squeue.states = {"7": "PENDING"}
    now[0] = 1000.0  # pending for long: the queue's business, not a failed start
    asyncio.run(watch.check())
    squeue.states = {"7": "RUNNING"}
    asyncio.run(watch.check())  # SLURM started it now
    now[0] = 1099.0
    asyncio.run(watch.check())
    assert cluster.scaled_down == []
    now[0] = 1100.0
    asyncio.run(watch.check())
    assert cluster.scaled_down == ["C-0"]  # scale_down also cancels the job
    assert "job 7 (running 100 s without its worker connecting: cancelled)" in watch.ended_text()


def test_jobs_whose_workers_were_lost_are_replaced_but_not_counted_as_failed_starts() -> None:
    watch, cluster, squeue, _now = _watched()
    cluster.submit("C-0", "1")
    cluster.connect("C-0")
    asyncio.run(watch.check())
    assert squeue.asked == []  # every job has its worker: SLURM is not asked
    cluster.disconnect("C-0")  # the job reached its time limit
    squeue.states = {"1": "TIMEOUT"}
    asyncio.run(watch.check())
    # left to dask, which drops it lost-worker-timeout later (and would then cancel a job of that name);
    # SLURM is asked once what ended it
    assert cluster.scaled_down == [] and squeue.asked == [["1"]]
    asyncio.run(watch.check())
    assert squeue.asked == [["1"]]  # it said: not asked again
    del cluster.workers["C-0"]  # dropped by dask, but still planned: --adapt would never replace it
    asyncio.run(watch.check())
    assert cluster.scaled_down == ["C-0"] and "C-0" not in cluster.worker_spec
    assert watch.ended_text() == "" and watch.failed_in_a_row == 0
    assert watch.gone_text().startswith("1 SLURM job reached its time limit (TIMEOUT: job 1); each job's")


def test_a_lost_workers_job_is_asked_about_until_slurm_says_how_it_ended_and_no_longer() -> None:
    """Bounded: SLURM is asked about a job from its worker's loss until it says the job ended, or until
    dask drops the job; never about a job whose worker is connected (busy)."""
    watch, cluster, squeue, _now = _watched(max_jobs=3)
    for name, job_id in (("C-0", "1"), ("C-1", "2"), ("C-2", "3")):
        cluster.submit(name, job_id)
        cluster.connect(name)
    asyncio.run(watch.check())
    cluster.disconnect("C-0")  # scancel: SLURM stops its processes first
    cluster.disconnect("C-1")  # its worker is lost, but SLURM still runs the job (a network cut)
    squeue.states = {"1": "COMPLETING", "2": "RUNNING", "3": "RUNNING"}
    asyncio.run(watch.check())
    squeue.states["1"] = "CANCELLED"
    asyncio.run(watch.check())
    asyncio.run(watch.check())
    assert squeue.asked == [["1", "2"], ["1", "2"], ["2"]]  # never job 3, whose worker is busy
    del cluster.workers["C-1"]  # dask drops it (and cancels it then: not asked again)
    asyncio.run(watch.check())
    asyncio.run(watch.check())
    assert squeue.asked == [["1", "2"], ["1", "2"], ["2"]]
    assert watch.gone_text().startswith(
        "1 SLURM job was cancelled (CANCELLED: job 1), 1 SLURM job lost its worker while SLURM still "
        "ran it, and dask cancelled it (RUNNING: job 2); each job's output"
    )
    # a job --adapt retires (out of the plan, dask cancels it) is not asked about
    del cluster.worker_spec["C-2"]
    cluster.disconnect("C-2")
    asyncio.run(watch.check())
    assert squeue.asked[-1] == ["2"] and "job 3" not in watch.gone_text()


def test_what_ended_the_jobs_is_summarised_with_their_log_directory(tmp_path: Path) -> None:
    with dask.config.set({"jobqueue.slurm.log-directory": str(tmp_path / "logs")}):
        watch, cluster, squeue, _now = _watched(max_jobs=8)
    for job in range(1, 6):  # five jobs whose workers connected and reached their time limit
        cluster.submit(f"C-{job}", str(job))
        cluster.connect(f"C-{job}")
    cluster.submit("C-6", "6")  # one that failed before its worker connected
    squeue.states = {"6": "PENDING"}
    asyncio.run(watch.check())
    for job in range(1, 6):
        cluster.disconnect(f"C-{job}")
    squeue.states = {**{str(job): "TIMEOUT" for job in range(1, 6)}, "6": "FAILED"}
    asyncio.run(watch.check())
    assert watch.gone_text() == (
        f"1 SLURM job exited with an error (FAILED: job 6), 5 SLURM jobs reached their time limit "
        f"(TIMEOUT: jobs 1, 2, 3 and 2 more); each job's output, in {tmp_path / 'logs'}, says why"
    )


def test_jobs_of_other_batch_systems_are_not_asked_about_and_not_guessed() -> None:
    from empcompress.cluster.jobs import JobWatch

    cluster = _FakeJobCluster()
    watch = JobWatch(cluster, kind="pbs", max_jobs=1)
    assert watch.query is None
    cluster.submit("C-0", "77.server")
    cluster.connect("C-0")
    asyncio.run(watch.check())
    cluster.disconnect("C-0")
    del cluster.workers["C-0"]
    asyncio.run(watch.check())
    assert watch.gone_text() == (
        "their PBS jobs ended or lost their workers; empcompress asks only SLURM what ended a job, so "
        "each job's output file says why"
    )


def test_a_name_resubmitted_while_squeue_answers_is_not_forgotten() -> None:
    """dask reuses job names: --adapt may submit a lost job's name again while the watch asks SLURM."""
    watch, cluster, squeue, _now = _watched(max_jobs=2)
    cluster.submit("C-0", "1")
    cluster.connect("C-0")
    cluster.submit("C-1", "2")
    squeue.states = {"2": "PENDING"}
    asyncio.run(watch.check())
    cluster.disconnect("C-0")
    del cluster.workers["C-0"]  # lost, dropped by dask, still planned
    squeue.meanwhile = lambda: cluster.submit("C-0", "3")  # --adapt submits it again meanwhile
    asyncio.run(watch.check())
    assert cluster.scaled_down == [] and cluster.workers["C-0"].job_id == "3"
    assert watch.n_coming([]) == 2


def test_unknown_states_keep_the_jobs_coming_and_several_workers_per_job_count() -> None:
    from empcompress.cluster.jobs import jobs_with_workers

    watch, cluster, squeue, _now = _watched()
    cluster.submit("C-0", "5")
    squeue.answer = False  # squeue does not answer: nothing is decided
    asyncio.run(watch.check())
    assert cluster.scaled_down == [] and watch.n_coming([]) == 1
    assert jobs_with_workers({"C-1", "C-12", "C-2"}, ["C-1-0", "C-12", "other"]) == {"C-1", "C-12"}


def test_a_job_that_adapt_scales_down_before_it_connects_is_not_a_failed_start() -> None:
    watch, cluster, squeue, _now = _watched()
    cluster.submit("C-0", "3")
    squeue.states = {"3": "PENDING"}
    asyncio.run(watch.check())
    del cluster.worker_spec["C-0"]  # out of the plan: dask is cancelling it (scancel, then dropped)
    squeue.states = {"3": "CANCELLED"}
    asyncio.run(watch.check())
    assert watch.ended_text() == "" and watch.failed_in_a_row == 0 and cluster.scaled_down == []


def test_after_too_many_failed_starts_in_a_row_no_job_is_expected() -> None:
    class Adaptive:
        stopped = False

        def stop(self) -> None:
            self.stopped = True

    adaptive = Adaptive()
    watch, cluster, squeue, _now = _watched(max_jobs=1, adaptive=adaptive)  # limit: 3 in a row
    for job in range(1, 4):
        cluster.submit("C-0", str(job))  # --adapt submitted it in place of the one before (the same name)
        squeue.states = {str(job): "FAILED"}
        assert watch.n_coming([]) == 1
        asyncio.run(watch.check())
        assert cluster.scaled_down == ["C-0"] * job
    assert watch.gave_up and adaptive.stopped
    cluster.submit("C-0", "4")  # submitted meanwhile: not waited for
    assert watch.n_coming([]) == 0
    assert watch.ended_text().startswith("3 SLURM jobs ended before their workers connected: job 1 (failed)")


def test_worker_supply_asks_the_watch_of_a_batch_cluster() -> None:
    from empcompress.cluster.jobs import _WATCHES

    watch, cluster, squeue, _now = _watched()
    cluster.submit("C-0", "9")
    squeue.states = {"9": "CANCELLED"}
    asyncio.run(watch.check())

    class Client:
        def __init__(self) -> None:
            self.cluster = cluster

        def nthreads(self) -> dict[str, int]:
            return {}

        def scheduler_info(self, n_workers: int = 5) -> dict[str, Any]:
            return cluster.scheduler_info

    _WATCHES[id(cluster)] = watch
    try:
        supply = cluster_module.worker_supply(Client())
    finally:
        del _WATCHES[id(cluster)]
    assert (supply.n_connected, supply.n_coming) == (0, 0)
    assert "job 9 (cancelled)" in supply.jobs_ended


def test_a_run_whose_jobs_all_ended_says_what_ended_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's stop names what SLURM said ended the jobs (the cluster's job watch, through
    worker_supply), and that the same command finishes the rest."""
    from distributed import Client

    from empcompress.cluster.jobs import _WATCHES
    from empcompress.pipeline import compress_drive
    from empcompress.pipeline import driver as driver_module
    from empcompress.pipeline import run as run_module
    from empcompress.pipeline.watch import WorkerWatch

    watch, jobs, squeue, _now = _watched(max_jobs=2)
    for job in ("41", "42"):
        jobs.submit(f"C-{job}", job)
        jobs.connect(f"C-{job}")
    asyncio.run(watch.check())
    for job in ("41", "42"):
        jobs.disconnect(f"C-{job}")
    squeue.states = {"41": "TIMEOUT", "42": "TIMEOUT"}
    asyncio.run(watch.check())
    jobs.workers.clear()  # dropped by dask
    asyncio.run(watch.check())
    source = _small_drive(tmp_path / "drive")
    monkeypatch.setattr(run_module, "_check_workers_see", lambda client, paths, *, stop: True)
    monkeypatch.setattr(
        driver_module, "WorkerWatch", functools.partial(WorkerWatch, grace_seconds=0.5, check_seconds=0.1)
    )
    with _in_process_cluster(0) as cluster, Client(cluster) as client:
        _WATCHES[id(cluster)] = watch  # as open_cluster does for the batch cluster it opens
        try:
            with pytest.raises(PipelineError) as raised:
                compress_drive(source, tmp_path / "bag", client=client)
        finally:
            del _WATCHES[id(cluster)]
    message = str(raised.value)
    assert message.startswith(
        "no Dask worker is left and none is coming: 2 SLURM jobs reached their time limit (TIMEOUT: jobs "
        "41, 42); each job's output, slurm-JOBID.out in "
    ), message
    assert "the files finished so far are kept; run the same command again to finish the other 5" in message


# ---------------------------------------------------------------- a worker's warm-up (cluster.warm_up)

_WARM_UP_RELEASE = threading.Event()
_ORDER: list[str] = []


def _held_warm_up() -> None:
    """A warm-up that takes long (until the test lets it go, 8 s at most)."""
    _WARM_UP_RELEASE.wait(8)
    _ORDER.append("warm-up")


@after_warm_up
def _noted_task(value: int) -> int:
    _ORDER.append("task")
    return value + 1


def test_a_slow_warm_up_does_not_hold_up_the_start_of_a_worker_that_joins_later() -> None:
    """A worker joining after the plugin was registered (a batch job's) runs the plugin's setup inside
    its start, which its death timeout bounds (dask-jobqueue: 60 s): a warm-up run there killed the
    worker. Now the worker starts at once, and a task that arrives meanwhile waits for the warm-up."""
    from distributed import Client, Scheduler, Worker

    _WARM_UP_RELEASE.clear()
    _ORDER.clear()

    async def join_late() -> tuple[float, list[str], int]:
        async with (
            Scheduler(host="127.0.0.1", port=0, dashboard_address="127.0.0.1:0") as scheduler,
            Client(scheduler.address, asynchronous=True) as client,
        ):
            await client.register_plugin(connect_module._setup_plugin(_held_warm_up))
            started = time.monotonic()
            async with Worker(scheduler.address, nthreads=2, death_timeout=2, host="127.0.0.1"):
                start_seconds = time.monotonic() - started
                task = client.submit(_noted_task, 1)
                await asyncio.sleep(0.5)
                before_release = list(_ORDER)
                _WARM_UP_RELEASE.set()
                result = await task
        return start_seconds, before_release, result

    try:
        start_seconds, before_release, result = asyncio.run(join_late())
    finally:
        _WARM_UP_RELEASE.set()
    assert start_seconds < 2 and before_release == [] and result == 2
    assert _ORDER == ["warm-up", "task"]


def test_a_task_waits_for_every_warm_up_of_its_process_and_a_failed_one_lets_it_go() -> None:
    release = threading.Event()
    ran: list[str] = []

    def failing() -> None:
        release.wait(8)
        ran.append("failed warm-up")
        raise RuntimeError("no cache")

    def slow() -> None:
        time.sleep(0.3)
        ran.append("warm-up")

    threads = [warm_up_module.start_in_background(failing), warm_up_module.start_in_background(slow)]
    waiting = threading.Thread(target=lambda: ran.append(f"task {_noted_task(1)}"))
    waiting.start()
    try:
        deadline = time.monotonic() + 5
        while ran != ["warm-up"] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        assert ran == ["warm-up"]  # the slow warm-up is done, the task still waits for the other
    finally:
        release.set()
    waiting.join(5)
    for thread in threads:
        thread.join(5)
    assert ran == ["warm-up", "failed warm-up", "task 2"]
    warm_up_module.wait_for_warm_up()  # nothing running: returns at once


def test_a_hung_warm_up_holds_tasks_only_so_long_and_a_warm_up_never_waits_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release = threading.Event()
    hung = warm_up_module.start_in_background(lambda: release.wait(8) and None)
    try:
        started = time.monotonic()
        assert warm_up_module.wait_for_warm_up(timeout_seconds=0.2) is False
        monkeypatch.setattr(warm_up_module, "WARM_UP_WAIT_SECONDS", 0.2)
        assert _noted_task(1) == 2  # runs anyway once the wait is over
        assert time.monotonic() - started < 2
    finally:
        release.set()
    hung.join(5)
    assert warm_up_module.wait_for_warm_up(timeout_seconds=0) is True

    monkeypatch.undo()  # (a warm-up waiting for itself would now wait the full 600 s)
    results: list[int] = []
    calling = warm_up_module.start_in_background(lambda: results.append(_noted_task(5)))  # a task inside
    calling.join(5)
    assert not calling.is_alive() and results == [6]


def test_every_function_the_pipeline_sends_to_workers_waits_for_the_warm_up() -> None:
    """Every task function that runs conversions or kernels is wrapped (check_paths_task need not be)."""
    from empcompress.pipeline import gain_tasks, tasks

    sent = [getattr(gain_tasks, name) for name in dir(gain_tasks) if name.endswith("_task")]
    sent += [tasks.run_file_task, tasks.run_file_batch, tasks.classify_task]
    unwrapped = [function.__name__ for function in sent if not hasattr(function, "__wrapped__")]
    assert len(sent) >= 13 and unwrapped == []


# ---------------------------------------------------------------- the check that workers see SRC and DEST

_RELEASE = threading.Event()


def _hanging_check(paths: tuple[str, ...]) -> tuple[str, ...]:
    """A worker whose file system does not answer (until the test lets it go)."""
    _RELEASE.wait(60)
    return ()


def _in_process_cluster(n_workers: int) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n_workers,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )


def _small_drive(root: Path, n_files: int = 5) -> Path:
    root.mkdir()
    for index in range(n_files):
        (root / f"file-{index}.txt").write_text(str(index), encoding="utf-8")
    return root


def test_a_worker_that_hangs_on_the_check_stops_the_run_with_the_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client

    from empcompress.pipeline import compress_drive
    from empcompress.pipeline import run as run_module

    source = _small_drive(tmp_path / "drive")
    dest = tmp_path / "bag"
    monkeypatch.setattr(run_module, "check_paths_task", _hanging_check)
    monkeypatch.setattr(run_module, "CHECK_PATHS_TIMEOUT_SECONDS", 1.0)
    _RELEASE.clear()
    with _in_process_cluster(1) as cluster, Client(cluster) as client:
        started = time.monotonic()
        try:
            with pytest.raises(PipelineError) as raised:
                compress_drive(source, dest, client=client)
        finally:
            _RELEASE.set()  # the worker's thread, before the cluster closes
        assert time.monotonic() - started < 20
    message = str(raised.value)
    assert "did not say within 1 s whether it sees" in message
    assert f"{source.resolve()} and {dest.resolve() / 'data'}" in message
    assert "run the same command again" in message and "\n" not in message
    assert not (dest / "bagit.txt").exists()


def test_no_worker_and_none_coming_stops_the_check_instead_of_waiting_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import Client

    from empcompress.pipeline import compress_drive
    from empcompress.pipeline import run as run_module
    from empcompress.pipeline.watch import WorkerWatch

    source = _small_drive(tmp_path / "drive")
    monkeypatch.setattr(
        run_module, "WorkerWatch", functools.partial(WorkerWatch, grace_seconds=0.5, check_seconds=0.1)
    )
    events: list[Any] = []
    with _in_process_cluster(0) as cluster, Client(cluster) as client:
        started = time.monotonic()
        with pytest.raises(PipelineError, match="no Dask worker connected and none is coming") as raised:
            compress_drive(source, tmp_path / "bag", client=client, on_event=events.append)
        assert time.monotonic() - started < 20
    assert "run the same command again: it does the rest" in str(raised.value)
    assert not [event for event in events if "stopping" in str(getattr(event, "message", ""))]


def test_an_error_mid_run_stops_the_work_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The running tasks are told to stop, and "stopping ..." is said, once (it was twice)."""
    from distributed import Client

    from empcompress.pipeline import compress_drive
    from empcompress.pipeline import driver as driver_module

    def run_then_fail(self: Any) -> None:
        self.refill()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(driver_module.Driver, "run", run_then_fail)
    source = _small_drive(tmp_path / "drive")
    events: list[Any] = []
    with (
        _in_process_cluster(1) as cluster,
        Client(cluster) as client,
        pytest.raises(OSError, match="No space left"),
    ):
        compress_drive(source, tmp_path / "bag", client=client, on_event=events.append)
    stopping = [event for event in events if str(getattr(event, "message", "")).startswith("stopping")]
    assert len(stopping) == 1, events


# ---------------------------------------------------------------- frame buffers kept from task to task


def test_a_worker_keeps_frame_buffers_from_setup_to_teardown(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker plugin keeps the conversions' frame buffers between tasks, and lets go on teardown;
    a gain task lets go of idle ones before it starts (its memory is declared without them)."""
    import numpy as np

    from empcompress import frame_buffers
    from empcompress.pipeline.gain_tasks import load_reference_task

    monkeypatch.setattr(frame_buffers, "MIN_POOLED_BYTES", 1)
    monkeypatch.setattr(
        connect_module, "apply_malloc_policy", lambda: None
    )  # (not for the whole pytest process)
    assert frame_buffers.frame_buffer_usage().n_buffers == 0
    plugin = connect_module._setup_plugin(lambda: None)
    plugin.setup(worker=None)
    try:
        buffer = frame_buffers.frame_buffer(4096, np.uint8)
        del buffer  # a conversion task's buffer, free again once the task is done
        assert frame_buffers.frame_buffer_usage().idle_bytes == 4096
        assert load_reference_task("/nonexistent/gain.mrc") is None
        assert frame_buffers.frame_buffer_usage().n_buffers == 0
        buffer = frame_buffers.frame_buffer(4096, np.uint8)
        del buffer
        assert frame_buffers.frame_buffer_usage().idle_bytes == 4096
    finally:
        plugin.teardown(worker=None)
    assert frame_buffers.frame_buffer_usage().n_buffers == 0


def _convert_and_report(source: str, output: str) -> tuple[int, int]:
    """On a worker: convert, then (buffers allocated since the pool was emptied, high-water mark)."""
    from empcompress import frame_buffers
    from empcompress.convert import convert_movie

    convert_movie(source, output)
    usage = frame_buffers.frame_buffer_usage()
    return usage.n_allocated, usage.high_water_bytes


def test_a_workers_second_conversion_reuses_the_first_ones_buffers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Through distributed itself: the plugin's setup keeps the buffers, the next task reuses them, and
    closing the cluster (the plugin's teardown) lets go of them."""
    import numpy as np
    from distributed import Client, LocalCluster
    from mrc_factory import write_mrc

    from empcompress import frame_buffers

    monkeypatch.setattr(frame_buffers, "MIN_POOLED_BYTES", 1)
    values = np.random.default_rng(5).poisson(0.3, size=(5, 64, 72)).astype(np.float32)
    source = write_mrc(tmp_path / "movie.mrc", values, mode=2)
    with (
        LocalCluster(
            n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        connect_module._register_setup(client, lambda: None)
        first = client.submit(_convert_and_report, str(source), str(tmp_path / "a.tif"), pure=False).result()
        second = client.submit(_convert_and_report, str(source), str(tmp_path / "b.tif"), pure=False).result()
    assert first[0] > 0 and second == first  # the second conversion allocated no buffer
    assert frame_buffers.frame_buffer_usage().n_buffers == 0


def test_a_worker_keeps_idle_buffers_below_its_memory_managers_thresholds() -> None:
    """Idle buffers must never make Dask spill or pause a worker (a paused worker runs no task that
    could let go of them)."""
    from empcompress.pipeline.memory import BASE_BYTES

    gib = 1 << 30
    manager = SimpleNamespace(
        memory_limit=4 * gib, memory_target_fraction=0.6, memory_spill_fraction=0.7, memory_pause_fraction=0.8
    )
    assert (
        connect_module.idle_frame_buffer_bytes(SimpleNamespace(memory_manager=manager))
        == int(0.6 * 4 * gib) - BASE_BYTES
    )
    manager.memory_target_fraction = False  # (turned off in a Dask configuration)
    assert (
        connect_module.idle_frame_buffer_bytes(SimpleNamespace(memory_manager=manager))
        == int(0.7 * 4 * gib) - BASE_BYTES
    )
    manager.memory_limit = 0  # no limit
    assert connect_module.idle_frame_buffer_bytes(SimpleNamespace(memory_manager=manager)) is None
    assert connect_module.idle_frame_buffer_bytes(None) is None
