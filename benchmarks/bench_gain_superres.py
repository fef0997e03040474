"""Peak memory and time of each gain-grouping step on K3 super-resolution movies (issues 9 and 10).

Writes two gain-normalised float32 movies of 11520x8184 pixels (Poisson counts at
``--dose`` e-/pixel/frame times one per-pixel gain, ``--frames`` frames, about
377 MB a frame), then runs each step a Dask worker runs for gain grouping in a
fresh process, and reports its wall time, CPU time and peak resident memory
(``VmHWM``). The group's gain is built by row bands (``gain_bands``: 6 bands of
1364 rows here), so the partial, merge and finalize steps are those of one band
(the tallest):

- a movie's own estimate (``movie_estimate``: 4 frames, grown 4x while too sparse;
  band by band inside the task),
- comparing two estimates (``compare_estimates``, 8 orientations),
- a movie's partial of one band for the group (``movie_partial``, 16 frames or all),
- merging two band partials and finalizing the band,
- assembling the group's gain from its finalized bands,
- fitting a movie to the gain (``fit_gain``: 2 frames, 8 orientations),
- the whole group estimate serially, as ``empcompress gain estimate`` does (``group_estimate``).

With ``--compare-with DIR`` (the root of another checkout, e.g. the previous
commit unpacked by ``git archive``), the steps both versions have are also run on
two 4096x4096 movies with each version in turn, ``--repeats`` times, alternating
(the machine is shared: CPU seconds of paired runs are the comparison to read).

Goal (issue 10): every step within a 4 GiB worker (aim: 3 GiB); 4096x4096 no slower.

With ``--set``, instead: the ``gain estimate`` command's whole computation
(``estimate_set_gain``) on :data:`SET_MOVIES` super-resolution movies of
``--set-frames`` frames (seven of one gain in four orientations, one of another
gain: a misfit), and the gain counting kernel on a frame that a gain does not
fit (``GainCounter.add`` and ``exception_fraction``), each in a fresh process,
with this checkout and, with ``--compare-with``, the other one; it prints a
markdown section (wall, CPU, peak RSS, and the decisions, which must be equal).

Usage: ``python benchmarks/bench_gain_superres.py [--frames 8] [--dose 0.25] [--compare-with DIR]``
or ``python benchmarks/bench_gain_superres.py --set [--set-frames 2] [--dose 0.25] [--compare-with DIR]``
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

SHAPE = (8184, 11520)
SMALL_SHAPE = (4096, 4096)
MIB = 1 << 20

_BANDS = (
    "from empcompress.gain.estimate import gain_bands\n"
    "from empcompress.mrc import read_header\n"
    "BANDS = gain_bands(read_header(A).frame_shape)\n"
)

#: Steps of the banded design (this checkout).
STEPS = {
    "import only (the process's own part)": "import empcompress.gain.grouping, empcompress.kernels",
    "own estimate of one movie (x2: both movies)": (
        "from empcompress.gain.grouping import movie_estimate\n"
        "import pickle; e = movie_estimate(A, n_sample_frames=4)\n"
        "pickle.dump(e, open(W / 'a.est', 'wb'), protocol=5); del e\n"
        "pickle.dump(movie_estimate(B, n_sample_frames=4), open(W / 'b.est', 'wb'), protocol=5)"
    ),
    "compare two estimates": (
        "import pickle; from empcompress.gain.grouping import compare_estimates\n"
        "c = compare_estimates(pickle.load(open(W / 'a.est', 'rb')), pickle.load(open(W / 'b.est', 'rb')))\n"
        "print(c.verdict, c.orientation, c.n_overlap_pixels, file=sys.stderr)"
    ),
    "partial of one band of one movie (16 frames or all)": _BANDS
    + (
        "import pickle; from empcompress.gain.grouping import movie_partial\n"
        "p = movie_partial(A, n_sample_frames=16, band=BANDS[0])\n"
        "pickle.dump(p, open(W / 'a.part', 'wb'), protocol=5)\n"
        "print(len(BANDS), 'bands; band partial bytes', sum(x.nbytes for x in vars(p).values()"
        " if hasattr(x, 'nbytes')), file=sys.stderr)"
    ),
    "the band's partial of the second movie, flipped (as above)": _BANDS
    + (
        "import pickle; from empcompress.gain.grouping import movie_partial\n"
        "pickle.dump(movie_partial(B, n_sample_frames=16, band=BANDS[0], orientation='flip-columns'), "
        "open(W / 'b.part', 'wb'), protocol=5)"
    ),
    "merge two band partials (into the first, as merge_task)": (
        "import pickle; from empcompress.gain import merge_gain_partials\n"
        "a, b = (pickle.load(open(W / name, 'rb')) for name in ('a.part', 'b.part'))\n"
        "m = merge_gain_partials(a, b, into_first=True)\n"
        "pickle.dump(m, open(W / 'm.part', 'wb'), protocol=5)"
    ),
    "finalize the band": (
        "import pickle; from empcompress.gain import finalize_gain\n"
        "pickle.dump(finalize_gain(pickle.load(open(W / 'm.part', 'rb'))), open(W / 'band.est', 'wb'), "
        "protocol=5)"
    ),
    "the group's gain serially (gain estimate command's group_estimate)": (
        "import numpy as np; from empcompress.gain.grouping import group_estimate\n"
        "g = group_estimate([(A, 'identity'), (B, 'flip-columns')], n_sample_frames=16)\n"
        "np.save(W / 'gain.npy', g.gain); np.save(W / 'status.npy', g.status)\n"
        "print('reliable', g.n_reliable, 'unhit', g.n_unhit, file=sys.stderr)"
    ),
    "setup: the bands' estimates as the assemble task receives them": _BANDS
    + (
        "import pickle; import numpy as np; from empcompress.gain.estimate import GainEstimate\n"
        "gain, status = np.load(W / 'gain.npy'), np.load(W / 'status.npy')\n"
        "first = pickle.load(open(W / 'band.est', 'rb'))\n"
        "r0, r1 = BANDS[0].rows\n"
        "same = np.array_equal(first.gain.view(np.uint32), gain[r0:r1].view(np.uint32))\n"
        "same = same and np.array_equal(first.status, status[r0:r1])\n"
        "print('the band tasks give the serial gain in their rows:', same, file=sys.stderr)\n"
        "assert same\n"
        "pieces = []\n"
        "for band in BANDS:\n"
        "    s = status[band.start:band.stop]\n"
        "    c = np.bincount(s.reshape(-1), minlength=4)\n"
        "    pieces.append(GainEstimate(gain[band.start:band.stop], s, int(c[1]), int(c[2]), int(c[3]),"
        " int(c[0]), first.n_frames, first.sources))\n"
        "pickle.dump(pieces, open(W / 'bands.est', 'wb'), protocol=5)"
    ),
    "assemble the gain from its bands (as assemble_task)": (
        "import pickle; import numpy as np\n"
        "from empcompress.gain.estimate import assemble_gain_estimate\n"
        "bands = pickle.load(open(W / 'bands.est', 'rb'))\n"
        "g = assemble_gain_estimate(bands, frame_shape=SHAPE)\n"
        "del bands\n"
        "np.save(W / 'assembled.npy', g.gain)"
    ),
    "setup: check the assembled gain": (
        "import numpy as np\n"
        "assembled, serial = np.load(W / 'assembled.npy'), np.load(W / 'gain.npy')\n"
        "same = np.array_equal(assembled.view(np.uint32), serial.view(np.uint32))\n"
        "print('the assembled gain is the serial gain:', same, file=sys.stderr); assert same"
    ),
    "fit one movie to the gain": (
        "import numpy as np; from empcompress.gain.grouping import fit_gain\n"
        "f = fit_gain(A, np.load(W / 'gain.npy'), name='g'); print(f.fits, f.reason[:80], file=sys.stderr)"
    ),
}

#: Steps both versions have (no bands: 4096x4096 is one band), for --compare-with.
COMMON_STEPS = {
    "own estimate of one movie": (
        "from empcompress.gain.grouping import movie_estimate\n"
        "import pickle; pickle.dump(movie_estimate(A, n_sample_frames=4), open(W / 'a.est', 'wb'))"
    ),
    "partial of one movie (16 frames or all)": (
        "import pickle; from empcompress.gain.grouping import movie_partial\n"
        "pickle.dump(movie_partial(A, n_sample_frames=16), open(W / 'a.part', 'wb'), protocol=5)\n"
        "pickle.dump(movie_partial(B, n_sample_frames=16), open(W / 'b.part', 'wb'), protocol=5)"
    ),
    "merge two partials and finalize": (
        "import pickle; from empcompress.gain import merge_gain_partials, finalize_gain\n"
        "a, b = (pickle.load(open(W / name, 'rb')) for name in ('a.part', 'b.part'))\n"
        "m = merge_gain_partials(a, b, into_first=True)\n"
        "import numpy as np; np.save(W / 'gain.npy', finalize_gain(m).gain)"
    ),
    "estimate_gain of two movies (convert's auto gain path)": (
        "from empcompress.gain import estimate_gain\n"
        "import numpy as np; np.save(W / 'gain2.npy', estimate_gain([A, B], max_frames=16).gain)"
    ),
}


#: Movies of the ``--set`` run (the most ``estimate_set_gain`` compares: SEED_SAMPLE_MOVIES), with the
#: orientation of the gain each was normalised with ("other": another gain).
SET_MOVIES = (
    "identity",
    "identity",
    "flip-columns",
    "identity",
    "rotate-180",
    "other",
    "flip-rows",
    "identity",
)

#: Prints the peak so far (before the measured call) for the runner to find.
_SETUP_PEAK = (
    "print('SETUP', [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1], "
    "file=sys.stderr)\n"
)

#: Steps of the ``--set`` run; PATHS are the set's movies.
SET_STEPS = {
    "estimate_set_gain of the set (the gain estimate command)": (
        "import hashlib; from empcompress.gain import estimate_set_gain\n"
        "r = estimate_set_gain(PATHS)\n"
        "print('DECISIONS', [Path(p).name for p in r.used],"
        " [(Path(p).name, round(f, 6)) for p, f in r.misfits],"
        " hashlib.sha256(r.estimate.gain.tobytes() + r.estimate.status.tobytes()).hexdigest()[:16],"
        " r.estimate.n_reliable, r.estimate.n_frames, file=sys.stderr)"
    ),
    "GainCounter.add of a frame the gain does not fit (every value an exception)": (
        "import numpy as np; from empcompress.gain import GainCounter\n"
        "rng = np.random.default_rng(5)\n"
        "gain = rng.random(SHAPE, dtype=np.float32); gain += 0.5\n"
        "frame = rng.random(SHAPE, dtype=np.float32); frame += 0.5\n"
        "counter = GainCounter(gain, n_frames=1, reference_name='g')\n"
        + _SETUP_PEAK
        + "counter.add(0, frame)\n"
        "print('DECISIONS', counter.n_exceptions, counter.over_limit, file=sys.stderr)"
    ),
    "exception_fraction of that frame (classification, fitting, misfits)": (
        "import numpy as np; from empcompress.gainref import exception_fraction\n"
        "rng = np.random.default_rng(5)\n"
        "gain = rng.random(SHAPE, dtype=np.float32); gain += 0.5\n"
        "frame = rng.random(SHAPE, dtype=np.float32); frame += 0.5\n"
        + _SETUP_PEAK
        + "print('DECISIONS', exception_fraction([frame], gain), file=sys.stderr)"
    ),
}


#: The seed comparison alone (this checkout): PATHS' own estimates, kept on disk and compared.
SEED_STEP = (
    "from empcompress.gain.grouping import movie_estimate\n"
    "from empcompress.gain.set_compare import compare_sampled_estimates\n"
    "from empcompress.mrc import read_header\n"
    "c = compare_sampled_estimates([str(p) for p in PATHS], lambda p: movie_estimate(p, n_sample_frames=8),"
    " [read_header(p).frame_shape for p in PATHS])\n"
    "print('DECISIONS', [(x.first, x.second, x.verdict, x.orientation) for x in c if x.first == 0],"
    " file=sys.stderr)"
)


def _write_movie(path: Path, gain: np.ndarray, *, n_frames: int, dose: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ny, nx = gain.shape
    header = np.zeros(256, dtype="<i4")
    header[0:4] = (nx, ny, n_frames, 2)
    header[7:10] = (nx, ny, n_frames)
    header.view("<f4")[10:13] = (nx, ny, n_frames)
    header[16:19] = (1, 2, 3)
    header.view("S4")[52] = b"MAP "
    header.view("u1")[212:214] = (0x44, 0x44)
    with open(path, "wb") as handle:
        handle.write(header.tobytes())
        for _ in range(n_frames):
            counts = rng.poisson(dose, size=gain.shape).astype(np.float32)
            handle.write((counts * gain).astype("<f4").tobytes())


def _write_pair(work: Path, shape: tuple[int, int], *, frames: int, dose: float) -> tuple[Path, Path]:
    gain = np.random.default_rng(1).uniform(0.7, 1.4, shape).astype(np.float32)
    a, b = work / "a.mrc", work / "b.mrc"
    _write_movie(a, gain, n_frames=frames, dose=dose, seed=2)
    # the second movie was normalised with the gain flipped left-right (a partial to turn)
    _write_movie(b, np.ascontiguousarray(gain[:, ::-1]), n_frames=frames, dose=dose, seed=3)
    return a, b


def _run_step(code: str, a: Path, b: Path, work: Path, *, code_root: Path) -> tuple[float, float, float]:
    """(wall s, CPU s, peak RSS MiB) of ``code`` in a fresh process, empcompress from ``code_root``."""
    return _run_code(code, work, code_root=code_root, names={"A": str(a), "B": str(b)})[:3]


def _run_code(
    code: str, work: Path, *, code_root: Path, names: dict[str, str | list[str]]
) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak RSS MiB, its stderr) of ``code`` in a fresh process with ``names`` defined.

    ``names`` are paths (a list: a list of paths) the code sees as ``Path`` objects.
    """
    script = (
        "import sys, os\nfrom pathlib import Path\n"
        + "".join(
            f"{name} = [Path(p) for p in {value!r}]\n"
            if isinstance(value, list)
            else f"{name} = Path({value!r})\n"
            for name, value in names.items()
        )
        + f"W = Path({str(work)!r})\nSHAPE = {SHAPE!r}\n"
        + code
        + "\nprint([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(code_root)},
        cwd=str(work),
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys.stderr.write(done.stderr)
    if done.returncode:
        raise SystemExit(f"step failed ({code_root}):\n{code}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, int(done.stdout.strip().splitlines()[-1]) / 1024, done.stderr


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f}"


def _set_run(args: argparse.Namespace) -> None:
    """The ``--set`` run: print a markdown section (the results file's other sections are kept)."""
    loads = [_load()]
    roots = {"after": ROOT}
    if args.compare_with is not None:
        roots = {"before": args.compare_with.resolve(), "after": ROOT}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gain-set-") as scratch:
        work = Path(scratch)
        rng = np.random.default_rng(11)
        gain = rng.random(SHAPE, dtype=np.float32)
        gain *= np.float32(0.7)
        gain += np.float32(0.7)
        other = rng.random(SHAPE, dtype=np.float32)
        other *= np.float32(0.7)
        other += np.float32(0.7)
        turns = {
            "identity": gain,
            "flip-columns": gain[:, ::-1],
            "flip-rows": gain[::-1],
            "rotate-180": gain[::-1, ::-1],
            "other": other,
        }
        paths = []
        for index, code in enumerate(SET_MOVIES):
            path = work / f"m{index}.mrc"
            _write_movie(
                path,
                np.ascontiguousarray(turns[code]),
                n_frames=args.set_frames,
                dose=args.dose,
                seed=20 + index,
            )
            paths.append(str(path))
        del gain, other, turns
        for n_movies in (2, 4, 8) if args.seed_only else ():  # this checkout only: the step is new
            label = f"the seed comparison alone (estimates on disk, compared by bands), {n_movies} movies"
            wall, cpu, peak, stderr = _run_code(
                SEED_STEP, work, code_root=ROOT, names={"PATHS": paths[:n_movies]}
            )
            found = [line for line in stderr.splitlines() if line.startswith("DECISIONS")]
            rows.append((label, "after", wall, cpu, peak, None))
            rows.append((label, "verdicts", 0.0, 0.0, 0.0, found[-1] if found else "?"))
            print(f"{label}: {wall:.1f} s, CPU {cpu:.1f} s, peak {peak:.0f} MiB; {found[-1:]}", flush=True)
        for label, code in SET_STEPS.items() if not args.seed_only else ():
            decisions = {}
            for version, root in roots.items():
                wall, cpu, peak, stderr = _run_code(code, work, code_root=root, names={"PATHS": paths})
                setup = [line.split()[1] for line in stderr.splitlines() if line.startswith("SETUP")]
                found = [line for line in stderr.splitlines() if line.startswith("DECISIONS")]
                decisions[version] = found[-1] if found else "?"
                rows.append((label, version, wall, cpu, peak, int(setup[0]) / 1024 if setup else None))
                print(f"{label} [{version}]: {wall:.1f} s, CPU {cpu:.1f} s, peak {peak:.0f} MiB", flush=True)
                print(f"  {decisions[version]}", flush=True)
            if len(set(decisions.values())) != 1:
                raise SystemExit(f"{label}: the versions decide differently: {decisions}")
            rows.append((label, "decisions (equal)", 0.0, 0.0, 0.0, decisions["after"]))
    loads.append(_load())
    lines = [
        "Command: `python benchmarks/bench_gain_superres.py --set"
        + (" --seed-only" if args.seed_only else "")
        + f" --set-frames {args.set_frames} "
        f"--dose {args.dose}" + (f" --compare-with {args.compare_with}" if args.compare_with else "") + "`, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average (1/5/15 min) at the start and "
        f"the end: {'; '.join(loads)}.",
        "",
        "| step | code | wall s | CPU s | peak RSS MiB | peak before the step's call MiB |",
        "|---|---|---|---|---|---|",
    ]
    for label, version, wall, cpu, peak, extra in rows:
        if version.startswith(("decisions", "verdicts")):
            lines.append(f"| {label} | {version} | | | | `{str(extra).removeprefix('DECISIONS ')}` |")
        else:
            setup = f"{extra:.0f}" if isinstance(extra, float) else "-"
            lines.append(f"| {label} | {version} | {wall:.1f} | {cpu:.1f} | {peak:.0f} | {setup} |")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--dose", type=float, default=0.25)
    parser.add_argument("--compare-with", type=Path, default=None, help="root of another checkout")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=HERE / "results-gain-superres.md")
    parser.add_argument("--set", action="store_true", help="the gain estimate command's set run instead")
    parser.add_argument("--set-frames", type=int, default=2)
    parser.add_argument(
        "--seed-only", action="store_true", help="with --set: only the seed comparison of 2, 4 and 8 movies"
    )
    args = parser.parse_args()
    if args.set:
        _set_run(args)
        return
    loads = [_load()]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gain-superres-") as scratch:
        work = Path(scratch)
        a, b = _write_pair(work, SHAPE, frames=args.frames, dose=args.dose)
        for label, code in STEPS.items():
            wall, cpu, peak_mib = _run_step(code, a, b, work, code_root=ROOT)
            if label.startswith("setup:"):
                continue
            rows.append((label, wall, cpu, peak_mib))
            print(f"{label}: {wall:.1f} s, CPU {cpu:.1f} s, peak {peak_mib:.0f} MiB", flush=True)
    loads.append(_load())
    paired: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    if args.compare_with is not None:
        with tempfile.TemporaryDirectory(prefix="bench-gain-4k-") as scratch:
            work = Path(scratch)
            a, b = _write_pair(work, SMALL_SHAPE, frames=args.frames, dose=args.dose)
            roots = {"before": args.compare_with.resolve(), "after": ROOT}
            for repeat in range(args.repeats + 1):  # the first round compiles the kernels: not kept
                for label, code in COMMON_STEPS.items():
                    order = ("before", "after") if repeat % 2 else ("after", "before")
                    for version in order:
                        result = _run_step(code, a, b, work, code_root=roots[version])
                        if repeat:
                            paired.setdefault(label, {}).setdefault(version, []).append(result)
                            print(f"4096 {label} {version}: CPU {result[1]:.2f} s", flush=True)
        loads.append(_load())
    lines = [
        "# Gain grouping steps on K3 super-resolution movies: time and peak memory",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other work; "
        f"Python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
        f"Load average (1/5/15 min) at the start, after the super-resolution steps and at the end: "
        f"{'; '.join(loads)}. Wall times are indicative only: compare CPU seconds.",
        "",
        f"Command: `python benchmarks/bench_gain_superres.py --frames {args.frames} --dose {args.dose}"
        + (f" --compare-with {args.compare_with} --repeats {args.repeats}" if args.compare_with else "")
        + "`",
        "",
        f"Two gain-normalised float32 movies of {SHAPE[1]}x{SHAPE[0]}, {args.frames} frames "
        f"({SHAPE[0] * SHAPE[1] * 4 / 1e6:.0f} MB a frame), {args.dose} e-/pixel/frame, the second "
        "normalised with the gain flipped left-right. Each step in a fresh process (peak RSS includes "
        "Python, NumPy and numba: the first row).",
        "",
        "| step (as a Dask worker runs it) | wall s | CPU s | peak RSS MiB | within 3 GiB | within 4 GiB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {label} | {wall:.1f} | {cpu:.1f} | {peak:.0f} | {'yes' if peak <= 3072 else 'NO'} | "
        f"{'yes' if peak < 4096 else 'NO'} |"
        for label, wall, cpu, peak in rows
    ]
    if paired:
        lines += [
            "",
            f"## 4096x4096 (one band): this checkout against {args.compare_with}",
            "",
            f"Two movies of 4096x4096, {args.frames} frames, {args.repeats} paired runs a step "
            "(alternating which version runs first; a first round that compiles the kernels not kept). "
            "Median CPU seconds and peak RSS:",
            "",
            "| step | CPU s before | CPU s after | after / before | peak MiB before | peak MiB after |",
            "|---|---|---|---|---|---|",
        ]
        for label, versions in paired.items():
            before_cpu = float(np.median([r[1] for r in versions["before"]]))
            after_cpu = float(np.median([r[1] for r in versions["after"]]))
            before_peak = max(r[2] for r in versions["before"])
            after_peak = max(r[2] for r in versions["after"])
            lines.append(
                f"| {label} | {before_cpu:.2f} | {after_cpu:.2f} | {after_cpu / before_cpu:.2f} | "
                f"{before_peak:.0f} | {after_peak:.0f} |"
            )
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
