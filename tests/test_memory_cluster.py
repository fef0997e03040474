"""Declared task memory on real Dask clusters: a worker runs only as many big conversions at once as fit,
a task needing more than any worker fails at once (no hang), and workers without the resource still work."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from drives import write_mrc

from empcompress.cluster import ClusterOptions, WorkerMemory, open_cluster
from empcompress.pipeline import CompressOptions, compress_drive, memory
from empcompress.pipeline import driver as driver_module

MIB = 1 << 20
WORKER_MEMORY_BYTES = 1 << 30
RUN_TIMEOUT_SECONDS = 240
OVERLAP_TOLERANCE_SECONDS = 0.05
#: Frames of each movie: enough that a conversion (~4 ms a frame) lasts well beyond the tolerance, so that
#: two run at once overlap by more than it (12 frames: 42 ms, which a loaded machine failed to show)
N_FRAMES = 36


@pytest.fixture(scope="module")
def two_thread_worker() -> Iterator[Any]:
    """One local worker process with 2 threads and 1 GiB, started as compress starts its workers."""
    options = ClusterOptions(
        n_workers=1,
        threads_per_worker=2,
        memory_limit_bytes=WORKER_MEMORY_BYTES,
        dashboard_address="127.0.0.1:0",
    )
    with open_cluster(options, environ={}) as (client, _info):
        yield client


def _drive(root: Path, *, n_movies: int = 4) -> Path:
    rng = np.random.default_rng(1)
    for index in range(n_movies):
        write_mrc(
            root / "Movies" / f"movie_{index}.mrc", rng.poisson(1.0, (N_FRAMES, 384, 384)).astype(np.float32)
        )
    for index in range(6):
        (root / "Notes" / f"note_{index}.txt").parent.mkdir(parents=True, exist_ok=True)
        (root / "Notes" / f"note_{index}.txt").write_text(str(index), encoding="utf-8")
    return root


def _run(source: Path, dest: Path, client: Any) -> Any:
    """compress_drive in a thread, which must end in time (a task that no worker can run would hang)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["summary"] = compress_drive(
                source, dest, client=client, options=CompressOptions(gain_sets=False)
            )
        except BaseException as error:  # pragma: no cover - reported below
            result["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(RUN_TIMEOUT_SECONDS)
    assert not thread.is_alive(), f"compress did not end within {RUN_TIMEOUT_SECONDS} s"
    if "error" in result:
        raise result["error"]
    return result["summary"]


def _conversion_intervals(task_stream: Any) -> list[tuple[float, float]]:
    intervals = []
    for record in task_stream.data:
        if "run_file_task" not in str(record["key"]):
            continue
        for start_stop in record["startstops"]:
            if start_stop["action"] == "compute":
                intervals.append((start_stop["start"], start_stop["stop"]))
    return sorted(intervals)


def _overlaps(intervals: list[tuple[float, float]]) -> bool:
    """Two conversions ran at once (more than the few milliseconds between the worker's timestamps of one
    task's end and its releasing the task's resources, which lets the next one start)."""
    return any(
        later[0] < earlier[1] - OVERLAP_TOLERANCE_SECONDS for earlier, later in itertools.pairwise(intervals)
    )


def test_the_workers_compress_starts_advertise_their_memory_limit(two_thread_worker: Any) -> None:
    workers = two_thread_worker.scheduler_info(n_workers=-1)["workers"]
    assert [(w["nthreads"], w["resources"]) for w in workers.values()] == [
        (2, {memory.RESOURCE: float(WORKER_MEMORY_BYTES)})
    ]


def test_a_two_thread_worker_runs_one_big_conversion_at_a_time(
    tmp_path: Path, two_thread_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distributed import get_task_stream

    source = _drive(tmp_path / "drive")
    # the conversions of these small movies declared as large: two do not fit the worker's 1 GiB at once
    monkeypatch.setattr(memory, "BASE_BYTES", 600 * MIB)
    with get_task_stream(two_thread_worker) as stream:
        summary = _run(source, tmp_path / "bag", two_thread_worker)
    assert summary.sealed and summary.n_converted == 4 and summary.n_failed == 0
    intervals = _conversion_intervals(stream)
    assert len(intervals) == 4
    assert not _overlaps(intervals), intervals

    # the same drive without declared memory: the worker's two threads convert two movies at once
    # (so the check above can fail)
    monkeypatch.setattr(
        driver_module,
        "worker_memory",
        lambda client: WorkerMemory(declare=False, largest_worker_bytes=0, source=""),
    )
    with get_task_stream(two_thread_worker) as stream:
        summary = _run(source, tmp_path / "bag-undeclared", two_thread_worker)
    assert summary.sealed and summary.n_converted == 4
    assert _overlaps(_conversion_intervals(stream))


def test_a_movie_needing_more_than_any_worker_fails_at_once_with_what_to_do(
    tmp_path: Path, two_thread_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _drive(tmp_path / "drive", n_movies=2)
    monkeypatch.setattr(memory, "BASE_BYTES", 2 * WORKER_MEMORY_BYTES)  # every conversion: more than 2 GiB
    summary = _run(source, tmp_path / "bag", two_thread_worker)
    assert not summary.sealed and summary.n_failed == 2 and summary.n_copied == 6  # the rest is done
    reasons = {failure.rel_path: failure.reason for failure in summary.failures}
    assert set(reasons) == {"Movies/movie_0.mrc", "Movies/movie_1.mrc"}
    reason = reasons["Movies/movie_0.mrc"]
    assert "Movies/movie_0.mrc (384x384, mode 2) needs about 2.0 GiB" in reason
    assert "more than any Dask worker offers (1.0 GiB" in reason and "--memory-limit" in reason
    assert "run the same command again" in reason


def test_workers_without_the_memory_resource_still_run_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An existing cluster whose workers do not advertise memory: tasks declare nothing and run."""
    from distributed import Client, LocalCluster

    source = _drive(tmp_path / "drive", n_movies=2)
    monkeypatch.setattr(memory, "BASE_BYTES", 64 * WORKER_MEMORY_BYTES)  # would fit no worker if declared
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=False,
            protocol="tcp",
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        summary = _run(source, tmp_path / "bag", client)
    assert summary.sealed and summary.n_converted == 2 and summary.n_failed == 0


# ---------------------------------------------------------------- what the command line says


def test_compress_says_how_the_local_workers_were_sized(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from empcompress.cli import main

    source = _drive(tmp_path / "drive", n_movies=1)
    code = main(
        [
            "compress",
            str(source),
            str(tmp_path / "bag"),
            "--workers",
            "1",
            "--dashboard-address",
            "127.0.0.1:0",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().err
    assert "Running on local cluster: 1 workers x 1 thread" in printed
    assert (
        "the largest conversion, Movies/movie_0.mrc (384x384, mode 2) needs about 0.3 GiB: 1 of those at once"
        in printed
    )


def test_a_memory_limit_too_small_for_the_largest_movie_is_refused_up_front(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from empcompress.cli import main

    source = _drive(tmp_path / "drive", n_movies=1)
    code = main(["compress", str(source), str(tmp_path / "bag"), "--memory-limit", "200MiB"])
    assert code == 1
    printed = capsys.readouterr().err
    errors = [line for line in printed.splitlines() if line.startswith("Error: ")]
    assert errors == [
        "Error: --memory-limit 0.2 GiB: Movies/movie_0.mrc (384x384, mode 2) needs about 0.3 GiB to convert; "
        "give at least --memory-limit 0.3GiB, or leave --memory-limit out to size the workers from the movies"
    ]
    assert "Traceback" not in printed
    assert not (tmp_path / "bag" / "bagit.txt").exists()
