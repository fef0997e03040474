"""Benchmark: gain-normalised movies, empcompress against RELION, side by side.

Builds a synthetic set of gain-normalised float32 movies that share one gain
(Poisson counts at a given dose x a per-pixel float32 gain, rounded once to
float32, with dead and hot pixels), then measures:

* gain estimation (in-process, stage by stage: per-movie partials, merge,
  finalize) in MB/s of float32 input, and the end-to-end ``empcompress gain
  estimate`` command;
* ``empcompress convert --gain gain.mrc`` per movie: MB/s, output size against
  the order-0 entropy floor of the counts (n_pixels x entropy of the count
  histogram / 8 bytes), exceptions, and the plain float32 path for contrast;
* ``relion_convert_to_tiff --estimate_gain`` then ``--gain`` on the same set
  (default ``--thresh 50`` and a lenient ``--thresh 5``): time, size, and
  whether TIFF x RELION's gain-reference.mrc gives back the original values.

MB = 10^6 bytes; MB/s are of the float32 MRC input. Sources are read from the
page cache. Prints a markdown table and writes it to
``benchmarks/results-gain.md``.

``--one-read`` measures instead how often ``convert --gain`` reads its source
(issue 10: once, plus the gain plan's sample at most): one gain-normalised movie
per frame size, converted in a fresh process by this tree and, side by side, by
an older checkout (``--old``, e.g. ``git worktree add /tmp/old HEAD``). Source
reads are counted through ``MrcMovie`` (every read of the source goes through it,
in old and new code alike); CPU seconds and peak RSS (``VmHWM``) are the
converting process's own. Adds (or replaces) its section in ``results-gain.md``.

Usage::

    python benchmarks/bench_gain.py             # 3 movies x 12 frames of 4096x4096 (~10 min on 2 cores)
    python benchmarks/bench_gain.py --quick     # 2 movies x 8 frames of 512x512 (< 1 min)
    python benchmarks/bench_gain.py --one-read --old /tmp/old [--movies-one-read 4096x4096x12,11520x8184x8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numba
import numpy as np
import tifffile

from empcompress import gain as gain_module
from empcompress.gainref import write_gain_reference

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results-gain.md"


@dataclass(frozen=True)
class SetSpec:
    n_movies: int
    n_frames: int
    size: int
    dose: float
    seed: int = 20240622


def make_gain(spec: SetSpec) -> np.ndarray:
    """Slowly varying sensitivity with pixel noise, as float32; some dead pixels (gain 0)."""
    rng = np.random.default_rng((spec.seed, 1))
    y, x = np.mgrid[0 : spec.size, 0 : spec.size] / spec.size
    smooth = 1 + 0.12 * np.sin(2 * np.pi * (x + 0.3 * y)) + 0.08 * np.cos(3 * np.pi * y)
    gain = (smooth * rng.normal(1.0, 0.05, size=smooth.shape)).astype(np.float32)
    dead = rng.integers(0, spec.size, size=(2, max(1, spec.size**2 // 200_000)))
    gain[dead[0], dead[1]] = 0.0
    return gain


def write_movies(spec: SetSpec, gain: np.ndarray, directory: Path) -> tuple[list[Path], np.ndarray]:
    """Write the movies frame by frame; returns their paths and the set's count histogram."""
    histogram = np.zeros(1, dtype=np.int64)
    hot_rng = np.random.default_rng((spec.seed, 2))
    hot = hot_rng.integers(0, spec.size, size=(2, max(1, spec.size**2 // 500_000)))
    paths = []
    for movie in range(spec.n_movies):
        path = directory / f"movie_{movie:03d}.mrc"
        with mrcfile.new_mmap(
            path, shape=(spec.n_frames, spec.size, spec.size), mrc_mode=2, overwrite=True
        ) as handle:
            handle.voxel_size = 0.83
            for frame in range(spec.n_frames):
                rng = np.random.default_rng((spec.seed, 10 + movie, frame))
                counts = rng.poisson(spec.dose, size=(spec.size, spec.size)).astype(np.int32)
                counts[hot[0], hot[1]] += rng.integers(20, 60, size=hot.shape[1])
                histogram = _add(histogram, np.bincount(counts.reshape(-1)))
                handle.data[frame] = counts.astype(np.float32) * gain
        paths.append(path)
    return paths, histogram


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    size = max(a.size, b.size)
    return np.pad(a, (0, size - a.size)) + np.pad(b, (0, size - b.size))


def entropy_floor_bytes(histogram: np.ndarray) -> float:
    total = histogram.sum()
    p = histogram[histogram > 0] / total
    return float(total * -(p * np.log2(p)).sum() / 8)


def child_usage() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def run(command: list[str], *, cwd: Path | None = None) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, stdout) of a command; raises on failure."""
    cpu_before, _ = child_usage()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    cpu_after, _ = child_usage()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, cpu_after - cpu_before, done.stdout


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mb(n_bytes: float) -> float:
    return n_bytes / 1e6


def row(*cells: str) -> str:
    cells = cells + ("-",) * max(0, 10 - len(cells))
    return "| " + " | ".join(cells) + " |"


@dataclass(frozen=True)
class RelionResult:
    thresh: int
    estimate_wall: float
    estimate_cpu: float
    convert_wall: float
    convert_cpu: float
    size: int
    gain_size: int
    stored: str
    exact_fraction: float
    failure: str


def relion_side(
    paths: list[Path], gain: np.ndarray, work: Path, *, thresh: int, threads: int
) -> RelionResult | None:
    program = shutil.which("relion_convert_to_tiff")
    if program is None:
        return None
    directory = work / f"relion_thresh{thresh}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    listing = directory / "movies.lst"
    listing.write_text("".join(f"{p.name}\n" for p in paths))  # relative: RELION appends input paths to --o
    cwd = paths[0].parent
    estimate_wall, estimate_cpu, _ = run(
        [
            program,
            "--i",
            str(listing),
            "--o",
            f"{directory}/",
            "--estimate_gain",
            "--thresh",
            str(thresh),
            "--j",
            str(threads),
        ],
        cwd=cwd,
    )
    convert = [
        program,
        "--i",
        str(listing),
        "--o",
        f"{directory}/",
        "--gain",
        str(directory / "gain_estimate.bin"),
    ]
    convert += ["--thresh", str(thresh)]
    failure = ""
    try:
        convert_wall, convert_cpu, _ = run(convert, cwd=cwd)
    except RuntimeError as error:  # RELION stops at a pixel its estimate got wrong; retry as it suggests
        failure = (
            str(error).split("ERROR:")[-1].strip().splitlines()[0] if "ERROR:" in str(error) else str(error)
        )
        for leftover in directory.glob("*.tif"):
            leftover.unlink()
        convert_wall, convert_cpu, _ = run([*convert, "--ignore_error"], cwd=cwd)
    outputs = [directory / (p.stem + ".tif") for p in paths]
    size = sum(o.stat().st_size for o in outputs)
    reference = directory / "gain-reference.mrc"
    with mrcfile.open(reference, permissive=True) as handle:
        relion_gain = np.asarray(handle.data, dtype=np.float32)
    exact = total = 0
    stored = ""
    for source, output in zip(paths, outputs, strict=True):
        with mrcfile.mmap(source, permissive=True) as original, tifffile.TiffFile(output) as tiff:
            for index, page in enumerate(tiff.pages):
                values = page.asarray()  # type: ignore[union-attr]
                stored = str(values.dtype)
                rebuilt = (values[::-1].astype(np.float32) * relion_gain).astype(np.float32)
                exact += int(
                    np.count_nonzero(rebuilt.view(np.uint32) == original.data[index].view(np.uint32))
                )
                total += values.size
    return RelionResult(
        thresh=thresh,
        estimate_wall=estimate_wall,
        estimate_cpu=estimate_cpu,
        convert_wall=convert_wall,
        convert_cpu=convert_cpu,
        size=size,
        gain_size=reference.stat().st_size,
        stored=stored,
        exact_fraction=exact / max(1, total),
        failure=failure,
    )


#: Runs in a fresh process: warm up, then ``convert --gain`` argv[2] to argv[3] once with the tree at
#: argv[1]; prints what it cost. Counts the bytes read from the source through MrcMovie.
_MEASURE_ONE_READ = r"""
import json, os, resource, sys, time
from pathlib import Path
tree, source, output = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
gain, threads = sys.argv[4], int(sys.argv[5])
sys.path.insert(0, tree)
import numpy as np
from empcompress import mrc
from empcompress.convert import convert_movie
from empcompress.gainref import write_gain_reference

source_reads = {"bytes": 0}
def counted(method, size):
    def wrapper(self, *args, **kwargs):
        if Path(self.path) == source:
            source_reads["bytes"] += size(self)
        return method(self, *args, **kwargs)
    return wrapper
mrc.MrcMovie.read_raw_frame = counted(
    mrc.MrcMovie.read_raw_frame, lambda movie: movie.header.frame_size_bytes
)
mrc.MrcMovie.read_header_bytes = counted(mrc.MrcMovie.read_header_bytes, lambda movie: 1024)
mrc.MrcMovie.read_extended_header_bytes = counted(
    mrc.MrcMovie.read_extended_header_bytes, lambda movie: movie.header.extended_header_size_bytes
)

def peak_rss():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))

warm = output.parent / "warm"
warm.mkdir(exist_ok=True)
rng = np.random.default_rng(1)
warm_gain = rng.uniform(0.6, 1.6, size=(64, 64)).astype(np.float32)
write_gain_reference(warm / "gain.mrc", warm_gain, overwrite=True)
values = (rng.poisson(1.0, size=(4, 64, 64)).astype(np.float32) * warm_gain).astype(np.float32)
import mrcfile
with mrcfile.new(warm / "w.mrc", overwrite=True) as handle:
    handle.set_data(values)
convert_movie(warm / "w.mrc", warm / "w.tif", gain=warm / "gain.mrc", overwrite=True)
source_reads["bytes"] = 0
usage, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
result = convert_movie(source, output, gain=gain, threads=threads, overwrite=True)
wall = time.perf_counter() - started
usage_after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "wall": wall,
    "cpu": usage_after.ru_utime + usage_after.ru_stime - usage.ru_utime - usage.ru_stime,
    "source_reads": source_reads["bytes"],
    "peak_rss": peak_rss(),
    "output_bytes": result.output_size_bytes,
    "stored": result.decision.stored_dtype,
    "gain": result.gain.action,
    "n_exceptions": result.gain.n_exceptions,
}))
"""


def write_gain_movie(
    path: Path, *, n_frames: int, shape: tuple[int, int], dose: float, gain: np.ndarray
) -> None:
    """One gain-normalised float32 movie (Poisson counts x ``gain``, rounded once), frame by frame."""
    with mrcfile.new_mmap(path, shape=(n_frames, *shape), mrc_mode=2, overwrite=True) as handle:
        handle.voxel_size = 0.83
        for frame in range(n_frames):
            rng = np.random.default_rng((7, frame))
            handle.data[frame] = rng.poisson(dose, size=shape).astype(np.float32) * gain


def one_read_main(args: argparse.Namespace) -> int:
    """``--one-read``: source reads per source byte, CPU and peak RSS of ``convert --gain``, old and new."""
    trees = [("this tree", str(HERE.parent))]
    if args.old is not None:
        trees.insert(0, ("old (" + _tree_commit(args.old) + ")", str(args.old)))
    work = args.work / "one-read"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rows = []
    for cell in args.movies_one_read.split(","):
        nx, ny, n_frames = (int(part) for part in cell.split("x"))
        spec = SetSpec(1, n_frames, max(nx, ny), args.dose)
        gain = np.ascontiguousarray(make_gain(spec)[:ny, :nx])
        source = work / f"movie_{nx}x{ny}x{n_frames}.mrc"
        print(f"building {source.name}", file=sys.stderr)
        write_gain_movie(source, n_frames=n_frames, shape=(ny, nx), dose=args.dose, gain=gain)
        gain_path = work / "gain.mrc"
        write_gain_reference(gain_path, gain, overwrite=True)
        size = source.stat().st_size
        measured = {}
        for label, tree in trees:
            output = work / "out" / f"{source.stem}.tif"
            output.parent.mkdir(exist_ok=True)
            print(f"converting {source.name} with {label}", file=sys.stderr)
            load = os.getloadavg()[0]
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _MEASURE_ONE_READ,
                    tree,
                    str(source),
                    str(output),
                    str(gain_path),
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{label} failed: {done.stderr[-2000:]}")
            measured[label] = {**json.loads(done.stdout.strip().splitlines()[-1]), "load": load}
            shutil.rmtree(output.parent)
        rows.append((f"{nx}x{ny}, {n_frames} frames", size, measured))
        source.unlink()
    lines = [
        f"## `convert --gain`: source reads per source byte, old and new (issue 10, one read; {args.dose} "
        f"e-/pixel/frame, threads={args.threads})",
        "",
        "Source reads are counted through `MrcMovie` (every read of the source goes through it); CPU s and "
        "peak RSS (VmHWM) are the converting process's own, in a fresh process per conversion after a small "
        "warm-up; sources read from the page cache. The machine is shared (load average in the last column): "
        "compare CPU s, not wall s.",
        "",
        "| movie | tree | source reads / source | CPU s | wall s | peak RSS MiB | stored | gain | exceptions "
        "| output MB | load |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, size, measured in rows:
        for label, entry in measured.items():
            lines.append(
                f"| {name} ({size / 1e6:.0f} MB) | {label} | {entry['source_reads'] / size:.3f} | "
                f"{entry['cpu']:.1f} | {entry['wall']:.1f} | {entry['peak_rss'] / 2**20:.0f} | "
                f"{entry['stored']} | {entry['gain']} | {entry['n_exceptions']} | "
                f"{entry['output_bytes'] / 1e6:.1f} | {entry['load']:.1f} |"
            )
    lines += [
        "",
        "Old: the gain plan's 4 sampled frames, a survey pass (sha256, statistics, counts and exceptions), "
        "a trial read of the middle frame and an encoding pass: 2 + 5/n_frames. New: the sampled frames, "
        "then one pass that counts, hashes and encodes; the sampled frames that fit in "
        "`convert.HELD_SAMPLE_BYTES` (512 MiB) are held for the pass and not read again (4096x4096 float32: "
        "all 4; 11520x8184: 1 of 4, so 1 + 3/n_frames). Peak RSS: the held sampled frames stay in memory "
        "until the pass reaches them.",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if not args.no_write:
        _replace_section(RESULTS, lines[0], section)
        print(f"written to {RESULTS}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _tree_commit(tree: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or str(tree)


def _replace_section(path: Path, title: str, section: str) -> None:
    """Put ``section`` in ``path`` in place of the section with the same title line, else at the end."""
    text = path.read_text() if path.exists() else "# bench_gain.py results\n"
    start = text.find(title.split(";")[0])
    if start < 0:
        path.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = text.find("\n## ", start + 1)
    path.write_text(text[:start] + section + (text[end + 1 :] if end >= 0 else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small frames, for a smoke test")
    parser.add_argument("--movies", type=int, default=3)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--dose", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--work", type=Path, default=HERE / "_work" / "gain")
    parser.add_argument("--keep", action="store_true", help="keep the generated movies and outputs")
    parser.add_argument("--no-write", action="store_true", help="do not write results-gain.md")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the 1-minute load average to drop below 0.5 (shared machines)",
    )
    parser.add_argument(
        "--one-read",
        action="store_true",
        help="measure source reads per source byte of convert --gain (this tree, and --old side by side)",
    )
    parser.add_argument(
        "--old", type=Path, default=None, help="an older checkout to compare with (--one-read)"
    )
    parser.add_argument(
        "--movies-one-read",
        default="4096x4096x12,11520x8184x8",
        help="NXxNYxFRAMES,... movies for --one-read",
    )
    args = parser.parse_args(argv)
    if args.one_read:
        return one_read_main(args)
    deadline = time.monotonic() + args.wait_quiet
    while os.getloadavg()[0] > 0.5 and time.monotonic() < deadline:
        time.sleep(10)
    load_at_start = os.getloadavg()[0]
    spec = (
        SetSpec(2, 8, 512, args.dose)
        if args.quick
        else SetSpec(args.movies, args.frames, args.size, args.dose)
    )
    numba.set_num_threads(max(1, min(args.threads, numba.config.NUMBA_NUM_THREADS)))
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shape = f"{spec.n_movies} movies x {spec.n_frames} frames of {spec.size}x{spec.size}"
    print(f"building {shape} at {spec.dose} e-/px/frame", file=sys.stderr)
    true_gain = make_gain(spec)
    paths, histogram = write_movies(spec, true_gain, work)
    source_bytes = sum(p.stat().st_size for p in paths)
    floor = entropy_floor_bytes(histogram)
    # warm up the kernels (Numba caches compile once per machine)
    warm = work / "warm"
    warm.mkdir()
    tiny = SetSpec(1, 2, 64, spec.dose)
    warm_paths, _ = write_movies(tiny, make_gain(tiny), warm)
    subprocess.run(
        ["empcompress", "convert", str(warm_paths[0]), "-o", str(warm / "w.tif"), "--gain", "auto", "-q"],
        check=True,
        capture_output=True,
    )

    # ---- estimation, stage by stage (in-process)
    print("estimating the gain", file=sys.stderr)
    cpu0, wall0 = self_cpu(), time.perf_counter()
    partials = [gain_module.gain_partial_from_movie(p) for p in paths]
    partial_wall, partial_cpu = time.perf_counter() - wall0, self_cpu() - cpu0
    cpu0, wall0 = self_cpu(), time.perf_counter()
    merged = partials[0]
    for partial in partials[1:]:
        merged = gain_module.merge_gain_partials(merged, partial)
    merge_wall, merge_cpu = time.perf_counter() - wall0, self_cpu() - cpu0
    cpu0, wall0 = self_cpu(), time.perf_counter()
    estimate = gain_module.finalize_gain(merged)
    finalize_wall, finalize_cpu = time.perf_counter() - wall0, self_cpu() - cpu0
    partial_bytes = len(__import__("pickle").dumps(partials[0], protocol=5))
    del partials, merged
    hit = true_gain > 0
    exact_gain = float(np.mean(estimate.gain.view(np.uint32)[hit] == true_gain.view(np.uint32)[hit]))
    reference = work / "out" / "gain-reference.mrc"
    reference.parent.mkdir()
    write_gain_reference(reference, estimate.gain)

    # ---- the CLI end to end: estimate, then convert each movie with the gain
    cli_dir = work / "cli"
    cli_dir.mkdir()
    estimate_wall, estimate_cpu, estimate_out = run(
        [
            "empcompress",
            "gain",
            "estimate",
            *map(str, paths),
            "-o",
            str(cli_dir / "gain.mrc"),
            "--json",
            "-q",
            "--threads",
            str(args.threads),
        ]
    )
    cli_report = json.loads(estimate_out)
    conversions = []
    for path in paths:
        wall, cpu, out = run(
            [
                "empcompress",
                "convert",
                str(path),
                "-o",
                str(reference.parent / (path.stem + ".tif")),
                "--gain",
                str(reference),
                "--json",
                "-q",
                "--threads",
                str(args.threads),
            ]
        )
        result = json.loads(out)
        conversions.append((wall, cpu, result))
    converted_size = sum(r["output_size_bytes"] for _, _, r in conversions)
    convert_seconds = sum(r["elapsed_seconds"] for _, _, r in conversions)
    convert_wall = sum(w for w, _, _ in conversions)
    convert_cpu = sum(c for _, c, _ in conversions)
    n_exceptions = sum(r["gain"]["n_exceptions"] for _, _, r in conversions)
    stored = {r["decision"]["stored_dtype"] for _, _, r in conversions}
    codecs = {r["codec"] for _, _, r in conversions}
    float_wall, float_cpu, float_out = run(
        [
            "empcompress",
            "convert",
            str(paths[0]),
            "-o",
            str(work / "float.tif"),
            "--json",
            "-q",
            "--threads",
            str(args.threads),
        ]
    )
    float_result = json.loads(float_out)
    restore_wall, _, _ = run(
        [
            "empcompress",
            "restore",
            str(reference.parent / (paths[0].stem + ".tif")),
            "-o",
            str(work / "back.mrc"),
            "-q",
        ]
    )
    restored_ok = (work / "back.mrc").read_bytes() == paths[0].read_bytes()

    # ---- RELION
    print("running relion_convert_to_tiff", file=sys.stderr)
    relion = [relion_side(paths, true_gain, work, thresh=t, threads=args.threads) for t in (50, 5)]

    # ---- report
    source_mb = mb(source_bytes)
    per_movie = source_bytes / spec.n_movies
    gain_size = reference.stat().st_size
    ours = converted_size + gain_size
    float_size = float_result["output_size_bytes"]
    header = ["step", "tool", "wall s", "CPU s", "MB/s (wall)", "MB/s per CPU s", "output MB"]
    header += ["x entropy floor", "ratio vs MRC", "lossless"]
    lines = [
        f"## Gain-normalised set: {shape}, {spec.dose} e-/pixel/frame, float32 gain "
        f"(2 cores, threads={args.threads})",
        "",
        f"Input {source_mb:.0f} MB of float32 MRC; order-0 entropy floor of the counts {mb(floor):.1f} MB. "
        f"Sizes include the gain reference ({mb(gain_size):.1f} MB, once per set) where one is written. "
        f"Load average when the run started: {load_at_start:.2f}.",
        "",
        row(*header),
        row(*["---"] * len(header)),
        row(
            "gain partials (all frames)",
            "empcompress, in-process",
            f"{partial_wall:.1f}",
            f"{partial_cpu:.1f}",
            f"{source_mb / partial_wall:.0f}",
            f"{source_mb / max(partial_cpu, 1e-9):.0f}",
            *["-"] * 4,
        ),
        row(
            f"merge {spec.n_movies} partials",
            "empcompress, in-process",
            f"{merge_wall:.2f}",
            f"{merge_cpu:.2f}",
        ),
        row("finalize", "empcompress, in-process", f"{finalize_wall:.2f}", f"{finalize_cpu:.2f}"),
        row(
            "`gain estimate` (classify + estimate + check)",
            "empcompress CLI",
            f"{estimate_wall:.1f}",
            f"{estimate_cpu:.1f}",
            f"{source_mb / estimate_wall:.0f}",
            f"{source_mb / max(estimate_cpu, 1e-9):.0f}",
            f"{mb(gain_size):.1f}",
        ),
        row(
            "`convert --gain` (all movies)",
            "empcompress CLI",
            f"{convert_wall:.1f}",
            f"{convert_cpu:.1f}",
            f"{source_mb / convert_seconds:.0f} (tool's own {convert_seconds:.1f} s)",
            f"{source_mb / max(convert_cpu, 1e-9):.0f}",
            f"{mb(ours):.1f}",
            f"{ours / floor:.3f} ({converted_size / floor:.3f} without the gain file)",
            f"{source_bytes / ours:.1f}x",
            f"verified; restore byte-identical: {restored_ok}",
        ),
        row(
            "`convert` without gain (1 movie, float32 path)",
            "empcompress CLI",
            f"{float_wall:.1f}",
            f"{float_cpu:.1f}",
            f"{mb(per_movie) / float_result['elapsed_seconds']:.0f}",
            f"{mb(per_movie) / max(float_cpu, 1e-9):.0f}",
            f"{mb(float_size) * spec.n_movies:.1f} (x{spec.n_movies})",
            f"{float_size * spec.n_movies / floor:.2f}",
            f"{per_movie / float_size:.2f}x",
            "verified",
        ),
    ]
    for entry in relion:
        if entry is None:
            lines.append(row("relion_convert_to_tiff", "not installed"))
            continue
        total = entry.size + entry.gain_size
        note = f"stored {entry.stored}; TIFF x its gain exact at {100 * entry.exact_fraction:.3f}% of values"
        if entry.failure:
            note += f"; first run stopped: {entry.failure} (numbers: rerun with --ignore_error)"
        lines.append(
            row(
                f"`--estimate_gain --thresh {entry.thresh}` then `--gain`",
                "relion_convert_to_tiff",
                f"{entry.estimate_wall:.1f} + {entry.convert_wall:.1f}",
                f"{entry.estimate_cpu:.1f} + {entry.convert_cpu:.1f}",
                f"{source_mb / entry.estimate_wall:.0f} / {source_mb / entry.convert_wall:.0f}",
                "-",
                f"{mb(total):.1f}",
                f"{total / floor:.2f}",
                f"{source_bytes / total:.1f}x",
                note + "; not verified",
            )
        )
    fraction = 100 * n_exceptions / histogram.sum()
    lines += [
        "",
        f"Estimated gain: {estimate.n_reliable} reliable, {estimate.n_unconfirmed} unconfirmed, "
        f"{estimate.n_exception} exception, {estimate.n_unhit} unhit pixels; equal bit for bit to the true "
        f"gain at {100 * exact_gain:.4f}% of the live pixels. CLI report: {cli_report['pixels']}. "
        f"One movie's partial pickles to {mb(partial_bytes):.0f} MB (what Dask ships per movie).",
        f"Conversion: counts stored as {', '.join(sorted(stored))}, codec {', '.join(sorted(codecs))}, "
        f"{n_exceptions} exception values in total ({fraction:.5f}% of values).",
        f"Restore of one gain-converted movie: {restore_wall:.1f} s wall, byte-identical: {restored_ok}.",
        "",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write and not args.quick:
        RESULTS.write_text(f"# bench_gain.py results\n\n{table}")
        print(f"written to {RESULTS}", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if restored_ok else 1


if __name__ == "__main__":
    sys.exit(main())
