"""Benchmark of many small files, and of batch jobs against a local cluster (issue 12).

Two measurements, each through ``python -m empcompress compress`` as users run it:

1. **Small files** (``--files N1,N2,...``): an EPU-like drive of ``GridSquare_*/Data/`` folders with a
   ``.xml`` (4 KiB) and a ``.jpg`` (16 KiB) per exposure, compressed on the local cluster (2 workers).
   The cost per small file is the *marginal* one, ``(T(N2) - T(N1)) / (N2 - N1)``, which leaves out
   what does not grow with the files (Python and Dask start-up, the HTML report's figures). The peak
   resident memory of the ``compress`` process is sampled every 50 ms: it holds the client *and* the
   local cluster's scheduler (``LocalCluster`` runs the scheduler in the client's process), so it is
   the "client + scheduler" memory of the goal. Goals: <= 1 ms per small file, < 1 GiB for 100,000.
2. **Batch jobs** (``--slurm``, needs ``scripts/start-slurm.sh``): the same drive of count movies
   compressed on a local cluster of 2 workers and on ``--cluster slurm --jobs 2`` (1 core, 1 worker per
   job); the overhead of the jobs is ``(T_slurm - T_local) / T_slurm``. Goal: < 10 %.

Scratch data goes to ``benchmarks/_work/`` and is deleted. Prints markdown; ``--json FILE`` keeps the
numbers. Usage::

    python benchmarks/bench_small_files.py --files 1000,10000,100000
    python benchmarks/bench_small_files.py --files 0 --slurm --movies 12 --frames 16 --size 2048
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

from bench_pipeline import Run, run_measured, write_counts_movie

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
XML_BYTES = 4 << 10
JPG_BYTES = 16 << 10
PER_FOLDER = 500


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


def compress(source: Path, dest: Path, *extra: str, env: dict[str, str] | None = None) -> Run:
    command = [sys.executable, "-m", "empcompress", "compress", str(source), str(dest), "--quiet", "--json"]
    if env:
        os.environ.update(env)
    return run_measured([*command, *extra])


def small_files(work: Path, counts: list[int]) -> list[dict[str, float]]:
    rows = []
    for n_files in counts:
        source, dest = work / f"epu-{n_files}", work / f"bag-{n_files}"
        make_epu_drive(source, n_files)
        run = compress(source, dest, "--workers", "2", "--dashboard-address", "127.0.0.1:0")
        summary = json.loads(run.stdout)
        assert summary["n_copied"] == n_files and summary["sealed"], summary
        rows.append(
            {
                "n_files": n_files,
                "wall_seconds": run.wall_seconds,
                "compress_seconds": summary["elapsed_seconds"],
                "client_scheduler_peak_rss_bytes": run.own_peak_rss_bytes,
                "worker_peak_rss_bytes": max(run.peak_rss_bytes.values(), default=0),
                "load_before": run.load_before,
            }
        )
        print(
            f"  {n_files} files: {run.wall_seconds:.1f} s, {run.own_peak_rss_bytes / 2**20:.0f} MiB",
            flush=True,
        )
        shutil.rmtree(source)
        shutil.rmtree(dest)
    return rows


def slurm_overhead(work: Path, *, n_movies: int, n_frames: int, size: int) -> dict[str, float]:
    source = work / "movies"
    (source / "Movies").mkdir(parents=True)
    for index in range(n_movies):
        write_counts_movie(
            source / "Movies" / f"movie_{index:03d}.mrc", n_frames=n_frames, size=size, seed=index
        )
    size_bytes = sum(path.stat().st_size for path in source.rglob("*") if path.is_file())
    local = compress(source, work / "bag-local", "--workers", "2", "--dashboard-address", "127.0.0.1:0")
    slurm_env = {
        "DASK_JOBQUEUE__SLURM__CORES": "1",
        "DASK_JOBQUEUE__SLURM__MEMORY": "4GiB",
        "DASK_JOBQUEUE__SLURM__WALLTIME": "01:00:00",
        "DASK_JOBQUEUE__SLURM__LOG_DIRECTORY": str(work / "job-logs"),
        "DASK_JOBQUEUE__SLURM__SCHEDULER_OPTIONS": repr({"host": "127.0.0.1", "dashboard_address": ":0"}),
    }
    slurm = compress(source, work / "bag-slurm", "--cluster", "slurm", "--jobs", "2", env=slurm_env)
    shutil.rmtree(source)
    return {
        "n_movies": n_movies,
        "size_bytes": size_bytes,
        "local_wall_seconds": local.wall_seconds,
        "slurm_wall_seconds": slurm.wall_seconds,
        "overhead_share": (slurm.wall_seconds - local.wall_seconds) / slurm.wall_seconds,
        "load_before_local": local.load_before,
        "load_before_slurm": slurm.load_before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", default="1000,10000,100000", help="drive sizes in small files (0: skip)")
    parser.add_argument(
        "--slurm", action="store_true", help="also compare --cluster slurm with a local cluster"
    )
    parser.add_argument("--movies", type=int, default=12)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    work = HERE / "_work" / "small-files"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict[str, object] = {}
    try:
        counts = [int(n) for n in args.files.split(",") if int(n) > 0]
        if counts:
            rows = small_files(work, counts)
            results["small_files"] = rows
            print(
                "\n| small files | wall (s) | client + scheduler peak RSS (MiB) "
                "| worker peak RSS (MiB) | load |"
            )
            print("|---:|---:|---:|---:|---:|")
            for row in rows:
                print(
                    f"| {row['n_files']:,} | {row['wall_seconds']:.1f} | "
                    f"{row['client_scheduler_peak_rss_bytes'] / 2**20:.0f} | "
                    f"{row['worker_peak_rss_bytes'] / 2**20:.0f} | {row['load_before']:.1f} |"
                )
            for first, second in itertools.pairwise(rows):
                per_file = (second["wall_seconds"] - first["wall_seconds"]) / (
                    second["n_files"] - first["n_files"]
                )
                print(
                    f"\nmarginal cost {first['n_files']:,} -> {second['n_files']:,}: "
                    f"{per_file * 1000:.2f} ms per file"
                )
        if args.slurm:
            overhead = slurm_overhead(work, n_movies=args.movies, n_frames=args.frames, size=args.size)
            results["slurm"] = overhead
            print(
                f"\n{overhead['n_movies']} movies, {overhead['size_bytes'] / 2**30:.2f} GiB: local "
                f"{overhead['local_wall_seconds']:.1f} s, "
                f"SLURM 2 jobs {overhead['slurm_wall_seconds']:.1f} s, "
                f"overhead {overhead['overhead_share'] * 100:.1f} % of the SLURM run"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
