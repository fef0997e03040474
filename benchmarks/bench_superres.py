"""K3 super-resolution movies (issue 10): size, speed, bytes read, memory, TIFF kind; RELION beside.

Movies of 11520x8184 pixels: Poisson counts over a realistic illumination (see ``_synthetic.py``) at
0.1, 0.25 and 0.5 e-/pixel/frame, as float32 MRC (mode 2) and as packed 4-bit MRC (mode 101, counts
clipped to 15, as SerialEM writes them), 8 and 24 frames. The 8-frame movie of a dose is the first 8
frames of its 24-frame movie (frames are seeded one by one).

For every movie, ``empcompress`` converts it (``threads=1``: MB/s is per core) in a fresh process,
after a warm-up conversion of a tiny movie in that process (imports, Numba's cached kernels), with the
source in the page cache ("warm": read once just before) and after evicting it ("cold":
``posix_fadvise(POSIX_FADV_DONTNEED)`` after ``fsync``). Measured: output size against the order-0
entropy floor of the counts, wall and CPU time, ``/proc/self/io`` ``rchar`` (bytes asked of the file
system; it also counts reading the output back for verification and its checksums) and
``read_bytes`` (bytes the block layer read: the cold-cache read of the source), the bytes read from
the source itself (every source read goes through ``MrcMovie``, whose reads the measuring process
counts), the peak resident size of the process (``VmHWM``: imports, warm-up and the conversion),
and the TIFF kind. ``relion_convert_to_tiff --compression lzw`` (its fastest
setting; its default deflate runs at 12-25 MB/s) runs on the same files in the same way (its
``/proc`` counters come from its launcher, which reaps it).

``--before-after OLD_TREE`` also converts a 4096x4096 float32 movie (8 frames, 1 e-/pixel/frame) with
the code in OLD_TREE (a checkout of the previous commit, e.g. ``git worktree add /tmp/old HEAD``)
and with this tree, alternately, warm and cold: bytes read per source byte before and after.

Run: ``python benchmarks/bench_superres.py --json /tmp/superres.json --before-after /tmp/old``
(about 20-30 minutes on 2 cores; ``--quick``: frames of 1152x818, a smoke test). Results:
``results-superres.md``. Scratch files go to ``benchmarks/_work/superres`` and are deleted.
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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import (
    SyntheticMovieSpec,
    _header_bytes,
    entropy_bits,
    hot_pixels,
    illumination,
    write_synthetic_movie,
)

REPO = Path(__file__).resolve().parents[1]
SUPER_RESOLUTION = (8184, 11520)
DOSES = (0.1, 0.25, 0.5)
#: (dose, frames) cells run for each source kind; 24 frames only at 0.25 e- (time and disk: see the report)
CELLS = ((0.1, 8), (0.25, 8), (0.25, 24), (0.5, 8))
MODE_101_MAX = 15

#: Runs in a fresh process: warm up, then convert argv[2] to argv[3] once and report what it cost.
_MEASURE_EMPCOMPRESS = r"""
import json, os, resource, sys, time
from pathlib import Path
tree, source, output = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
threads, cache = int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, tree)
import mrcfile, numpy as np
from empcompress import mrc
from empcompress.convert import convert_movie

# every read of the source goes through MrcMovie (old and new code alike): count its bytes
source_reads = {"bytes": 0}
raw_frame, main_header, extended = (
    mrc.MrcMovie.read_raw_frame, mrc.MrcMovie.read_header_bytes, mrc.MrcMovie.read_extended_header_bytes
)
def counted(method, size):
    def wrapper(self, *args, **kwargs):
        if Path(self.path) == source:
            source_reads["bytes"] += size(self)
        return method(self, *args, **kwargs)
    return wrapper
mrc.MrcMovie.read_raw_frame = counted(raw_frame, lambda movie: movie.header.frame_size_bytes)
mrc.MrcMovie.read_header_bytes = counted(main_header, lambda movie: 1024)
mrc.MrcMovie.read_extended_header_bytes = counted(
    extended, lambda movie: movie.header.extended_header_size_bytes
)

def io():
    with open("/proc/self/io") as handle:
        return {key: int(value) for key, value in (line.split(": ") for line in handle.read().splitlines())}

def peak_rss():
    # VmHWM: this process's own peak since it started (ru_maxrss would include what the process that
    # started it had: Linux carries it over fork and exec)
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))

warm = output.with_name("warm-up.mrc")
with mrcfile.new(warm, overwrite=True) as mrc:
    mrc.set_data(np.ones((2, 64, 64), np.float32))
convert_movie(warm, output.with_name("warm-up.tif"), overwrite=True)
if cache == "cold":
    descriptor = os.open(source, os.O_RDONLY)
    os.fsync(descriptor)
    os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(descriptor)
source_reads["bytes"] = 0
before, usage, started = io(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
result = convert_movie(source, output, threads=threads, overwrite=True)
wall = time.perf_counter() - started
after, usage_after = io(), resource.getrusage(resource.RUSAGE_SELF)
with open(output, "rb") as handle:
    kind = "BigTIFF" if handle.read(4)[2] == 43 else "classic"
print(json.dumps({
    "wall": wall,
    "cpu": usage_after.ru_utime + usage_after.ru_stime - usage.ru_utime - usage.ru_stime,
    "rchar": after["rchar"] - before["rchar"],
    "read_bytes": after["read_bytes"] - before["read_bytes"],
    "source_reads": source_reads["bytes"],
    "peak_rss": peak_rss(),
    "output_bytes": result.output_size_bytes,
    "stored": result.decision.stored_dtype,
    "codec": result.codec,
    "kind": kind,
}))
"""

#: Runs a program in a child process; its wall and CPU time, peak RSS and /proc I/O counters (a reaped
#: child's counters are added to its parent's, so the launcher's own before/after difference is the child's).
_LAUNCH = r"""
import json, os, sys, time
def io():
    with open("/proc/self/io") as handle:
        return {key: int(value) for key, value in (line.split(": ") for line in handle.read().splitlines())}
report, cache, source, command = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
if cache == "cold":
    descriptor = os.open(source, os.O_RDONLY)
    os.fsync(descriptor)
    os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(descriptor)
before, started = io(), time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(command[0], command)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
after = io()
with open(report, "w") as handle:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_rss": usage.ru_maxrss * 1024,
               "rchar": after["rchar"] - before["rchar"],
               "read_bytes": after["read_bytes"] - before["read_bytes"],
               "exit": os.waitstatus_to_exitcode(status)}, handle)
"""


@dataclass(frozen=True)
class Movie:
    path: str
    source: str  # "float32" | "mode 101"
    dose: float
    n_frames: int
    shape: tuple[int, int]
    size_bytes: int
    floor_bytes: float


@dataclass(frozen=True)
class Row:
    movie: Movie
    tool: str  # "empcompress (new)" | "empcompress (old)" | "relion_convert_to_tiff --compression lzw"
    cache: str  # "warm" | "cold"
    wall_seconds: float
    cpu_seconds: float
    rchar: int
    read_bytes: int
    source_reads: int | None  # bytes read from the source through MrcMovie (empcompress only)
    peak_rss_bytes: int
    output_bytes: int
    stored: str
    kind: str
    load: float


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _header(spec: SyntheticMovieSpec, *, mode: int, n_frames: int) -> bytes:
    header = bytearray(_header_bytes(replace(spec, n_frames=n_frames)))
    header[12:16] = np.int32(mode).tobytes()
    return bytes(header)


def write_movies(work: Path, dose: float, frame_counts: Sequence[int], shape: tuple[int, int]) -> list[Movie]:
    """Float32 and mode-101 movies of ``max(frame_counts)`` frames and of each shorter prefix, in one go."""
    spec = SyntheticMovieSpec(
        dose_per_pixel_per_frame=dose, n_frames=max(frame_counts), ny=shape[0], nx=shape[1]
    )
    base = illumination(spec) * dose
    hot_indices, hot_rates = hot_pixels(spec)
    base.reshape(-1)[hot_indices] = hot_rates
    files: dict[tuple[str, int], Any] = {}
    histograms: dict[tuple[str, int], np.ndarray] = {}
    for n_frames in frame_counts:
        for source, mode in (("float32", 2), ("mode 101", 101)):
            path = work / f"sr_{dose:g}_{n_frames}_{'f32' if mode == 2 else 'm101'}.mrc"
            handle = open(path, "wb")  # noqa: SIM115 (closed below)
            handle.write(_header(spec, mode=mode, n_frames=n_frames))
            files[source, n_frames] = handle
            histograms[source, n_frames] = np.zeros(256, dtype=np.int64)
    try:
        for index in range(spec.n_frames):
            counts = np.random.default_rng([spec.seed, index]).poisson(base)
            as_float = counts.astype("<f4").tobytes()
            clipped = np.minimum(counts, MODE_101_MAX).astype(np.uint8)
            packed = (clipped[:, 0::2] | (clipped[:, 1::2] << 4)).astype(np.uint8).tobytes()
            full_histogram = np.bincount(counts.reshape(-1), minlength=256)[:256]
            if counts.max() >= 256:
                raise RuntimeError("counts of 256 or more: widen the histogram")
            clipped_histogram = np.bincount(clipped.reshape(-1), minlength=256)
            for (source, n_frames), handle in files.items():
                if index < n_frames:
                    handle.write(as_float if source == "float32" else packed)
                    histograms[source, n_frames] += (
                        full_histogram if source == "float32" else clipped_histogram
                    )
            del counts, clipped
    finally:
        for handle in files.values():
            handle.close()
    movies = []
    for (source, n_frames), handle in files.items():
        path = Path(handle.name)
        _fsync(path)
        n_pixels = n_frames * shape[0] * shape[1]
        movies.append(
            Movie(
                str(path),
                source,
                dose,
                n_frames,
                shape,
                path.stat().st_size,
                n_pixels * entropy_bits(histograms[source, n_frames]) / 8,
            )
        )
    return movies


def warm_cache(path: str) -> None:
    with open(path, "rb") as handle:
        while handle.read(64 << 20):
            pass


def measure_empcompress(movie: Movie, *, tree: Path, cache: str, work: Path, label: str) -> Row:
    if cache == "warm":
        warm_cache(movie.path)
    output = work / "out" / (Path(movie.path).stem + ".tif")
    output.parent.mkdir(exist_ok=True)
    load = os.getloadavg()[0]
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE_EMPCOMPRESS, str(tree), movie.path, str(output), "1", cache],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{label} on {movie.path} failed:\n{done.stderr[-3000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(output.parent)
    return Row(
        movie,
        label,
        cache,
        measured["wall"],
        measured["cpu"],
        measured["rchar"],
        measured["read_bytes"],
        measured["source_reads"],
        measured["peak_rss"],
        measured["output_bytes"],
        f"{measured['stored']}, {measured['codec']}",
        measured["kind"],
        load,
    )


def measure_relion(movie: Movie, *, cache: str, work: Path) -> Row | str:
    if cache == "warm":
        warm_cache(movie.path)
    out_dir = Path(movie.path).parent / "relion-out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [
            "relion_convert_to_tiff",
            "--i",
            Path(movie.path).name,
            "--o",
            f"{out_dir.name}/",
            "--j",
            "1",
            "--compression",
            "lzw",
        ]
        done = subprocess.run(
            [sys.executable, "-c", _LAUNCH, str(report), cache, movie.path, *command],
            cwd=Path(movie.path).parent,
            capture_output=True,
            text=True,
            check=False,
        )
        measured = json.loads(report.read_text()) if report.exists() else {"exit": -1}
    outputs = sorted(out_dir.glob("*.tif"))
    if measured["exit"] != 0 or len(outputs) != 1:
        shutil.rmtree(out_dir, ignore_errors=True)
        return f"failed (exit {measured['exit']}): {(done.stdout + done.stderr).strip()[-300:]}"
    import tifffile

    with tifffile.TiffFile(outputs[0]) as tiff:
        page = tiff.pages.first
        stored = f"{page.dtype}, {page.compression.name}"
        kind = "BigTIFF" if tiff.is_bigtiff else "classic"
    size = outputs[0].stat().st_size
    shutil.rmtree(out_dir, ignore_errors=True)
    return Row(
        movie,
        "relion_convert_to_tiff --compression lzw",
        cache,
        measured["wall"],
        measured["cpu"],
        measured["rchar"],
        measured["read_bytes"],
        None,
        measured["peak_rss"],
        size,
        stored,
        kind,
        load,
    )


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shape = (818, 1152) if args.quick else SUPER_RESOLUTION
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "command": " ".join(sys.argv),
        "rows": [],
        "notes": [],
    }
    relion = shutil.which("relion_convert_to_tiff") is not None and not args.skip_relion
    for dose in DOSES:
        frame_counts = sorted({frames for cell_dose, frames in CELLS if cell_dose == dose})
        _progress(f"writing {dose:g} e- movies: {frame_counts} frames of {shape[1]}x{shape[0]}")
        movies = write_movies(work, dose, frame_counts, shape)
        for movie in movies:
            for cache in ("warm", "cold"):
                _progress(f"empcompress {movie.source} {movie.n_frames} frames {dose:g} e-, {cache}")
                row = measure_empcompress(movie, tree=REPO, cache=cache, work=work, label="empcompress")
                results["rows"].append(_row_json(row))
            if relion and movie.n_frames == 8 and dose == 0.25:
                for cache in ("warm", "cold"):
                    _progress(f"relion {movie.source} {movie.n_frames} frames {dose:g} e-, {cache}")
                    measured = measure_relion(movie, cache=cache, work=work)
                    if isinstance(measured, str):
                        results["notes"].append(f"relion_convert_to_tiff on {movie.source}: {measured}")
                        break
                    results["rows"].append(_row_json(measured))
            Path(movie.path).unlink()
    if args.before_after:
        _progress("before/after: 4096x4096 float32, 8 frames, 1 e-")
        spec = SyntheticMovieSpec(dose_per_pixel_per_frame=1.0, n_frames=8)
        if args.quick:
            spec = replace(spec, ny=512, nx=512)
        made = write_synthetic_movie(work / "ba.mrc", spec)
        _fsync(work / "ba.mrc")
        movie = Movie(
            made.path, "float32", 1.0, 8, (spec.ny, spec.nx), made.size_bytes, made.entropy_floor_bytes
        )
        for cache in ("warm", "cold"):
            for _ in range(args.repeats):
                for label, tree in (
                    ("empcompress (old)", Path(args.before_after)),
                    ("empcompress (new)", REPO),
                ):
                    _progress(f"{label}, {cache}")
                    row = measure_empcompress(movie, tree=tree, cache=cache, work=work, label=label)
                    results["rows"].append(_row_json(row))
        Path(movie.path).unlink()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    shutil.rmtree(work, ignore_errors=True)
    return results


def _row_json(row: Row) -> dict[str, Any]:
    document = {key: value for key, value in row.__dict__.items() if key != "movie"}
    document["movie"] = dict(row.movie.__dict__)
    return document


def _ratio(n_bytes: int | None, size: int) -> str:
    return "-" if n_bytes is None else f"{n_bytes / size:.3f}"


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 1e6:.1f}"


def format_report(results: dict[str, Any]) -> str:
    lines = [
        f"Run {results['started']} .. {results['finished']}; {results['machine']}",
        f"Command: `{results['command']}`",
        "",
        "| source | dose | frames | MRC MB | floor MB | tool | cache | output MB | x floor | TIFF "
        "| stored as | wall s | CPU s | MB/s (wall) | MB/s per CPU s | source reads / source "
        "| rchar / source | read_bytes / source | peak RSS MiB | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        movie = row["movie"]
        size = movie["size_bytes"]
        lines.append(
            f"| {movie['source']} | {movie['dose']:g} | {movie['n_frames']} | {_mb(size)} | "
            f"{_mb(movie['floor_bytes'])} | {row['tool']} | {row['cache']} | {_mb(row['output_bytes'])} | "
            f"{row['output_bytes'] / movie['floor_bytes']:.3f} | {row['kind']} | {row['stored']} | "
            f"{row['wall_seconds']:.1f} | {row['cpu_seconds']:.1f} | "
            f"{size / 1e6 / row['wall_seconds']:.0f} | "
            f"{size / 1e6 / max(row['cpu_seconds'], 1e-9):.0f} | {_ratio(row.get('source_reads'), size)} | "
            f"{row['rchar'] / size:.3f} | "
            f"{row['read_bytes'] / size:.3f} | {row['peak_rss_bytes'] / 2**20:.0f} | {row['load']:.1f} |"
        )
    lines += ["", *[f"- {note}" for note in results["notes"]]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "superres"))
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--report-from", help="print the report of an earlier --json file and stop")
    parser.add_argument("--before-after", metavar="OLD_TREE", help="checkout of the previous code")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each before/after cell")
    parser.add_argument("--skip-relion", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small frames: a smoke test")
    args = parser.parse_args(argv)
    if args.report_from:
        print(format_report(json.loads(Path(args.report_from).read_text())))
        return 0
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(format_report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
