"""``compress --cluster slurm`` on a real one-node SLURM (``scripts/start-slurm.sh``), end to end.

Jobs are really submitted (seen in ``squeue``, their end state in ``scontrol``), the workers run inside
them (a preload writes the job id from inside each worker), and the bag is sealed, verified and
restorable. Jobs that die (a job at its one-minute time limit, a job cancelled with ``scancel`` while a
movie is being written) are followed by at most one re-run of the same command and give a bag identical
in content to an uninterrupted run. Jobs that die before their worker connects (a job script that fails
before the worker starts, a job cancelled while pending, a job whose worker never connects) are no
longer waited for: --adapt replaces them, and with none left the run stops and says what ended them.

Skipped when SLURM is not reachable here; under CI (``CI`` set) that is a failure, not a skip: .ci/run
starts SLURM. The conversions are slowed down inside the SLURM workers only (a preload that sleeps in the
progress callback), so that a job dies in the middle of a conversion on any machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import in_ci
from drives import make_drive, snapshot_tree
from test_pipeline import recover_everything, temporaries
from test_pipeline_e2e import assert_valid_bag, bag_content

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]

#: Runs in every SLURM worker (dask-worker --preload): notes the job it runs in, and slows each frame
#: of a conversion by EMPCOMPRESS_TEST_FRAME_DELAY seconds so that a job can die mid-conversion.
PRELOAD = """
import os, time
from pathlib import Path
from empcompress.pipeline import tasks

marker_dir = os.environ.get("EMPCOMPRESS_TEST_MARKERS")
if marker_dir and os.environ.get("SLURM_JOB_ID"):  # what glibc's malloc was told, in its content
    Path(marker_dir, f"{os.environ['SLURM_JOB_ID']}-{os.getpid()}").write_text(
        " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_"))
    )
if not getattr(tasks, "_test_slowed", False):
    tasks._test_slowed = True
    _original = tasks._convert
    _delay = float(os.environ.get("EMPCOMPRESS_TEST_FRAME_DELAY", "0"))

    def _slow_convert(task, stop, *, gain):
        def progress(stage, n_bytes):
            time.sleep(_delay)
            stop(stage, n_bytes)

        return _original(task, progress, gain=gain)

    tasks._convert = _slow_convert
"""


def _slurm_state() -> str:
    """'' when a SLURM node takes jobs here, else why not."""
    for tool in ("sbatch", "squeue", "scancel", "sinfo", "scontrol"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return "sinfo does not answer"
    if states.returncode != 0:
        return f"sinfo fails ({states.stderr.strip()})"
    if not {"idle", "mixed", "allocated"} & set(states.stdout.split()):
        return f"no SLURM node takes jobs (states: {states.stdout.split()})"
    return ""


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = _slurm_state()
    if problem:
        message = f"SLURM is not reachable here: {problem}; start it with 'sudo bash scripts/start-slurm.sh'"
        if in_ci():
            pytest.fail(f"{message} (CI must run the SLURM tests: .ci/run starts SLURM)")
        pytest.skip(message)


class SlurmRun:
    """Environment and helpers for compress runs whose workers are SLURM jobs of one test."""

    def __init__(
        self,
        root: Path,
        *,
        walltime: str = "00:10:00",
        frame_delay_seconds: float = 0.0,
        prologue: tuple[str, ...] = (),
        directives: tuple[str, ...] = (),
    ) -> None:
        self.name = f"empcompress-test-{secrets.token_hex(4)}"
        self.markers = root / "markers"
        self.markers.mkdir(parents=True)
        self.logs = root / "job-logs"
        preload = root / "preload.py"
        preload.write_text(PRELOAD, encoding="utf-8")
        #: the jobs' settings (jobqueue.slurm.*): given to compress as DASK_JOBQUEUE__SLURM__* variables
        self.settings: dict[str, Any] = {
            "name": self.name,
            "cores": 1,
            "memory": "2GiB",
            "walltime": walltime,
            "log-directory": str(self.logs),
            # lines of the job script before the worker starts, and #SBATCH lines (jobs that never start)
            "job-script-prologue": list(prologue),
            "job-extra-directives": list(directives),
            "worker-extra-args": ["--preload", str(preload)],
            "scheduler-options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
        }
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            "PYTHONWARNINGS": "ignore",
            "EMPCOMPRESS_TEST_MARKERS": str(self.markers),
            "EMPCOMPRESS_TEST_FRAME_DELAY": str(frame_delay_seconds),
        }
        for key, value in self.settings.items():
            name = f"DASK_JOBQUEUE__SLURM__{key.upper().replace('-', '_')}"
            self.env[name] = value if isinstance(value, str) else repr(value)
        self.seen: dict[str, str] = {}  # job id -> last state seen in squeue

    def start(self, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "empcompress", *argv],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def poll_jobs(self, *, ended_too: bool = False) -> dict[str, str]:
        """This test's jobs in squeue now (id -> state), with ``ended_too`` those that ended in the last
        10 minutes too (MinJobAge); remembered in ``seen``."""
        listed = subprocess.run(
            ["squeue", "-h", "-n", self.name, "-o", "%i %T", *(["--states=all"] if ended_too else [])],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        now = dict(line.split() for line in listed.stdout.splitlines() if line.strip())
        self.seen.update(now)
        return now

    def wait(self, process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str, str]:
        """Wait for the run, watching squeue; returns (exit status, stdout, stderr)."""
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            self.poll_jobs()
            time.sleep(0.5)
        if process.poll() is None:
            os.killpg(process.pid, 9)
        stdout, stderr = process.communicate(timeout=60)
        return process.returncode, stdout, stderr

    def run(self, *argv: str, timeout: float = 600) -> tuple[int, str, str]:
        return self.wait(self.start(*argv), timeout)

    def final_state(self, job_id: str, *, settle_seconds: float = 30.0) -> str:
        """The job's end state; a job SLURM is still ending (COMPLETING: its processes being killed,
        about 4 s after an scancel here) is waited for, up to ``settle_seconds``."""
        deadline = time.monotonic() + settle_seconds
        while True:
            state = self._state(job_id)
            if state != "COMPLETING" or time.monotonic() > deadline:
                return state
            time.sleep(0.5)

    def _state(self, job_id: str) -> str:
        shown = subprocess.run(
            ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False
        ).stdout
        for word in shown.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def jobs_with_workers(self) -> set[str]:
        """Jobs in which a worker really ran (it wrote its marker from inside the job)."""
        return {path.name.split("-")[0] for path in self.markers.iterdir()}

    def cancel_all(self) -> None:
        subprocess.run(["scancel", "-n", self.name], capture_output=True, check=False)


@pytest.fixture
def slurm_runs(slurm: None) -> Iterator[list[SlurmRun]]:
    runs: list[SlurmRun] = []
    yield runs
    for run in runs:  # nothing of a test stays in the queue
        run.cancel_all()


def _local_reference(source: Path, dest: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "empcompress", "compress", str(source), str(dest), "--workers", "1",
         "--dashboard-address", "127.0.0.1:0", *extra],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr  # the drive's corrupt movie is kept as it is


def _interruption_drive(root: Path) -> Path:
    return make_drive(root, shape=(128, 128), n_frames=24, n_extra_movies=6)


def test_compress_on_slurm_end_to_end(tmp_path: Path, slurm_runs: list[SlurmRun]) -> None:
    source = make_drive(tmp_path / "drive", gain_sets=True, n_frames=16)
    before = snapshot_tree(source)
    reference = tmp_path / "reference"
    _local_reference(source, reference)
    run = SlurmRun(tmp_path / "slurm")
    slurm_runs.append(run)
    dest = tmp_path / "bag"
    code, stdout, stderr = run.run("compress", str(source), str(dest), "--cluster", "slurm", "--jobs", "2")
    assert code == 3, stdout + stderr
    assert "Running on SLURM cluster through dask-jobqueue, 2 jobs" in stderr
    assert "Bag: " in stdout and "sealed" in stdout
    # jobs really went through SLURM, ran our workers, and were ended when the run closed its cluster
    assert len(run.seen) == 2, run.seen
    assert run.jobs_with_workers() and run.jobs_with_workers() <= set(run.seen)
    # their nanny started them with glibc's adaptive malloc thresholds, as the local workers are: with
    # no malloc setting but those of the environment they were submitted from
    submitted = " ".join(f"{k}={v}" for k, v in sorted(run.env.items()) if k.startswith("MALLOC_"))
    assert {marker.read_text() for marker in run.markers.iterdir()} == {submitted}
    assert "MALLOC_TRIM_THRESHOLD_" not in submitted
    assert {run.final_state(job) for job in run.seen} <= {"CANCELLED", "COMPLETED"}
    assert run.poll_jobs() == {}
    assert snapshot_tree(source) == before
    assert_valid_bag(dest)
    assert temporaries(dest) == []
    assert bag_content(dest) == bag_content(reference)
    assert (dest / "data" / "Gain set" / "gain-reference.mrc").is_file()
    recover_everything(source, dest, tmp_path / "scratch")
    verify = subprocess.run(
        [sys.executable, "-m", "empcompress", "verify", str(dest), "--full"],
        env=run.env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert verify.returncode == 0 and verify.stdout.startswith("OK "), verify.stdout + verify.stderr


def test_a_job_at_its_time_limit_is_replaced_and_the_bag_is_the_same(
    tmp_path: Path, slurm_runs: list[SlurmRun]
) -> None:
    """One job at a time with a one-minute limit (--adapt 1:1) and ~3-4 minutes of work: the job is killed
    by SLURM mid-conversion, adapt requests a new job, the lost task runs again there."""
    source = _interruption_drive(tmp_path / "drive")
    reference = tmp_path / "reference"
    _local_reference(source, reference, "--no-gain-sets")
    run = SlurmRun(tmp_path / "slurm", walltime="00:01:00", frame_delay_seconds=0.3)
    slurm_runs.append(run)
    dest = tmp_path / "bag"
    command = ("compress", str(source), str(dest), "--cluster", "slurm", "--adapt", "1:1", "--no-gain-sets")
    code, stdout, stderr = run.run(*command)
    if code == 1 and "run the same command again" in stderr:  # the issue allows one re-run
        code, stdout, stderr = run.run(*command)
    assert code == 3, stdout + stderr
    states = {job: run.final_state(job) for job in run.seen}
    assert "TIMEOUT" in states.values(), states
    assert len(run.jobs_with_workers()) >= 2, (states, run.jobs_with_workers())
    assert_valid_bag(dest)
    assert temporaries(dest) == []
    assert bag_content(dest) == bag_content(reference)


def test_a_job_cancelled_mid_conversion_then_the_same_command_finishes(
    tmp_path: Path, slurm_runs: list[SlurmRun]
) -> None:
    """--jobs 1 and its only job cancelled while it writes a movie: the run stops cleanly (no worker is
    left), says that the same command finishes the rest, and that command does."""
    source = _interruption_drive(tmp_path / "drive")
    reference = tmp_path / "reference"
    _local_reference(source, reference, "--no-gain-sets")
    run = SlurmRun(tmp_path / "slurm", frame_delay_seconds=0.1)
    slurm_runs.append(run)
    dest = tmp_path / "bag"
    command = ("compress", str(source), str(dest), "--cluster", "slurm", "--jobs", "1", "--no-gain-sets")
    process = run.start(*command)
    deadline = time.monotonic() + 180
    cancelled = ""
    while process.poll() is None and time.monotonic() < deadline and not cancelled:
        jobs = run.poll_jobs()
        writing = [path for path in (dest / "data").rglob("*") if ".empcompress-tmp-" in path.name]
        if writing and jobs:
            cancelled = next(iter(jobs))
            subprocess.run(["scancel", cancelled], check=True)
        time.sleep(0.1)
    assert cancelled, "never saw a movie being written; make the drive bigger or the frames slower"
    code, stdout, stderr = run.wait(process, timeout=300)
    assert code == 1, stdout + stderr
    assert "no Dask worker is left" in stderr and "run the same command again" in stderr, stderr
    assert f"left and none is coming: 1 SLURM job was cancelled (CANCELLED: job {cancelled}); " in stderr
    assert "Traceback" not in stderr
    assert not (dest / "bagit.txt").exists()
    assert temporaries(dest) == []  # the half-written movie was removed, not taken for a finished one
    assert run.final_state(cancelled) == "CANCELLED"

    run.env["EMPCOMPRESS_TEST_FRAME_DELAY"] = "0"  # the same command; only the test's slowing is off
    code, stdout, stderr = run.run(*command)
    assert code == 3, stdout + stderr
    assert "already done" in stdout
    assert len(run.jobs_with_workers()) == 2
    assert_valid_bag(dest)
    assert temporaries(dest) == []
    assert bag_content(dest) == bag_content(reference)


# ---------------------------------------------------------------- jobs that die before their worker connects


def _small_drive(root: Path) -> Path:
    return make_drive(root, shape=(32, 32), n_frames=4)


def test_a_job_that_fails_at_start_is_replaced_with_adapt(tmp_path: Path, slurm_runs: list[SlurmRun]) -> None:
    """The first job's script exits before its worker starts (a broken prologue, a module that does not
    load): the run notices the failed job, --adapt requests another, and the run finishes."""
    source = _small_drive(tmp_path / "drive")
    first = tmp_path / "first-job-failed"
    run = SlurmRun(tmp_path / "slurm", prologue=(f"mkdir {first} 2>/dev/null && exit 3",))
    slurm_runs.append(run)
    dest = tmp_path / "bag"
    code, stdout, stderr = run.run(
        "compress", str(source), str(dest), "--cluster", "slurm", "--adapt", "1:1", "--no-gain-sets",
        timeout=240,
    )  # fmt: skip
    assert code == 3, stdout + stderr
    states = run.poll_jobs(ended_too=True)
    failed = min(states, key=int)
    assert states[failed] == "FAILED" and len(states) >= 2, states
    assert failed not in run.jobs_with_workers() and run.jobs_with_workers(), states
    assert "Bag: " in stdout and "sealed" in stdout
    assert_valid_bag(dest)
    assert temporaries(dest) == []
    assert run.poll_jobs() == {}


@pytest.mark.parametrize("scaling", [("--jobs", "1"), ("--adapt", "1:1")])
def test_jobs_that_never_start_stop_the_run_with_what_ended_them(
    tmp_path: Path, slurm_runs: list[SlurmRun], scaling: tuple[str, str]
) -> None:
    """Every job's script fails before its worker starts: the run stops, names the jobs and their logs
    (with --adapt after 3 failed jobs in a row), instead of waiting forever."""
    source = _small_drive(tmp_path / "drive")
    run = SlurmRun(tmp_path / "slurm", prologue=("exit 3",))
    slurm_runs.append(run)
    dest = tmp_path / "bag"
    started = time.monotonic()
    code, stdout, stderr = run.run(
        "compress", str(source), str(dest), "--cluster", "slurm", *scaling, timeout=180
    )
    assert code == 1, stdout + stderr
    assert time.monotonic() - started < 120
    n_jobs = 1 if scaling[0] == "--jobs" else 3
    states = run.poll_jobs(ended_too=True)
    assert len(states) >= n_jobs and set(states.values()) <= {"FAILED", "CANCELLED"}, states
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    error = errors[0]
    assert "no Dask worker connected and none is coming" in error, error
    ended = re.search(r"(\d+) SLURM jobs? ended before", error)
    assert ended is not None and int(ended.group(1)) >= n_jobs, error
    assert any(f"job {job} (failed)" in error for job, state in states.items() if state == "FAILED"), error
    assert str(run.logs) in error and "run the same command again" in error, error
    assert not (dest / "bagit.txt").exists() and temporaries(dest) == []
    assert run.poll_jobs() == {}


def test_a_job_cancelled_while_pending_stops_the_run(tmp_path: Path, slurm_runs: list[SlurmRun]) -> None:
    """--jobs 1, the job held in the queue (--begin in an hour) and cancelled there: the run stops."""
    source = _small_drive(tmp_path / "drive")
    run = SlurmRun(tmp_path / "slurm", directives=("--begin=now+3600",))
    slurm_runs.append(run)
    dest = tmp_path / "bag"
    process = run.start("compress", str(source), str(dest), "--cluster", "slurm", "--jobs", "1")
    deadline = time.monotonic() + 60
    pending = ""
    while process.poll() is None and time.monotonic() < deadline and not pending:
        pending = next((job for job, state in run.poll_jobs().items() if state == "PENDING"), "")
        time.sleep(0.2)
    assert pending, "the job was never seen pending"
    subprocess.run(["scancel", pending], check=True)
    code, stdout, stderr = run.wait(process, timeout=90)
    assert code == 1, stdout + stderr
    assert (
        f"Error: no Dask worker connected and none is coming: 1 SLURM job ended before its worker "
        f"connected: job {pending} (cancelled)" in stderr
    ), stderr
    assert run.final_state(pending) == "CANCELLED" and not run.jobs_with_workers()


def test_a_job_whose_worker_never_connects_is_cancelled(
    tmp_path: Path, slurm_runs: list[SlurmRun], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLURM runs the job but its worker does not connect (here: it never starts): after the deadline
    the job is cancelled and no longer counted as coming."""
    import dask

    from empcompress.cluster import ClusterOptions, open_cluster, worker_supply
    from empcompress.cluster import jobs as jobs_module

    run = SlurmRun(tmp_path / "slurm", prologue=("sleep 300",))
    slurm_runs.append(run)
    monkeypatch.setattr(jobs_module, "CHECK_SECONDS", 0.5)
    monkeypatch.setattr(jobs_module, "CONNECT_SECONDS", 3.0)
    settings = {f"jobqueue.slurm.{key}": value for key, value in run.settings.items()}
    with (
        dask.config.set(settings),
        open_cluster(ClusterOptions(cluster="slurm", n_jobs=1), environ={}) as (client, _info),
    ):
        deadline = time.monotonic() + 60
        supply = worker_supply(client)
        while time.monotonic() < deadline and supply.n_coming != 0:
            run.poll_jobs()
            time.sleep(0.5)
            supply = worker_supply(client)
    assert supply.n_connected == 0 and supply.n_coming == 0, supply
    (job,) = run.poll_jobs(ended_too=True)
    assert f"job {job} (running 3 s without its worker connecting: cancelled)" in supply.jobs_ended
    assert run.final_state(job) == "CANCELLED"
