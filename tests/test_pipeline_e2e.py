"""``empcompress compress`` end to end, as a command: a generated drive, kill -9 and resume, a real
multi-process Dask cluster started from the command line (on loopback), a worker killed mid-run, and
two runs on one destination.

Every process started here is killed in a ``finally`` (its whole process group)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import bagit
import pytest
from drives import make_drive, snapshot_tree
from test_pipeline import recover_everything, temporaries

from empcompress.journal import Journal, journal_path
from empcompress.scan import gain_support

pytestmark = pytest.mark.slow

EMPCOMPRESS = ["empcompress"]
LOCAL = ["--dashboard-address", "127.0.0.1:0"]


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        process.wait(timeout=30)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts (each in its own session); all are killed afterwards."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for process in started:
            _kill_group(process)


def start(processes: list[subprocess.Popen[str]], command: list[str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    processes.append(process)
    return process


def run(
    processes: list[subprocess.Popen[str]], command: list[str], timeout: float = 300
) -> tuple[int, str, str]:
    process = start(processes, command)
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def done_rows(dest: Path) -> int:
    path = journal_path(dest)
    if not path.exists():
        return 0
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return int(connection.execute("SELECT COUNT(*) FROM files WHERE state = 'done'").fetchone()[0])
        finally:
            connection.close()
    except sqlite3.Error:
        return 0


def assert_valid_bag(dest: Path) -> None:
    bagit.Bag(str(dest)).validate()
    result = subprocess.run(
        ["sha256sum", "--quiet", "-c", "manifest-sha256.txt"], cwd=dest, capture_output=True
    )
    assert result.returncode == 0, result.stdout


def bag_content(dest: Path) -> dict[str, bytes]:
    """The payload and the manifests (what must not depend on how the run went)."""
    content = {f"data/{name}": data for name, (data, _) in snapshot_tree(dest / "data").items()}
    for name in ("manifest-sha256.txt", "manifest-md5.txt"):
        content[name] = (dest / name).read_bytes()
    return content


def test_whole_drive_end_to_end(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    with_gain = gain_support() is not None
    source = make_drive(tmp_path / "drive", gain_sets=with_gain, n_frames=16 if with_gain else 6)
    before = snapshot_tree(source)
    dest = tmp_path / "bag"

    code, stdout, stderr = run(processes, [*EMPCOMPRESS, "scan", str(source)])
    assert code == 0, stderr
    assert "corrupt.mrc" in stdout and "Expected:" in stdout
    code, stdout, stderr = run(processes, [*EMPCOMPRESS, "scan", str(source), "--json"])
    assert code == 0, stderr
    plan = json.loads(stdout)
    assert len(plan["files"]) == len(before) and plan["expected_output_size_bytes"] > 0

    code, stdout, stderr = run(
        processes, [*EMPCOMPRESS, "compress", str(source), str(dest), "--workers", "2", *LOCAL]
    )
    # every file is in the bag, but the corrupt movie was kept as it was: not everything was converted
    assert code == 3, stdout + stderr
    assert "Running on local cluster: 2 workers" in stderr and "dashboard: http://127.0.0.1:" in stderr
    assert "Movies kept as they were, NOT converted (1)" in stdout and "corrupt.mrc" in stdout
    assert snapshot_tree(source) == before
    assert_valid_bag(dest)
    recover_everything(source, dest, tmp_path / "scratch")
    assert temporaries(dest) == []
    if with_gain:
        assert (dest / "data" / "Gain set" / "gain-reference.mrc").is_file()

    code, stdout, stderr = run(processes, [*EMPCOMPRESS, "verify", str(dest), "--full"])
    assert code == 0, stdout + stderr
    assert stdout.startswith("OK ")

    code, stdout, _ = run(processes, [*EMPCOMPRESS, "compress", str(source), str(dest), *LOCAL])
    assert code == 3 and "Nothing to do" in stdout

    damaged = dest / "data" / "notes.txt"
    damaged.write_text("changed after the fact\n", encoding="utf-8")
    code, stdout, _ = run(processes, [*EMPCOMPRESS, "verify", str(dest)])
    assert code == 1 and "data/notes.txt" in stdout


def test_kill_9_then_resume_gives_the_same_bag(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    source = make_drive(tmp_path / "drive", shape=(384, 384), n_frames=24, n_extra_movies=12)
    reference = tmp_path / "reference"
    code, _, stderr = run(
        processes, [*EMPCOMPRESS, "compress", str(source), str(reference), "--no-gain-sets", *LOCAL]
    )
    assert code == 3, stderr

    dest = tmp_path / "bag"
    command = [*EMPCOMPRESS, "compress", str(source), str(dest), "--no-gain-sets", *LOCAL]
    victim = start(processes, command)
    deadline = time.monotonic() + 120
    while done_rows(dest) < 3 and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert victim.poll() is None, "the run finished before it could be killed; make the drive bigger"
    _kill_group(victim)
    assert not (dest / "bagit.txt").exists()

    code, stdout, stderr = run(processes, command)
    assert code == 3, stdout + stderr
    assert temporaries(dest) == []
    assert bag_content(dest) == bag_content(reference)
    assert_valid_bag(dest)

    code, stdout, _ = run(processes, command)
    assert code == 3 and "Nothing to do" in stdout and "nothing converted" in stdout


@pytest.fixture
def dask_cluster(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> Iterator[tuple[Path, list[int]]]:
    """A scheduler and two single-threaded workers started with the ``dask`` command, on loopback."""
    scheduler_file = tmp_path / "scheduler.json"
    start(
        processes,
        [
            "dask",
            "scheduler",
            "--scheduler-file",
            str(scheduler_file),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
        ],
    )
    workers = [
        start(
            processes,
            [
                "dask",
                "worker",
                "--scheduler-file",
                str(scheduler_file),
                "--nthreads",
                "1",
                "--memory-limit",
                "1GiB",
                "--no-nanny",
                "--host",
                "127.0.0.1",
                "--dashboard-address",
                "127.0.0.1:0",
                "--name",
                f"w{index}",
            ],
        )
        for index in range(2)
    ]
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
    yield scheduler_file, [worker.pid for worker in workers]


def test_on_a_cluster_started_from_the_command_line(
    tmp_path: Path, processes: list[subprocess.Popen[str]], dask_cluster: tuple[Path, list[int]]
) -> None:
    scheduler_file, _ = dask_cluster
    source = make_drive(tmp_path / "drive")
    dest = tmp_path / "bag"
    code, stdout, stderr = run(
        processes, [*EMPCOMPRESS, "compress", str(source), str(dest), "--scheduler-file", str(scheduler_file)]
    )
    assert code == 3, stdout + stderr
    assert "existing cluster at tcp://127.0.0.1:" in stderr and "2 workers, 2 threads" in stderr
    assert_valid_bag(dest)
    recover_everything(source, dest, tmp_path / "scratch")


def test_a_worker_killed_mid_run_has_its_task_retried_elsewhere(
    tmp_path: Path, processes: list[subprocess.Popen[str]], dask_cluster: tuple[Path, list[int]]
) -> None:
    scheduler_file, worker_pids = dask_cluster
    source = make_drive(tmp_path / "drive", shape=(512, 512), n_frames=24, n_extra_movies=8)
    dest = tmp_path / "bag"
    compress = start(
        processes,
        [
            *EMPCOMPRESS,
            "compress",
            str(source),
            str(dest),
            "--scheduler-file",
            str(scheduler_file),
            "--no-gain-sets",
        ],
    )
    victim = worker_pids[0]
    marker = f"-tmp-{victim}-"
    deadline = time.monotonic() + 120
    killed = False
    while compress.poll() is None and time.monotonic() < deadline:
        if (dest / "data").is_dir() and any(marker in path.name for path in (dest / "data").rglob("*")):
            os.kill(victim, signal.SIGKILL)  # it is writing an output right now
            killed = True
            break
        time.sleep(0.005)
    assert killed, "never saw the worker writing; make the drive bigger"
    stdout, stderr = compress.communicate(timeout=300)
    assert compress.returncode == 3, stdout + stderr
    assert "FAILED" not in stdout
    assert_valid_bag(dest)
    recover_everything(source, dest, tmp_path / "scratch")
    assert temporaries(dest) == []


def test_two_runs_on_one_destination(tmp_path: Path, processes: list[subprocess.Popen[str]]) -> None:
    source = tmp_path / "drive"
    source.mkdir()
    (source / "a.txt").write_text("a", encoding="utf-8")
    dest = tmp_path / "bag"
    with Journal.open(dest, source=str(source.resolve())):
        code, _, stderr = run(processes, [*EMPCOMPRESS, "compress", str(source), str(dest), *LOCAL])
    assert code == 1
    assert "Error:" in stderr and "another empcompress run is using this destination" in stderr
    assert f"pid {os.getpid()}" in stderr
    assert not (dest / "data" / "a.txt").exists()
    shutil.rmtree(dest)


def test_ctrl_c_stops_cleanly_and_the_rerun_finishes(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    # enough movies that the run is still converting when the journal's first commit (every
    # driver.COMMIT_SECONDS) shows finished rows
    source = make_drive(tmp_path / "drive", shape=(384, 384), n_frames=24, n_extra_movies=40)
    dest = tmp_path / "bag"
    command = [*EMPCOMPRESS, "compress", str(source), str(dest), "--no-gain-sets", *LOCAL]
    running = start(processes, command)
    deadline = time.monotonic() + 120
    while done_rows(dest) < 2 and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.poll() is None, "the run finished before it could be interrupted; make the drive bigger"
    os.killpg(running.pid, signal.SIGINT)  # as a terminal does: the whole foreground group
    stdout, stderr = running.communicate(timeout=120)
    assert running.returncode == 130, stdout + stderr
    assert "Stopped:" in stdout and "Traceback" not in stderr
    assert temporaries(dest) == []
    assert not (dest / "bagit.txt").exists()
    with Journal.open(dest, source=str(source.resolve())) as journal:
        rows = [row for row in journal.entries().values() if row.state == "done"]
    assert rows
    for row in rows:
        assert (dest / "data" / row.output_rel_path).stat().st_size == row.output_size_bytes
    code, stdout, stderr = run(processes, command)
    assert code == 3, stdout + stderr
    if "Nothing to do" in stdout:  # the stop came as the last files finished: kept; the rerun seals
        assert f"Nothing to do: all {len(rows)} files were already done" in stdout
    else:
        assert f"{len(rows)} already done" in stdout
    assert_valid_bag(dest)
    recover_everything(source, dest, tmp_path / "scratch")
