"""Peak memory and time of each gain-grouping step on K3 super-resolution movies (issues 9 and 10).

Writes two gain-normalised float32 movies of 11520x8184 pixels (Poisson counts at
``--dose`` e-/pixel/frame times one per-pixel gain, ``--frames`` frames, about
377 MB a frame), then runs each step a Dask worker runs for gain grouping in a
fresh process, and reports its wall time and peak resident memory (``VmHWM``):

- a movie's own estimate (``movie_estimate``: 4 frames, grown 4x while too sparse),
- comparing two estimates (``compare_estimates``, 8 orientations),
- a movie's partial for the group (``movie_partial``, 16 frames or all),
- merging two partials and finalizing the group's gain,
- fitting a movie to the gain (``fit_gain``: 2 frames, 8 orientations).

Goal (issue 10): every step within a 4 GiB worker.

Usage: ``python benchmarks/bench_gain_superres.py [--frames 8] [--dose 0.25]``
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SHAPE = (8184, 11520)

STEPS = {
    "own estimate of one movie": (
        "from empcompress.gain.grouping import movie_estimate\n"
        "import pickle; e = movie_estimate(A, n_sample_frames=4)\n"
        "pickle.dump(e, open(W / 'a.est', 'wb')); pickle.dump(movie_estimate(B, n_sample_frames=4), "
        "open(W / 'b.est', 'wb'))"
    ),
    "compare two estimates": (
        "import pickle; from empcompress.gain.grouping import compare_estimates\n"
        "c = compare_estimates(pickle.load(open(W / 'a.est', 'rb')), pickle.load(open(W / 'b.est', 'rb')))\n"
        "print(c.verdict, c.orientation, c.n_overlap_pixels, file=sys.stderr)"
    ),
    "partial of one movie (16 frames or all)": (
        "import pickle; from empcompress.gain.grouping import movie_partial\n"
        "pickle.dump(movie_partial(A, n_sample_frames=16), open(W / 'a.part', 'wb'), protocol=5)\n"
        "print('partial bytes', sum(x.nbytes for x in vars(pickle.load(open(W / 'a.part', 'rb'))).values()"
        " if hasattr(x, 'nbytes')), file=sys.stderr)"
    ),
    "second movie's partial (as above)": (
        "import pickle; from empcompress.gain.grouping import movie_partial\n"
        "pickle.dump(movie_partial(B, n_sample_frames=16), open(W / 'b.part', 'wb'), protocol=5)"
    ),
    "merge two partials (into the first, as merge_task)": (
        "import pickle; from empcompress.gain import merge_gain_partials\n"
        "a, b = (pickle.load(open(W / name, 'rb')) for name in ('a.part', 'b.part'))\n"
        "m = merge_gain_partials(a, b, into_first=True)\n"
        "pickle.dump(m, open(W / 'm.part', 'wb'), protocol=5)"
    ),
    "finalize the group's gain": (
        "import pickle; from empcompress.gain import finalize_gain\n"
        "g = finalize_gain(pickle.load(open(W / 'm.part', 'rb')))\n"
        "import numpy as np; np.save(W / 'gain.npy', g.gain)"
    ),
    "fit one movie to the gain": (
        "import numpy as np; from empcompress.gain.grouping import fit_gain\n"
        "f = fit_gain(A, np.load(W / 'gain.npy'), name='g'); print(f.fits, f.reason[:80], file=sys.stderr)"
    ),
}


def _write_movie(path: Path, gain: np.ndarray, *, n_frames: int, dose: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    header = np.zeros(256, dtype="<i4")
    header[0:4] = (SHAPE[1], SHAPE[0], n_frames, 2)
    header[7:10] = (SHAPE[1], SHAPE[0], n_frames)
    header.view("<f4")[10:13] = (SHAPE[1], SHAPE[0], n_frames)
    header[16:19] = (1, 2, 3)
    header.view("S4")[52] = b"MAP "
    header.view("u1")[212:214] = (0x44, 0x44)
    with open(path, "wb") as handle:
        handle.write(header.tobytes())
        for _ in range(n_frames):
            counts = rng.poisson(dose, size=SHAPE).astype(np.float32)
            handle.write((counts * gain).astype("<f4").tobytes())


def _run_step(code: str, a: Path, b: Path, work: Path) -> tuple[float, float]:
    script = (
        "import sys, os\n"
        f"from pathlib import Path\nA, B, W = Path({str(a)!r}), Path({str(b)!r}), Path({str(work)!r})\n"
        + code
        + "\nprint([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(HERE.parent)},
    )
    wall = time.perf_counter() - started
    sys.stderr.write(done.stderr)
    return wall, int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--dose", type=float, default=0.25)
    parser.add_argument("--output", type=Path, default=HERE / "results-gain-superres.md")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gain-superres-") as scratch:
        work = Path(scratch)
        gain = np.random.default_rng(1).uniform(0.7, 1.4, SHAPE).astype(np.float32)
        a, b = work / "a.mrc", work / "b.mrc"
        _write_movie(a, gain, n_frames=args.frames, dose=args.dose, seed=2)
        _write_movie(b, gain, n_frames=args.frames, dose=args.dose, seed=3)
        del gain
        for label, code in STEPS.items():
            wall, peak_mib = _run_step(code, a, b, work)
            rows.append((label, wall, peak_mib))
            print(f"{label}: {wall:.1f} s, peak {peak_mib:.0f} MiB", flush=True)
    lines = [
        "# Gain grouping steps on K3 super-resolution movies: time and peak memory",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
        f"{time.strftime('%Y-%m-%d')}. Shared with other work: wall times are indicative only.",
        f"Command: `python benchmarks/bench_gain_superres.py --frames {args.frames} --dose {args.dose}`",
        "",
        f"Two gain-normalised float32 movies of {SHAPE[1]}x{SHAPE[0]}, {args.frames} frames "
        f"({SHAPE[0] * SHAPE[1] * 4 / 1e6:.0f} MB a frame), {args.dose} e-/pixel/frame. Each step in a "
        "fresh process (the estimates of the first step are made for both movies: its time is for two).",
        "",
        "| step (as a Dask worker runs it) | wall s | peak RSS MiB | within a 4 GiB worker |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {wall:.1f} | {peak:.0f} | {'yes' if peak < 4096 else 'NO'} |"
        for label, wall, peak in rows
    ]
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
