"""Benchmark of many small files (issue 12).

Through ``python -m empcompress compress`` as users run it: an EPU-like drive of
``GridSquare_*/Data/`` folders with a ``.xml`` (4 KiB) and a ``.jpg`` (16 KiB) per exposure,
compressed on the local cluster (2 workers), for each drive size of ``--files N1,N2,...``. The cost
per small file is the *marginal* one, ``(T(N2) - T(N1)) / (N2 - N1)``, which leaves out what does
not grow with the files (Python and Dask start-up, the HTML report's figures). Goals: <= 1 ms per
small file, < 1 GiB for 100,000.

Measured for each run:

- *wall*: the whole command; *job*: the job's own elapsed time from its summary (Python and Dask
  start-up and the scan before it left out); *drive* and *seal*: the job's two parts, timed by the
  command's own progress lines as they arrive (``--log-interval`` long, so only its stage lines):
  from "N files; M to do" to "auditing the payload ..." (the files copied and recorded), and from
  there to the end of the job (manifests, reports, audit);
- *CPU seconds* (user + system) of the ``compress`` process (the client **and** the local cluster's
  scheduler: ``LocalCluster`` runs its scheduler in the client's process) and of its children (the
  nannies and the workers), each sampled every 50 ms: on a shared machine the elapsed times follow
  the load, the CPU seconds much less;
- the peak resident memory of the ``compress`` process ("client + scheduler") and of each worker.

``--repeat K`` runs each size K times, in turns (1k, 10k, ..., 1k, 10k, ...), and reports each
run;  ``--tree PATH`` measures another checkout (e.g. ``git worktree add /tmp/old HEAD``) with
the same benchmark, for side-by-side runs. Batch jobs against a local cluster (SLURM) are
measured by ``benchmarks/bench_slurm.py``.

Scratch data goes to ``benchmarks/_work/`` and is deleted. Prints markdown; ``--json FILE`` keeps
the numbers. Usage::

    python benchmarks/bench_small_files.py --files 1000,10000,100000
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
XML_BYTES = 4 << 10
JPG_BYTES = 16 << 10
PER_FOLDER = 500
SAMPLE_SECONDS = 0.05
#: progress lines of the compress command that start the job's two parts (see the docstring)
DRIVE_STARTS = " to do, "
SEAL_STARTS = "auditing the payload"


def make_epu_drive(root: Path, n_files: int) -> None:
    """``n_files`` small files (half .xml, half .jpg) in EPU's folder layout, deterministic content."""
    xml = (b"<MicroscopeImage>" + b"x" * XML_BYTES)[:XML_BYTES]
    jpg = bytes(range(256)) * (JPG_BYTES // 256)
    for index in range(n_files // 2):
        folder = root / "Images-Disc1" / f"GridSquare_{index // PER_FOLDER:05d}" / "Data"
        if index % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        stem = f"FoilHole_{index:07d}_Data_0001"
        (folder / f"{stem}.xml").write_bytes(xml[:-8] + f"{index:08d}".encode())
        (folder / f"{stem}.jpg").write_bytes(jpg[:-8] + f"{index:08d}".encode())


@dataclass
class Sampled:
    """One command's elapsed time, CPU seconds and peak memory, by process."""

    load_before: float
    wall_seconds: float
    own_cpu_seconds: float = 0.0
    children_cpu_seconds: float = 0.0
    own_peak_rss_bytes: int = 0
    children_peak_rss_bytes: int = 0
    stdout: str = ""
    #: seconds from the start of the command to the first line containing each marker
    marks: dict[str, float] = field(default_factory=dict)


def run_sampled(command: list[str], *, markers: tuple[str, ...]) -> Sampled:
    """Run ``command``; sample its and its children's CPU times and memory; time its stderr lines."""
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(process.pid)
    cpu: dict[int, float] = {}
    peak: dict[int, int] = {}
    marks: dict[str, float] = {}
    stderr_lines: list[str] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                for member in [parent, *parent.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        times = member.cpu_times()
                        cpu[member.pid] = max(cpu.get(member.pid, 0.0), times.user + times.system)
                        peak[member.pid] = max(peak.get(member.pid, 0), member.memory_info().rss)
            time.sleep(SAMPLE_SECONDS)

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            stderr_lines.append(line)
            for marker in markers:
                if marker in line and marker not in marks:
                    marks[marker] = time.perf_counter() - started

    threads = [
        threading.Thread(target=sample, daemon=True),
        threading.Thread(target=read_stderr, daemon=True),
    ]
    for thread in threads:
        thread.start()
    assert process.stdout is not None
    stdout = process.stdout.read()
    process.wait()
    done.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{''.join(stderr_lines)}")
    children = [pid for pid in cpu if pid != process.pid]
    return Sampled(
        load_before=load_before,
        wall_seconds=wall,
        own_cpu_seconds=cpu.get(process.pid, 0.0),
        children_cpu_seconds=sum(cpu[pid] for pid in children),
        own_peak_rss_bytes=peak.get(process.pid, 0),
        children_peak_rss_bytes=max((peak[pid] for pid in children), default=0),
        stdout=stdout,
        marks=marks,
    )


def compress_once(tree: Path, work: Path, n_files: int, label: str) -> dict[str, float | str]:
    source, dest = work / f"epu-{n_files}", work / f"bag-{n_files}"
    if not source.is_dir():
        make_epu_drive(source, n_files)
    environment_path = os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "empcompress",
        "compress",
        str(source),
        str(dest),
        "--json",
        "--log-interval",
        "100000",
        "--workers",
        "2",
        "--dashboard-address",
        "127.0.0.1:0",
    ]
    os.environ["PYTHONPATH"] = environment_path
    run = run_sampled(command, markers=(DRIVE_STARTS, SEAL_STARTS))
    shutil.rmtree(dest)
    summary = json.loads(run.stdout)
    assert summary["n_copied"] == n_files and summary["sealed"], summary
    job = float(summary["elapsed_seconds"])
    drive_start = run.marks.get(DRIVE_STARTS, 0.0)
    seal_start = run.marks.get(SEAL_STARTS, drive_start)
    end_of_job = seal_start + max(0.0, job - (seal_start - drive_start)) if drive_start else 0.0
    return {
        "code": label,
        "n_files": n_files,
        "load_before": run.load_before,
        "wall_seconds": run.wall_seconds,
        "job_seconds": job,
        "drive_seconds": seal_start - drive_start,
        "seal_seconds": end_of_job - seal_start,
        "client_scheduler_cpu_seconds": run.own_cpu_seconds,
        "workers_cpu_seconds": run.children_cpu_seconds,
        "client_scheduler_peak_rss_bytes": run.own_peak_rss_bytes,
        "worker_peak_rss_bytes": run.children_peak_rss_bytes,
    }


def print_rows(rows: list[dict[str, float | str]]) -> None:
    print(
        "\n| code | small files | load | wall (s) | job (s) | drive (s) | seal (s) "
        "| CPU client+scheduler (s) | CPU workers (s) | client+scheduler peak (MiB) | worker peak (MiB) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['code']} | {int(row['n_files']):,} | {float(row['load_before']):.1f} "
            f"| {float(row['wall_seconds']):.1f} | {float(row['job_seconds']):.1f} "
            f"| {float(row['drive_seconds']):.1f} | {float(row['seal_seconds']):.1f} "
            f"| {float(row['client_scheduler_cpu_seconds']):.1f} | {float(row['workers_cpu_seconds']):.1f} "
            f"| {float(row['client_scheduler_peak_rss_bytes']) / 2**20:.0f} "
            f"| {float(row['worker_peak_rss_bytes']) / 2**20:.0f} |"
        )


def print_marginal(rows: list[dict[str, float | str]]) -> None:
    """Marginal cost per file between successive sizes of the same code (means over the repeats)."""
    keys = ("job_seconds", "wall_seconds", "client_scheduler_cpu_seconds", "workers_cpu_seconds")
    by_code: dict[str, dict[int, list[dict[str, float | str]]]] = {}
    for row in rows:
        by_code.setdefault(str(row["code"]), {}).setdefault(int(row["n_files"]), []).append(row)
    print("\n| code | from -> to | job (ms/file) | wall (ms/file) | CPU client+scheduler | CPU workers |")
    print("|---|---|---:|---:|---:|---:|")
    for code, sizes in by_code.items():
        means = {
            n: {key: sum(float(r[key]) for r in runs) / len(runs) for key in keys}
            for n, runs in sorted(sizes.items())
        }
        for first, second in itertools.pairwise(sorted(means)):
            per_file = [(means[second][key] - means[first][key]) / (second - first) * 1000 for key in keys]
            print(
                f"| {code} | {first:,} -> {second:,} | "
                + " | ".join(f"{value:.2f}" for value in per_file)
                + " |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", default="1000,10000,100000", help="drive sizes in small files")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each size, in turns")
    parser.add_argument(
        "--tree",
        action="append",
        type=Path,
        help="checkout(s) to measure, in turns (default: this one); label = the folder's name",
    )
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.tree] if args.tree else [REPO]
    counts = [int(n) for n in args.files.split(",") if int(n) > 0]
    work = HERE / "_work" / "small-files"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base_path = os.environ.get("PYTHONPATH")
    rows: list[dict[str, float | str]] = []
    try:
        for _, n_files, tree in itertools.product(range(args.repeat), counts, trees):
            if base_path is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = base_path
            row = compress_once(tree, work, n_files, tree.name)
            rows.append(row)
            print(
                f"  {tree.name} {n_files} files: job {float(row['job_seconds']):.1f} s, "
                f"wall {float(row['wall_seconds']):.1f} s, load {float(row['load_before']):.1f}",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_rows(rows)
    print_marginal(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"small_files": rows}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
