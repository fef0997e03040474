"""Peak memory and CPU time of ``classify_movie`` on K3 super-resolution movies (issue 10).

Writes a gain-normalised float32 movie of 11520x8184 pixels (Poisson counts over the
synthetic illumination of ``_synthetic.py`` at ``--dose`` e-/pixel/frame, times one
per-pixel gain; 377 MB a frame) for each of ``--frames``, then runs
``classify_movie`` on it in a fresh process for each ``--sample`` (sampled frames;
a sample too sparse to confirm a gain grows 4x at a time), with empcompress from this
checkout and, with ``--compare-with DIR``, from another checkout (e.g. a ``git
worktree`` of HEAD), alternating. Reports CPU seconds (the machine is shared: read
CPU, not wall), peak resident memory (``VmHWM``) and what the classification said.

Goal (issue 10): within a 4 GiB worker with margin, the same for 8 and 24 frames.

Usage: ``python benchmarks/bench_classify.py [--frames 8 24] [--sample 8 2] [--dose 0.1]
[--compare-with DIR]``
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _synthetic import SyntheticMovieSpec, _header_bytes, illumination  # noqa: E402

SHAPE = (8184, 11520)


def write_gain_normalised_movie(path: Path, *, n_frames: int, dose: float) -> None:
    """float32(counts x gain), frame by frame (one frame of counts in memory at a time)."""
    ny, nx = SHAPE
    spec = SyntheticMovieSpec(dose_per_pixel_per_frame=dose, n_frames=n_frames, ny=ny, nx=nx)
    rate = illumination(spec) * dose
    gain = np.random.default_rng(1).uniform(0.7, 1.4, SHAPE).astype(np.float32)
    with open(path, "wb") as handle:
        handle.write(_header_bytes(spec))
        for index in range(n_frames):
            counts = np.random.default_rng([spec.seed, index]).poisson(rate).astype(np.float32)
            np.multiply(counts, gain, out=counts)
            handle.write(memoryview(counts.astype("<f4", copy=False)).cast("B"))
            del counts


def run_classify(path: Path, n_sample_frames: int, *, code_root: Path) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MiB, result) of classify_movie in a fresh process."""
    script = (
        "from empcompress.gain import classify_movie\n"
        f"c = classify_movie({str(path)!r}, n_sample_frames={n_sample_frames})\n"
        "print(f'{c.kind}, {c.n_sampled_frames} frames sampled, exception fraction {c.exception_fraction}')\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(code_root)},
        cwd=str(path.parent),  # not a checkout: the current directory comes first on sys.path
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"classify_movie failed ({code_root}):\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result, peak_kib = done.stdout.strip().splitlines()[-2:]
    return wall, cpu, int(peak_kib) / 1024, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 24])
    parser.add_argument("--sample", type=int, nargs="+", default=[8, 2], help="n_sample_frames to run")
    parser.add_argument("--dose", type=float, default=0.1)
    parser.add_argument("--compare-with", type=Path, default=None, help="root of another checkout")
    parser.add_argument("--scratch", type=Path, default=None, help="directory for the movies")
    args = parser.parse_args()
    roots = [("this checkout", ROOT)]
    if args.compare_with is not None:
        roots.insert(0, (f"{args.compare_with}", args.compare_with))
    with tempfile.TemporaryDirectory(prefix="bench-classify-", dir=args.scratch) as scratch:
        for n_frames in args.frames:
            path = Path(scratch) / f"movie-{n_frames}.mrc"
            write_gain_normalised_movie(path, n_frames=n_frames, dose=args.dose)
            for n_sample_frames in args.sample:
                for label, root in roots:
                    wall, cpu, peak_mib, result = run_classify(path, n_sample_frames, code_root=root)
                    print(
                        f"| {n_frames} | {n_sample_frames} | {label} | {cpu:.1f} | {wall:.1f} "
                        f"| {peak_mib:.0f} | {result} |",
                        flush=True,
                    )
            path.unlink()
    one, five, fifteen = os.getloadavg()
    now = datetime.datetime.now(datetime.UTC)
    print(f"\n{now:%Y-%m-%d %H:%M} UTC, load {one:.1f} / {five:.1f} / {fifteen:.1f}")


if __name__ == "__main__":
    main()
