"""Benchmark of the whole-drive pipeline (``empcompress compress``).

Builds a drive of 4096x4096 float32 movies of electron counts (Poisson, about
1 e-/pixel/frame over a slowly varying illumination), then measures:

- ``compress`` with 1 local worker and with 2 local workers: wall time (with and
  without the cluster's start-up), throughput in MB/s of input, the speed-up of 2
  workers over 1 (target >= 1.8x on a 2-core machine), and the peak resident
  memory of each worker process (sampled every 50 ms with psutil);
- the same movies converted one by one with ``empcompress convert --threads 1``,
  for the overhead of the pipeline (cluster, scan, journal, copies, manifests).

Prints a markdown table and writes it to ``benchmarks/results-pipeline.md``.

Usage: ``python benchmarks/bench_pipeline.py [--movies 4] [--frames 12] [--size 4096]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import psutil

HERE = Path(__file__).resolve().parent


def write_counts_movie(path: Path, *, n_frames: int, size: int, seed: int) -> None:
    """A float32 MRC movie of Poisson counts, written frame by frame (memory stays small)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    illumination = (1.0 + 0.15 * np.cos(2 * np.pi * x) * np.sin(np.pi * y)).astype(np.float32)
    with mrcfile.new_mmap(path, shape=(n_frames, size, size), mrc_mode=2, overwrite=True) as mrc:
        mrc.set_image_stack()
        mrc.voxel_size = 0.83
        for index in range(n_frames):
            mrc.data[index] = rng.poisson(illumination).astype(np.float32)


def make_drive(root: Path, *, n_movies: int, n_frames: int, size: int) -> int:
    movies = root / "Movies"
    movies.mkdir(parents=True)
    for index in range(n_movies):
        write_counts_movie(movies / f"movie_{index:03d}.mrc", n_frames=n_frames, size=size, seed=index)
    (root / "notes.txt").write_text("benchmark drive\n", encoding="utf-8")
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


@dataclass
class Run:
    load_before: float  # 1-minute load average when the run started (other work on the machine)
    wall_seconds: float
    peak_rss_bytes: dict[int, int]  # by process id (children of the command)
    own_peak_rss_bytes: int
    cpu_seconds: float  # user + system time of the command and every process it waited for
    stdout: str


QUIET_LOAD = 0.7
WAIT_FOR_QUIET_SECONDS = 0.0


def wait_for_quiet() -> None:
    """Wait (up to --wait-quiet seconds) until the 1-minute load average is low."""
    deadline = time.monotonic() + WAIT_FOR_QUIET_SECONDS
    while os.getloadavg()[0] > QUIET_LOAD and time.monotonic() < deadline:
        time.sleep(5)


def run_measured(command: list[str]) -> Run:
    """Run ``command``, sampling the resident memory of it and its child processes."""
    wait_for_quiet()
    load_before = os.getloadavg()[0]
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(process.pid)
    peaks: dict[int, int] = {}
    own_peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal own_peak
        while not done.is_set():
            try:
                own_peak = max(own_peak, parent.memory_info().rss)
                for child in parent.children(recursive=True):
                    try:
                        peaks[child.pid] = max(peaks.get(child.pid, 0), child.memory_info().rss)
                    except psutil.Error:
                        continue
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{stderr}")
    return Run(load_before, wall, peaks, own_peak, cpu, stdout)


def compress(source: Path, dest: Path, *, workers: int) -> tuple[Run, dict[str, object]]:
    run = run_measured(
        [
            "empcompress",
            "compress",
            str(source),
            str(dest),
            "--workers",
            str(workers),
            "--dashboard-address",
            "127.0.0.1:0",
            "--quiet",
            "--json",
        ]
    )
    return run, json.loads(run.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--movies", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--output", type=Path, default=HERE / "results-pipeline.md")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="wait up to this many seconds before each run for the "
        "load average to drop (other work on the machine distorts the timings)",
    )
    args = parser.parse_args()
    global WAIT_FOR_QUIET_SECONDS
    WAIT_FOR_QUIET_SECONDS = args.wait_quiet

    workdir = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=args.workdir))
    try:
        source = workdir / "drive"
        print(
            f"building {args.movies} movies of {args.frames} x {args.size}x{args.size} float32 ...",
            flush=True,
        )
        drive_bytes = make_drive(source, n_movies=args.movies, n_frames=args.frames, size=args.size)
        movie_bytes = sum(path.stat().st_size for path in (source / "Movies").glob("*.mrc"))

        print("warming up (Numba caches, imports) ...", flush=True)
        warm = workdir / "warm"
        make_drive(warm, n_movies=1, n_frames=2, size=256)
        compress(warm, workdir / "warm-bag", workers=2)

        print("scan (prediction) ...", flush=True)
        scan = run_measured(["empcompress", "scan", str(source), "--json", "--workers", "1"])
        plan = json.loads(scan.stdout)

        rows = []
        results: dict[int, tuple[Run, dict[str, object]]] = {}
        for workers in (1, 2):
            print(f"compress with {workers} worker(s) ...", flush=True)
            dest = workdir / f"bag-{workers}"
            results[workers] = compress(source, dest, workers=workers)
            shutil.rmtree(dest)

        print("convert one by one ...", flush=True)
        convert_wall = 0.0
        convert_cpu = 0.0
        convert_peak = 0
        convert_load = os.getloadavg()[0]
        out = workdir / "single"
        out.mkdir()
        for movie in sorted((source / "Movies").glob("*.mrc")):
            run = run_measured(
                [
                    "empcompress",
                    "convert",
                    str(movie),
                    "-o",
                    str(out / (movie.stem + ".tif")),
                    "--threads",
                    "1",
                    "-q",
                ]
            )
            convert_wall += run.wall_seconds
            convert_cpu += run.cpu_seconds
            convert_peak = max(convert_peak, run.own_peak_rss_bytes)

        def worker_peak(run: Run) -> int:
            # worker processes are the big children; the others are small helpers
            return max(run.peak_rss_bytes.values(), default=0)

        base_run, base_summary = results[1]
        base_elapsed = float(base_summary["elapsed_seconds"])  # type: ignore[arg-type]
        for workers, (run, summary) in results.items():
            elapsed = float(summary["elapsed_seconds"])  # type: ignore[arg-type]
            rows.append(
                (
                    f"compress, {workers} worker{'s' if workers > 1 else ''}",
                    f"{run.wall_seconds:.1f}",
                    f"{elapsed:.1f}",
                    f"{drive_bytes / run.wall_seconds / 1e6:.0f}",
                    f"{drive_bytes / elapsed / 1e6:.0f}",
                    f"{base_elapsed / elapsed:.2f}x",
                    f"{worker_peak(run) / 2**20:.0f}",
                    f"{run.cpu_seconds:.1f}",
                    f"{run.load_before:.1f}",
                )
            )
        rows.append(
            (
                "convert one by one (1 thread)",
                f"{convert_wall:.1f}",
                "-",
                f"{movie_bytes / convert_wall / 1e6:.0f}",
                "-",
                "-",
                f"{convert_peak / 2**20:.0f}",
                f"{convert_cpu:.1f}",
                f"{convert_load:.1f}",
            )
        )
        overhead = base_run.wall_seconds / convert_wall - 1
        overhead_inner = base_elapsed / convert_wall - 1
        payload = int(base_summary["payload_size_bytes"])  # type: ignore[call-overload]
        header = (
            "| run | wall s | job s (no cluster start) | MB/s (wall) | MB/s (job) | speed-up (job) "
            "| peak MiB per worker | CPU s | load before |"
        )
        lines = [
            "# Pipeline benchmark (`empcompress compress`)",
            "",
            f"Drive: {args.movies} float32 movies of {args.frames} frames of {args.size}x{args.size} "
            f"(Poisson counts, ~1 e-/pixel/frame) and one text file: {drive_bytes / 1e9:.2f} GB; bag payload "
            f"{payload / 1e9:.3f} GB ({drive_bytes / payload:.1f}x smaller).",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}.",
            "",
            header,
            "|---|---|---|---|---|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
            f"- 2 workers vs 1 (job time, without the cluster's start-up): "
            f"{base_elapsed / float(results[2][1]['elapsed_seconds']):.2f}x (target >= 1.8x); "  # type: ignore[arg-type]
            f"wall clock: {base_run.wall_seconds / results[2][0].wall_seconds:.2f}x.",
            f"- Pipeline overhead with 1 worker against `empcompress convert` one by one: "
            f"{100 * overhead:+.0f}% wall clock, {100 * overhead_inner:+.0f}% without the cluster's start-up "
            "(each `convert` pays its own interpreter start-up; the pipeline also copies, journals and "
            "writes the manifests and reports).",
            f"- CPU time (user + system, every process): compress with 1 worker {base_run.cpu_seconds:.1f} s "
            f"against {convert_cpu:.1f} s for `convert` one by one "
            f"({100 * (base_run.cpu_seconds / convert_cpu - 1):+.0f}%); "
            f"unlike wall time this does not depend on other load on the machine (load average at the end: "
            f"{os.getloadavg()[0]:.1f}).",
            f"- `empcompress scan` (2 frames of 2 movies read, {scan.wall_seconds:.1f} s) predicted "
            f"{plan['expected_output_size_bytes'] / 1e9:.3f} GB and {plan['expected_seconds']:.0f} s "
            f"with 1 worker; "
            f"measured {payload / 1e9:.3f} GB and {base_elapsed:.0f} s.",
            "- Load before: the 1-minute load average when the run started; on this 2-core machine a value "
            "well above 0.5 means other work competed with the run, and its wall-clock numbers (and the "
            "speed-up) are not reliable, unlike the CPU times.",
            "- Peak memory is the largest resident size of any process the command started (the workers), "
            "sampled every 50 ms; `convert` is the process itself.",
            "",
        ]
        text = "\n".join(lines)
        print(text)
        args.output.write_text(text, encoding="utf-8")
        print(f"written to {args.output}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
