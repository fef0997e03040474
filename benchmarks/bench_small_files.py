"""Benchmark of many small files (issue 12).

Through ``python -m empcompress compress`` as users run it: an EPU-like drive of
``GridSquare_*/Data/`` folders with a ``.xml`` (4 KiB) and a ``.jpg`` (16 KiB) per exposure,
compressed on the local cluster (2 workers), for each drive size of ``--files N1,N2,...``. The cost
per small file is the *marginal* one, ``(T(N2) - T(N1)) / (N2 - N1)``, which leaves out what does
not grow with the files (Python and Dask start-up, the HTML report's figures). The peak resident
memory of the ``compress`` process is sampled every 50 ms: it holds the client *and* the local
cluster's scheduler (``LocalCluster`` runs the scheduler in the client's process), so it is the
"client + scheduler" memory of the goal. Goals: <= 1 ms per small file, < 1 GiB for 100,000.

Batch jobs against a local cluster (SLURM) are measured by ``benchmarks/bench_slurm.py``.

Scratch data goes to ``benchmarks/_work/`` and is deleted. Prints markdown; ``--json FILE`` keeps the
numbers. Usage::

    python benchmarks/bench_small_files.py --files 1000,10000,100000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
from pathlib import Path

from bench_pipeline import Run, run_measured

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


def compress(source: Path, dest: Path, *extra: str) -> Run:
    command = [sys.executable, "-m", "empcompress", "compress", str(source), str(dest), "--quiet", "--json"]
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", default="1000,10000,100000", help="drive sizes in small files")
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
