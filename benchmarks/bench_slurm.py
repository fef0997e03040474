"""Batch jobs against a local cluster: the overhead of ``compress --cluster slurm`` (issue 12).

Goal: on the CI SLURM (``scripts/start-slurm.sh``, one node), the jobs' overhead against a local
cluster is < 10 % of the job time for a drive of movies.

One drive of count movies (``--movies`` x ``--frames`` x ``--size``\\ :sup:`2` float32) is
compressed many times, alternately

- ``local``: ``compress --workers 2`` (a local cluster: 2 single-threaded worker processes);
- ``slurm``: ``compress --cluster slurm --jobs 2``, each job 1 core, 4 GiB, 1 worker,

in pairs whose order alternates (local-slurm, slurm-local, ...) so that a drift of the machine's
load falls on both sides alike. Each run gets a fresh DEST. Per run it records:

- the wall time of the whole command, the 1-minute load average before it, and the SLURM queue
  (other jobs on the node make ours wait: their pending time is measured, see below);
- CPU seconds of every process of the run: the client and everything it waited for
  (``RUSAGE_CHILDREN``, exact: for ``local`` this includes the worker processes), plus, for SLURM,
  the job's processes (the batch shell, the nanny, the worker; found by a marker variable in their
  environment, which ``sbatch`` exports into the job) and their ``slurmstepd``, sampled from
  ``/proc`` every 0.25 s (the last ~0.25 s of an idle process is lost), plus the CPU the SLURM
  daemons (``slurmctld``, ``slurmd``) used meanwhile. Accounting is off on the CI SLURM
  (``sacct`` has nothing), so ``/proc`` is the real source;
- a timeline, in seconds since the command started (one clock, the machine's), from:
  ``scontrol show job`` (submit and start times, 1 s resolution; finished jobs stay 10 minutes),
  the Dask logs of the workers (``DASK_LOGGING__DISTRIBUTED=info``: "Start Nanny", "Start worker",
  "Registered to", the signal or close at the end; ms resolution; SLURM jobs write them to the
  jobqueue log directory, local workers to the command's stderr), and the journal
  (``DEST/.empcompress/journal.sqlite``: each movie's commit time and its task's own elapsed
  seconds, so its start is commit - elapsed).

Overhead of a pair = (T_slurm - T_local) / T_slurm. Prints markdown (``--report-from JSON``
reprints it); ``--json FILE`` is rewritten after every run, so an interrupted run keeps its pairs.
Needs root-started SLURM (``bash scripts/start-slurm.sh``) and psutil. Usage::

    python benchmarks/bench_slurm.py --movies 32 --pairs 12 --json /tmp/bench-slurm.json
    python benchmarks/bench_slurm.py --report-from /tmp/bench-slurm.json

``--drive DIR`` takes the movies from DIR/Movies (hard links to ``movie_000.mrc`` ...) instead of
writing them again (writing 32 movies took 12 minutes on the loaded machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
from bench_pipeline import write_counts_movie

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MARKER = "EMPCOMPRESS_BENCH_SLURM_RUN"
SAMPLE_SECONDS = 0.25
JOB_MEMORY = "4GiB"
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) - ([\w.]+) - \w+ - (.*)$")
SCONTROL_TIME = re.compile(r"\b(SubmitTime|StartTime|EndTime)=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")


def make_movies(root: Path, *, n_movies: int, n_frames: int, size: int, reuse: Path | None) -> int:
    """The drive: ``n_movies`` new movies, or hard links to the first ``n_movies`` of ``reuse``'s
    (``--drive``: movies this benchmark wrote before; each is checked to have the expected size)."""
    movies = root / "Movies"
    movies.mkdir(parents=True)
    for index in range(n_movies):
        name = f"movie_{index:03d}.mrc"
        if reuse is None:
            write_counts_movie(movies / name, n_frames=n_frames, size=size, seed=index)
            continue
        kept = reuse / "Movies" / name
        expected_bytes = 1024 + n_frames * size * size * 4
        if not kept.is_file() or kept.stat().st_size != expected_bytes:
            raise SystemExit(f"{kept}: not a movie of {n_frames} x {size}^2 float32 from this benchmark")
        os.link(kept, movies / name)
    return sum(path.stat().st_size for path in movies.iterdir())


# ---------------------------------------------------------------- CPU of the run's processes


class ProcessSampler:
    """The processes carrying ``MARKER=run_id`` in their environment (the client's worker processes,
    and the SLURM jobs' processes: ``sbatch`` exports the client's environment into the job), the
    ``slurmstepd`` of every job, and the SLURM daemons, sampled from /proc: CPU seconds (user +
    system, last value seen), when each process started and when it was last seen."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.marked: dict[tuple[int, float], dict[str, Any]] = {}  # (pid, create time) -> record
        self.stepd_cpu: dict[tuple[int, float], tuple[str, float]] = {}  # -> (job id, CPU)
        self.ignored: set[tuple[int, float]] = set()
        self.daemons_before = self._daemons_cpu()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @staticmethod
    def _daemons_cpu() -> float:
        total = 0.0
        for process in psutil.process_iter(["name", "cpu_times"]):
            if process.info["name"] in ("slurmctld", "slurmd") and process.info["cpu_times"]:
                times = process.info["cpu_times"]
                total += times.user + times.system
        return total

    def _loop(self) -> None:
        while not self.done.is_set():
            self.sample()
            time.sleep(SAMPLE_SECONDS)

    def sample(self) -> None:
        now = time.time()
        for process in psutil.process_iter(["name", "create_time"]):
            key = (process.pid, process.info["create_time"] or 0.0)
            if key in self.ignored:
                continue
            try:
                name = process.info["name"] or ""
                if name.startswith("slurmstepd"):
                    match = re.search(r"\[(\d+)\.", " ".join(process.cmdline()))
                    if match is None:
                        continue  # not yet named (its step comes a moment later)
                    times = process.cpu_times()
                    self.stepd_cpu[key] = (match.group(1), times.user + times.system)
                    continue
                record = self.marked.get(key)
                if record is None:
                    environ = process.environ()
                    if environ.get(MARKER) != self.run_id:
                        self.ignored.add(key)
                        continue
                    command = " ".join(process.cmdline())
                    role = (
                        "worker"
                        if "spawn_main" in command
                        else "nanny"
                        if "distributed.cli.dask_worker" in command
                        else "client"
                        if "empcompress" in command
                        else "other"
                    )
                    record = {"created": key[1], "role": role, "slurm": "SLURM_JOB_ID" in environ}
                    self.marked[key] = record
                times = process.cpu_times()
                record["cpu"] = times.user + times.system
                record["last_seen"] = now
            except (psutil.Error, OSError):
                continue

    def stop(self, job_ids: set[str]) -> dict[str, Any]:
        self.done.set()
        self.thread.join()
        workers = [record for record in self.marked.values() if record["role"] == "worker"]
        nannies = [record for record in self.marked.values() if record["role"] == "nanny"]
        return {
            "cpu_job_processes": sum(
                record.get("cpu", 0.0) for record in self.marked.values() if record["slurm"]
            ),
            "cpu_slurmstepd": sum(cpu for job, cpu in self.stepd_cpu.values() if job in job_ids),
            "cpu_slurm_daemons": self._daemons_cpu() - self.daemons_before,
            "n_job_processes": sum(record["slurm"] for record in self.marked.values()),
            "worker_created": sorted(record["created"] for record in workers),
            "worker_last_seen": sorted(record["last_seen"] for record in workers if "last_seen" in record),
            "job_python_created": sorted(record["created"] for record in nannies),
        }


# ---------------------------------------------------------------- the timeline


def log_events(text: str) -> list[tuple[float, str, str]]:
    """(epoch seconds, logger, message) of the Dask log lines in ``text`` (local time, ms)."""
    events = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((stamp, match.group(2), match.group(3)))
    return events


def times_of(events: list[tuple[float, str, str]], needle: str) -> list[float]:
    return sorted(stamp for stamp, _, message in events if needle in message)


def scontrol_times(job_id: str) -> dict[str, float]:
    result = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=False
    )
    found = {}
    for key, value in SCONTROL_TIME.findall(result.stdout):
        found[key] = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S").timestamp()
    return found


def journal_tasks(dest: Path) -> list[tuple[float, float]]:
    """(start, end) epoch seconds of each converted movie's task, from the journal."""
    uri = f"file:{dest / '.empcompress' / 'journal.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        rows = connection.execute(
            "SELECT updated_at, elapsed_seconds FROM files WHERE outcome = 'converted'"
        ).fetchall()
    return sorted((updated - elapsed, updated) for updated, elapsed in rows)


def queue_now() -> str:
    """Other jobs in the SLURM queue (id, state, name), e.g. colleagues' tests."""
    result = subprocess.run(["squeue", "-h", "-o", "%i %T %j"], capture_output=True, text=True, check=False)
    return "; ".join(result.stdout.split("\n")).strip("; ")


# ---------------------------------------------------------------- one run


def run_once(kind: str, source: Path, work: Path, run_id: str) -> dict[str, Any]:
    dest = work / f"bag-{run_id}"
    log_dir = work / f"job-logs-{run_id}"
    env = dict(os.environ)
    env[MARKER] = run_id
    env["DASK_LOGGING__DISTRIBUTED"] = "info"
    command = [sys.executable, "-m", "empcompress", "compress", str(source), str(dest), "--quiet", "--json"]
    if kind == "local":
        command += ["--workers", "2", "--dashboard-address", "127.0.0.1:0"]
    else:
        command += ["--cluster", "slurm", "--jobs", "2"]
        env.update(
            {
                "DASK_JOBQUEUE__SLURM__CORES": "1",
                "DASK_JOBQUEUE__SLURM__MEMORY": JOB_MEMORY,
                "DASK_JOBQUEUE__SLURM__WALLTIME": "01:00:00",
                "DASK_JOBQUEUE__SLURM__LOG_DIRECTORY": str(log_dir),
                # slurm-no-nanny: the worker runs in the job's own Python (dask-worker --no-nanny,
                # after jobqueue's --nanny: the last flag wins): one interpreter less per job, and
                # no nanny setting MALLOC_TRIM_THRESHOLD_=65536 for the worker (the local cluster
                # unsets it, empcompress/cluster.py)
                "DASK_JOBQUEUE__SLURM__WORKER_EXTRA_ARGS": '["--no-nanny"]'
                if kind == "slurm-no-nanny"
                else "[]",
                "DASK_JOBQUEUE__SLURM__SCHEDULER_OPTIONS": repr(
                    {"host": "127.0.0.1", "dashboard_address": ":0"}
                ),
            }
        )
    queue_before = queue_now()
    load_before = os.getloadavg()[0]
    sampler = ProcessSampler(run_id)
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    started = time.perf_counter()
    process = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        sampler.stop(set())
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{process.stderr[-4000:]}")
    summary = json.loads(process.stdout)
    assert summary["sealed"] and not summary["n_failed"], summary
    job_ids = (
        sorted(
            {
                match.group(1)
                for path in log_dir.glob("*.err")
                if (match := re.search(r"-(\d+)\.err$", path.name))
            }
        )
        if log_dir.is_dir()
        else []
    )
    time.sleep(2 * SAMPLE_SECONDS)  # the jobs' last processes: one more sample after scancel
    cpu = sampler.stop(set(job_ids))
    events = log_events(process.stderr)
    jobs = {}
    for job_id in job_ids:
        events += log_events((log_dir / f"dask-worker-{job_id}.err").read_text(errors="replace"))
        jobs[job_id] = scontrol_times(job_id)
    tasks = journal_tasks(dest)
    report = json.loads((dest / "report.json").read_text(encoding="utf-8"))
    sealed_times = {name: (dest / name).stat().st_mtime for name in ("report.html", "bagit.txt")}

    def since(stamps: list[float]) -> list[float]:
        return [round(stamp - t0, 3) for stamp in stamps]

    ends = sorted(end for _, end in tasks)
    timeline = {
        "job_submitted": since(sorted(job["SubmitTime"] for job in jobs.values() if "SubmitTime" in job)),
        "job_started": since(sorted(job["StartTime"] for job in jobs.values() if "StartTime" in job)),
        "job_ended": since(sorted(job["EndTime"] for job in jobs.values() if "EndTime" in job)),
        "job_python_started": since(cpu.pop("job_python_created")),
        "nanny_started": since(times_of(events, "Start Nanny at")),
        "worker_process_created": since(cpu.pop("worker_created")),
        "worker_started": since(times_of(events, "Start worker at")),
        "worker_registered": since(times_of(events, "Registered to")),
        "task_started": since([start for start, _ in tasks]),
        "last_task_ended": since(ends[-1:]),
        "report_written": since([datetime.strptime(report["written_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()]),
        "report_html_written": since([sealed_times["report.html"]]),
        "bag_sealed": since([sealed_times["bagit.txt"]]),
        "worker_process_last_seen": since(cpu.pop("worker_last_seen")),
        "worker_closing": since(
            times_of(events, "Stopping worker at") or times_of(events, "Received signal SIGTERM")
        ),
        "command_ended": [round(wall, 3)],
    }
    cpu_client = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    shutil.rmtree(dest)
    shutil.rmtree(log_dir, ignore_errors=True)
    return {
        "kind": kind,
        "run_id": run_id,
        "started_at": datetime.fromtimestamp(t0, timezone.utc).isoformat(timespec="seconds"),
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
        "queue_before": queue_before,
        "wall_seconds": wall,
        "compress_elapsed_seconds": summary["elapsed_seconds"],
        "task_seconds_sum": sum(end - start for start, end in tasks),
        "n_tasks": len(tasks),
        "cpu_client_and_children": cpu_client,
        **cpu,
        "cpu_total": cpu_client + cpu["cpu_job_processes"] + cpu["cpu_slurmstepd"] + cpu["cpu_slurm_daemons"],
        "job_ids": job_ids,
        "timeline": timeline,
    }


# ---------------------------------------------------------------- the report


def first(values: list[float]) -> float | None:
    return values[0] if values else None


def last(values: list[float]) -> float | None:
    return values[-1] if values else None


def second(values: list[float]) -> float | None:
    return values[1] if len(values) > 1 else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def spread(values: list[float]) -> str:
    """median [min .. max] of the values that exist."""
    if not values:
        return "-"
    return f"{statistics.median(values):.1f} [{min(values):.1f} .. {max(values):.1f}]"


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


#: timeline rows: (label, function of a run's timeline giving seconds since the command started)
PHASES: list[tuple[str, Any]] = [
    ("jobs submitted (scontrol SubmitTime, 1 s)", lambda t: first(t["job_submitted"])),
    ("first job started (StartTime, 1 s)", lambda t: first(t["job_started"])),
    ("last job started (StartTime, 1 s)", lambda t: last(t["job_started"])),
    ("first job's Python (nanny) process created (/proc)", lambda t: first(t.get("job_python_started", []))),
    ("first nanny started (log)", lambda t: first(t["nanny_started"])),
    ("first worker process created (/proc)", lambda t: first(t.get("worker_process_created", []))),
    ("last worker process created (/proc)", lambda t: last(t.get("worker_process_created", []))),
    ("first worker started (log)", lambda t: first(t["worker_started"])),
    ("first worker registered (connected)", lambda t: first(t["worker_registered"])),
    ("last worker registered", lambda t: last(t["worker_registered"])),
    ("first task started (journal)", lambda t: first(t["task_started"])),
    ("second task started (journal)", lambda t: second(t["task_started"])),
    ("last task ended (journal)", lambda t: last(t["last_task_ended"])),
    ("report.json written (1 s)", lambda t: last(t["report_written"])),
    ("report.html written (mtime)", lambda t: last(t.get("report_html_written", []))),
    ("bag sealed (bagit.txt mtime)", lambda t: last(t.get("bag_sealed", []))),
    ("workers told to close (log)", lambda t: first(t["worker_closing"])),
    ("last worker process seen (/proc, 0.25 s)", lambda t: last(t.get("worker_process_last_seen", []))),
    ("jobs ended (EndTime, 1 s)", lambda t: last(t["job_ended"])),
    ("command ended", lambda t: last(t["command_ended"])),
]


def phases(run: dict[str, Any]) -> dict[str, float]:
    """start (command start -> first task), middle (first task -> last task ends), end (-> command
    end), and how busy the 2 workers were in the middle: sum of the tasks' seconds / (2 x middle)."""
    timeline = run["timeline"]
    start = timeline["task_started"][0]
    middle = timeline["last_task_ended"][0] - start
    sealed = timeline.get("bag_sealed") or [run["wall_seconds"]]
    return {
        "start": start,
        "created": (timeline.get("worker_process_created") or [start])[-1],
        "close": run["wall_seconds"] - sealed[0],
        "middle": middle,
        "end": run["wall_seconds"] - timeline["last_task_ended"][0],
        "busy": run["task_seconds_sum"] / (2 * middle) if middle > 0 else 0.0,
    }


def pairs_of(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    by_pair: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        by_pair.setdefault(run["pair"], {})[run["kind"]] = run
    return [
        (sides["local"], sides["slurm"])
        for _, sides in sorted(by_pair.items())
        if {"local", "slurm"} <= set(sides)
    ]


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    pairs = pairs_of(results["runs"])
    lines = [
        f"Run {meta['started_at']} .. {results.get('finished_at', '(interrupted)')}; machine: "
        f"{meta['machine']}; Python {meta['python']}; SLURM {meta['slurm_version']}",
        f"Command: `{meta['command']}`",
        f"Drive: {meta['n_movies']} float32 count movies of {meta['n_frames']} x {meta['size']}^2, "
        f"{meta['size_bytes'] / 2**30:.2f} GiB; local = `--workers 2`; SLURM = `--cluster slurm --jobs 2`, "
        f"1 core, {JOB_MEMORY}, 1 worker per job.",
        "",
        "| pair | order | local (s) | SLURM (s) | overhead | load before L / S | CPU s L / S "
        "| S: client / jobs / stepd / daemons | S: pending (s) | other jobs in the queue |",
        "|---:|---|---:|---:|---:|---|---|---|---:|---|",
    ]
    overheads, differences, cpu_ratios = [], [], []
    for local, slurm in pairs:
        overhead = (slurm["wall_seconds"] - local["wall_seconds"]) / slurm["wall_seconds"]
        overheads.append(overhead * 100)
        differences.append(slurm["wall_seconds"] - local["wall_seconds"])
        cpu_ratios.append(slurm["cpu_total"] / local["cpu_total"])
        timeline = slurm["timeline"]
        pending = (
            last(timeline["job_started"]) - first(timeline["job_submitted"])  # type: ignore[operator]
            if timeline["job_started"] and timeline["job_submitted"]
            else None
        )
        order = "L, S" if local["local_first"] else "S, L"
        queue = ", ".join(q for q in (local["queue_before"], slurm["queue_before"]) if q) or "none"
        lines.append(
            f"| {local['pair']} | {order} | {local['wall_seconds']:.1f} | {slurm['wall_seconds']:.1f} | "
            f"{overhead * 100:+.1f} % | {local['load_before']:.1f} / {slurm['load_before']:.1f} | "
            f"{local['cpu_total']:.0f} / {slurm['cpu_total']:.0f} | "
            f"{slurm['cpu_client_and_children']:.1f} / {slurm['cpu_job_processes']:.1f} / "
            f"{slurm['cpu_slurmstepd']:.2f} / {slurm['cpu_slurm_daemons']:.2f} | "
            f"{fmt(pending, 0)} | {queue} |"
        )
    if overheads:
        q1, q3 = quartiles(overheads)
        lines += [
            "",
            f"Overhead over {len(overheads)} pairs: median {statistics.median(overheads):+.1f} % "
            f"(quartiles {q1:+.1f} .. {q3:+.1f} %, range {min(overheads):+.1f} .. {max(overheads):+.1f} %); "
            f"T_slurm - T_local median {statistics.median(differences):+.1f} s; "
            f"SLURM slower in {sum(d > 0 for d in differences)} of {len(differences)} pairs. "
            f"CPU seconds SLURM / local: median {statistics.median(cpu_ratios):.3f} "
            f"(range {min(cpu_ratios):.3f} .. {max(cpu_ratios):.3f}).",
        ]
    lines += [
        "",
        "The same pairs by phase: *start* = command start -> first task started, *end* = last task "
        "ended -> command ended (seconds); *busy* = the tasks' own seconds / (2 x the time between); "
        "*fixed* = (start + end)_SLURM - (start + end)_local, and its share of T_slurm. "
        "*created*: the last worker process created (/proc); *close*: bag sealed -> command ended; "
        "*job-specific* = the SLURM - local difference of both: what the jobs add before a worker "
        "process exists (submission, scheduling, the job's own Python) and at the close (scancel "
        "against stopping local worker processes), before the workers' own start (import, warm-up, "
        "connect), which is the same code in both.",
        "",
        "| pair | start L / S (s) | end L / S (s) | busy L / S | fixed (s) | fixed share "
        "| created L / S (s) | close L / S (s) | job-specific (s) |",
        "|---:|---|---|---|---:|---:|---|---|---:|",
    ]
    fixed_seconds, fixed_shares, specific_seconds = [], [], []
    for local, slurm in pairs:
        pl, ps = phases(local), phases(slurm)
        fixed = (ps["start"] + ps["end"]) - (pl["start"] + pl["end"])
        fixed_seconds.append(fixed)
        fixed_shares.append(100 * fixed / slurm["wall_seconds"])
        specific = (ps["created"] - pl["created"]) + (ps["close"] - pl["close"])
        specific_seconds.append(specific)
        lines.append(
            f"| {local['pair']} | {pl['start']:.1f} / {ps['start']:.1f} | "
            f"{pl['end']:.1f} / {ps['end']:.1f} | "
            f"{pl['busy']:.2f} / {ps['busy']:.2f} | {fixed:+.1f} | {fixed_shares[-1]:+.1f} % | "
            f"{pl['created']:.1f} / {ps['created']:.1f} | {pl['close']:.1f} / {ps['close']:.1f} | "
            f"{specific:+.1f} |"
        )
    if fixed_seconds:
        f1, f3 = quartiles(fixed_seconds)
        lines += [
            "",
            f"Fixed costs, SLURM - local: median {statistics.median(fixed_seconds):+.1f} s "
            f"(quartiles {f1:+.1f} .. {f3:+.1f} s), median share of T_slurm "
            f"{statistics.median(fixed_shares):+.1f} %. Job-specific: median "
            f"{statistics.median(specific_seconds):+.1f} s (range {min(specific_seconds):+.1f} .. "
            f"{max(specific_seconds):+.1f} s).",
        ]
    others = [run for run in results["runs"] if run["kind"] not in ("local", "slurm")]
    if others:
        lines += [
            "",
            "Other runs:",
            "",
            "| pair | kind | wall (s) | load before | CPU s: total / client / jobs | tasks' own s | busy |",
            "|---:|---|---:|---:|---|---:|---:|",
        ]
        for run in results["runs"]:
            if run["kind"] in ("slurm", "slurm-no-nanny") and any(o["pair"] == run["pair"] for o in others):
                lines.append(
                    f"| {run['pair']} | {run['kind']} | {run['wall_seconds']:.1f} | "
                    f"{run['load_before']:.1f} | {run['cpu_total']:.1f} / "
                    f"{run['cpu_client_and_children']:.1f} / {run['cpu_job_processes']:.1f} | "
                    f"{run['task_seconds_sum']:.1f} | {phases(run)['busy']:.2f} |"
                )
    lines += [
        "",
        "Timeline, seconds since the command started: median [min .. max] over the runs.",
        "",
        "| event | local | SLURM |",
        "|---|---:|---:|",
    ]
    for label, function in PHASES:
        cells = []
        for kind in ("local", "slurm"):
            values = [
                value
                for run in results["runs"]
                if run["kind"] == kind and (value := function(run["timeline"])) is not None
            ]
            cells.append(spread(values))
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    for kind in ("local", "slurm"):
        runs = [run for run in results["runs"] if run["kind"] == kind]
        if not runs:
            continue
        tails = [run["wall_seconds"] - run["timeline"]["last_task_ended"][0] for run in runs]
        starts = [run["timeline"]["task_started"][0] for run in runs]
        work = [run["task_seconds_sum"] for run in runs]
        closing = [
            run["wall_seconds"] - run["timeline"]["bag_sealed"][0]
            for run in runs
            if run["timeline"].get("bag_sealed")
        ]
        lines.append(
            f"\n{kind}: start (command start -> first task) {spread(starts)} s; "
            f"end (last task -> command end) {spread(tails)} s, of which bag sealed -> command end "
            f"{spread(closing)} s; "
            f"sum of the tasks' own seconds {spread(work)} s; CPU {spread([r['cpu_total'] for r in runs])} s."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def slurm_version() -> str:
    result = subprocess.run(["sinfo", "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--movies", type=int, default=32)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--pairs", type=int, default=12, help="pairs of runs (local, SLURM)")
    parser.add_argument(
        "--kinds",
        default="local,slurm",
        help="the two kinds of run in a pair: local, slurm, slurm-no-nanny (the report's pair tables "
        "compare local with slurm; other pairs are listed by run)",
    )
    parser.add_argument(
        "--stop-after-minutes",
        type=float,
        default=0.0,
        help="start no new pair after this long (0: no limit)",
    )
    parser.add_argument(
        "--drive",
        help="take the movies from this drive (hard links; same --frames and --size) instead of writing "
        "them: writing 32 movies takes minutes on a loaded machine",
    )
    parser.add_argument("--json", help="write the numbers to this file (after every run)")
    parser.add_argument("--report-from", help="print the report of an earlier --json file and exit")
    args = parser.parse_args()
    if args.report_from:
        print(report(json.loads(Path(args.report_from).read_text(encoding="utf-8"))))
        return
    if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
        raise SystemExit("SLURM is not running here: start it with 'bash scripts/start-slurm.sh' (as root)")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    work = HERE / "_work" / "slurm"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    began = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "command": " ".join(["python", "benchmarks/bench_slurm.py", *sys.argv[1:]]),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
            "python": platform.python_version(),
            "slurm_version": slurm_version(),
            "n_movies": args.movies,
            "n_frames": args.frames,
            "size": args.size,
        },
        "runs": [],
    }

    def save() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")

    try:
        source = work / "drive"
        print(f"writing {args.movies} movies ...", flush=True)
        reuse = Path(args.drive) if args.drive else None
        results["meta"]["size_bytes"] = make_movies(
            source, n_movies=args.movies, n_frames=args.frames, size=args.size, reuse=reuse
        )
        for pair in range(args.pairs):
            if args.stop_after_minutes and time.monotonic() - began > args.stop_after_minutes * 60:
                print(f"stopping after {pair} pairs (--stop-after-minutes)", flush=True)
                break
            one, other = args.kinds.split(",")
            kinds = (one, other) if pair % 2 == 0 else (other, one)
            for kind in kinds:
                run = run_once(kind, source, work, f"{pair:02d}-{kind}")
                run["pair"], run["local_first"] = pair, kinds[0] == one
                results["runs"].append(run)
                save()
                print(
                    f"pair {pair} {kind}: {run['wall_seconds']:.1f} s, CPU {run['cpu_total']:.1f} s, "
                    f"load {run['load_before']:.1f}, "
                    f"first task at {run['timeline']['task_started'][0]:.1f} s, "
                    f"end {run['wall_seconds'] - run['timeline']['last_task_ended'][0]:.1f} s",
                    flush=True,
                )
        results["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        save()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(report(results))


if __name__ == "__main__":
    main()
