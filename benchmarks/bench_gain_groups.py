"""Benchmark of gain grouping across a drive (issue 9), side by side with the per-folder sets of 0.2.0.

Builds an EPU-like drive of gain-normalised float32 movies (Poisson counts at
about 1 e-/pixel/frame times a per-pixel gain):

- session A: 12 grid squares (``Images-Disc1/GridSquare_<id>/Data/``) of 2 to 6
  movies sharing gain A, one of them normalised with gain A flipped upside down;
- session B: 4 grid squares of 3 movies with gain B, in another folder;
- each movie with the ``.xml`` and ``.jpg`` EPU writes beside it;
- optionally (``--depositor``) gain A as ``gain-reference.mrc`` above session A.

Then runs ``empcompress compress SRC DEST --workers 2`` with this tree's code and
with another checkout (``--old``: a path to a tree of empcompress 0.2.0, e.g.
``git worktree add /tmp/empc_old 4492e5b``), alternating, and reports: gain
references in the bag (number, total bytes) against the number of distinct gains,
the bag's payload size, gain-normalised movies left as float32, and wall time.

Usage: ``python benchmarks/bench_gain_groups.py --old /tmp/empc_old [--size 512] [--frames 8]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent))

from drives import make_epu_session  # noqa: E402

SQUARES_A = (2, 3, 4, 2, 5, 3, 2, 6, 2, 3, 4, 2)
SQUARES_B = (3, 3, 3, 3)


@dataclass(frozen=True)
class Run:
    label: str
    wall_seconds: float
    n_references: int
    reference_bytes: int
    payload_bytes: int
    n_gain_movies: int
    n_float_movies: int


def build_drive(root: Path, *, size: int, n_frames: int, depositor: bool) -> int:
    rng = np.random.default_rng(2026)
    gain_a = rng.uniform(0.7, 1.4, (size, size)).astype(np.float32)
    gain_b = rng.uniform(0.7, 1.4, (size, size)).astype(np.float32)
    flipped = ("FoilHole_2004_Data_3001_4001_20240101_120000.mrc",)
    movies = make_epu_session(
        root / "session_A", rng=rng, gain=gain_a, squares=SQUARES_A, n_frames=n_frames, flipped=flipped
    )
    movies += make_epu_session(root / "session_B", rng=rng, gain=gain_b, squares=SQUARES_B, n_frames=n_frames)
    if depositor:
        from empcompress.gainref import write_gain_reference

        write_gain_reference(root / "session_A" / "gain-reference.mrc", gain_a)
    return len(movies)


def run_compress(label: str, code: Path, source: Path, dest: Path) -> Run:
    shutil.rmtree(dest, ignore_errors=True)
    environment = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "empcompress", "compress", str(source), str(dest), "--workers", "2", "-q"],
        check=False,
        env=environment,
        cwd=tempfile.gettempdir(),
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - started
    report = json.loads((dest / "report.json").read_text(encoding="utf-8"))
    sources = {f["output"] for f in report["files"] if f["output"]}
    references = [
        path
        for path in (dest / "data").rglob("*.mrc")
        if f"data/{path.relative_to(dest / 'data').as_posix()}" not in sources
    ]
    movies = [f for f in report["files"] if f["category"] == "movie"]
    return Run(
        label=label,
        wall_seconds=wall,
        n_references=len(references),
        reference_bytes=sum(path.stat().st_size for path in references),
        payload_bytes=report["totals"]["payload_size_bytes"],
        n_gain_movies=sum(bool(f["gain_reference"]) for f in movies),
        n_float_movies=sum(f["stored_dtype"] == "float32" for f in movies),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="a checkout of the code to compare with")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=HERE / "results-gain-groups.md")
    args = parser.parse_args()
    new_code = HERE.parent
    lines = [
        "# Gain groups across a drive (issue 9): this tree against 0.2.0's per-folder sets",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}.",
        f"Command: `python benchmarks/bench_gain_groups.py --old {args.old} --size {args.size} "
        f"--frames {args.frames} --repeats {args.repeats}`",
        "",
        f"Drive: session A = {len(SQUARES_A)} grid squares of {min(SQUARES_A)}-{max(SQUARES_A)} movies "
        f"({sum(SQUARES_A)} movies, gain A, one normalised with gain A flipped), session B = "
        f"{len(SQUARES_B)} grid squares of {SQUARES_B[0]} movies (gain B); {args.size}x{args.size} float32, "
        f"{args.frames} frames, ~1 e-/pixel/frame; a .xml and a .jpg beside each movie. Two distinct gains.",
        "`compress --workers 2`, old and new alternating, best of the repeats for time.",
        "",
    ]
    with tempfile.TemporaryDirectory(prefix="bench-gain-groups-") as scratch:
        root = Path(scratch)
        warm = root / "warm"
        build_drive(warm, size=64, n_frames=4, depositor=False)
        for code in (args.old, new_code):  # compile each tree's kernels before timing
            run_compress("warm-up", code, warm, root / "warm-bag")
        for depositor in (False, True):
            source = root / ("drive-depositor" if depositor else "drive")
            n_movies = build_drive(source, size=args.size, n_frames=args.frames, depositor=depositor)
            results: dict[str, list[Run]] = {"0.2.0 (per folder)": [], "this tree (groups)": []}
            for _ in range(args.repeats):
                for label, code in (("0.2.0 (per folder)", args.old), ("this tree (groups)", new_code)):
                    results[label].append(run_compress(label, code, source, root / "bag"))
            title = "with the depositor's gain-reference.mrc above session A" if depositor else "no reference"
            lines += [
                f"## Drive {title} ({n_movies} movies)",
                "",
                "| code | gain references in the bag | their bytes | movies with a gain | movies left "
                "float32 | payload bytes | wall s (best) |",
                "|---|---|---|---|---|---|---|",
            ]
            for label, runs in results.items():
                run = runs[0]
                best = min(r.wall_seconds for r in runs)
                lines.append(
                    f"| {label} | {run.n_references} | {run.reference_bytes} | {run.n_gain_movies} | "
                    f"{run.n_float_movies} | {run.payload_bytes} | {best:.1f} |"
                )
            old, new = (results[label] for label in results)
            ratio = min(r.wall_seconds for r in new) / min(r.wall_seconds for r in old)
            payload_ratio = new[0].payload_bytes / old[0].payload_bytes
            lines += ["", f"Wall time new/old: {ratio:.2f}; payload new/old: {payload_ratio:.3f}.", ""]
            print("\n".join(lines[-8:]), flush=True)
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
