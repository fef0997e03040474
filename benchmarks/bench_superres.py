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

Focused measurements (each replaces the grid; ``--tree`` names the code measured, default this
checkout; ``--json`` also keeps the rows so far in ``<json>.<kind>.partial``):

- ``--stages``: each stage of a conversion timed alone on one frame of each size and dose.
- ``--equal-doses N``: 4096x4096 and 11520x8184 float32 movies (8 frames, or
  ``--equal-doses-frames``) at each dose (``--doses``), N runs each in turn, warm: MB of source per
  CPU second, user and system time and minor page faults, at equal codecs; with ``--equal-doses-old
  OLD_TREE`` the code in OLD_TREE converts each movie too, in turn; with ``--no-malloc-policy-too``
  so does the measured tree without its malloc policy; ``--equal-doses-process`` names what each
  measured conversion's process does first (``fresh``: nothing; ``after-movie``: converts the same
  movie, unmeasured, as a ``compress`` worker converting movie after movie; ``touched``: touches and
  frees 1.5 GiB, so that the conversion's buffers get memory just freed), several in turn;
  ``--settle-seconds S`` waits before each measured process, so that what the process before it
  freed is no longer cheap to touch (on a VM that reports free memory to its host).
- ``--pool-from JSON...``: the per-repeat ratios of several ``--equal-doses`` runs pooled.
- ``--first-touch N``: the CPU seconds per GiB of touching a freshly allocated NumPy array for the
  first time, after its memory was freed (by the process itself) 0-20 s before, N runs: what a
  conversion's frame buffers cost the kernel (and, on a virtual machine that reports free memory to
  its host, the host) in a fresh process and in one converting movie after movie.

Every conversion's process first sets the malloc policy the CLI sets (:mod:`empcompress.malloc_policy`),
if the tree measured has one.
- ``--cold-warm N``: a 24-frame 4096x4096 movie at 1 e-, N pairs of warm and cold conversions
  (with ``--cold-warm-old OLD_TREE``, the code in OLD_TREE in turn too).
- ``--read-ahead N``: cold reads of a 12-frame 4096x4096 movie as the read pass does them, the work
  on each frame replaced by a sleep (the machine's CPU load does not enter): how long reads wait.
- ``--read-paths N``: the same movie read warm, cold through the page cache (the read pass's
  ``WILLNEED`` helper, or mapped large folios) and cold with ``O_DIRECT`` (in the read, through a
  32 MiB ring, into a second frame buffer, into the frame's own buffer once it is free), N runs each
  in turn: CPU seconds the reading costs and seconds it waits (``READ_PATHS``).

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
from typing import Any, cast

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

#: What the measuring scripts below share (each runs in a fresh process as ``python -c``, some with
#: the code of another checkout): ``io()``, this process's ``/proc/self/io`` counters, and
#: ``evict(path)``, the file's pages dropped from the page cache (``fsync`` first, so that all can go).
_SCRIPT_HELPERS = r"""
import os
def io():
    with open("/proc/self/io") as handle:
        return {key: int(value) for key, value in (line.split(": ") for line in handle.read().splitlines())}
def evict(path):
    descriptor = os.open(path, os.O_RDONLY)
    os.fsync(descriptor)
    os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(descriptor)
"""

#: Runs in a fresh process: warm up, then convert argv[2] to argv[3] once and report what it cost.
_MEASURE_EMPCOMPRESS = (
    _SCRIPT_HELPERS
    + r"""
import json, os, resource, sys, time
from pathlib import Path
tree, source, output = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
threads, cache, policy = int(sys.argv[4]), sys.argv[5], sys.argv[6]
# "movie": convert the movie once, unmeasured, first; "touched": first touch 1.5 GiB and free it (memory
# the kernel has just been handed back, which a VM has not yet reported free to its host: --first-touch)
first = sys.argv[7] if len(sys.argv) > 7 else "warm-up"
sys.path.insert(0, tree)
if policy == "cli":  # what the CLI's convert and empcompress's Dask workers do first (trees that have it)
    try:
        from empcompress.malloc_policy import apply_malloc_policy
    except ImportError:
        pass
    else:
        apply_malloc_policy()
import mrcfile, numpy as np
from empcompress import mrc
from empcompress.convert import convert_movie
if first == "movie":  # a compress worker keeps its frame buffers from task to task (trees that have them)
    try:
        from empcompress.frame_buffers import keeping_frame_buffers
    except ImportError:
        pass
    else:
        keeping = keeping_frame_buffers()  # (held: a scope left unreferenced would close at once)
        keeping.__enter__()

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

def peak_rss():
    # VmHWM: this process's own peak since it started (ru_maxrss would include what the process that
    # started it had: Linux carries it over fork and exec)
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))

warm = output.with_name("warm-up.mrc")
with mrcfile.new(warm, overwrite=True) as mrc:
    mrc.set_data(np.ones((2, 64, 64), np.float32))
convert_movie(warm, output.with_name("warm-up.tif"), overwrite=True)
if first == "movie":  # as a compress worker that has just converted a movie of this size
    convert_movie(source, output, threads=threads, overwrite=True)
elif first == "touched":
    touched = np.empty(3 << 29, dtype=np.uint8)
    touched[::4096] = 1
    del touched
if cache == "cold":
    evict(source)
try:  # frame buffers the measured conversion allocated anew (trees with a pool; None before)
    from empcompress.frame_buffers import frame_buffer_usage
except ImportError:
    frame_buffer_usage = None
pool_before = frame_buffer_usage().n_allocated if frame_buffer_usage else None
source_reads["bytes"] = 0
before, usage, started = io(), resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
result = convert_movie(source, output, threads=threads, overwrite=True)
wall = time.perf_counter() - started
pool_allocated = frame_buffer_usage().n_allocated - pool_before if frame_buffer_usage else None
after, usage_after = io(), resource.getrusage(resource.RUSAGE_SELF)
with open(output, "rb") as handle:
    kind = "BigTIFF" if handle.read(4)[2] == 43 else "classic"
print(json.dumps({
    "wall": wall,
    "cpu": usage_after.ru_utime + usage_after.ru_stime - usage.ru_utime - usage.ru_stime,
    "user": usage_after.ru_utime - usage.ru_utime,
    "sys": usage_after.ru_stime - usage.ru_stime,
    "minor_faults": usage_after.ru_minflt - usage.ru_minflt,
    "rchar": after["rchar"] - before["rchar"],
    "read_bytes": after["read_bytes"] - before["read_bytes"],
    "source_reads": source_reads["bytes"],
    "peak_rss": peak_rss(),
    "output_bytes": result.output_size_bytes,
    "stored": result.decision.stored_dtype,
    "codec": result.codec,
    "kind": kind,
    "pool_allocated": pool_allocated,
}))
"""
)

#: Runs a program in a child process; its wall and CPU time, peak RSS and /proc I/O counters (a reaped
#: child's counters are added to its parent's, so the launcher's own before/after difference is the child's).
_LAUNCH = (
    _SCRIPT_HELPERS
    + r"""
import json, os, sys, time
report, cache, source, command = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
if cache == "cold":
    evict(source)
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
)


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
    user_seconds: float | None = None
    sys_seconds: float | None = None
    minor_faults: int | None = None
    pool_allocated: int | None = None  # frame buffers the conversion allocated anew (code with a pool)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _header(spec: SyntheticMovieSpec, *, mode: int, n_frames: int) -> bytes:
    header = bytearray(_header_bytes(replace(spec, n_frames=n_frames)))
    header[12:16] = np.int32(mode).tobytes()
    return bytes(header)


def write_movies(
    work: Path,
    dose: float,
    frame_counts: Sequence[int],
    shape: tuple[int, int],
    *,
    sources: Sequence[str] = ("float32", "mode 101"),
    distinct_frames: int | None = None,
) -> list[Movie]:
    """Float32 and mode-101 movies of ``max(frame_counts)`` frames and of each shorter prefix, in one go.

    ``distinct_frames``: draw only this many frames and repeat them in turn (quicker to write; the
    codecs work strip by strip, so a repeated frame costs what a new one does).
    """
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
            if source not in sources:
                continue
            path = work / f"sr_{shape[1]}x{shape[0]}_{dose:g}_{n_frames}_{'f32' if mode == 2 else 'm101'}.mrc"
            handle = open(path, "wb")  # noqa: SIM115 (closed below)
            handle.write(_header(spec, mode=mode, n_frames=n_frames))
            files[source, n_frames] = handle
            histograms[source, n_frames] = np.zeros(256, dtype=np.int64)
    try:
        for index in range(spec.n_frames):
            seed_index = index if distinct_frames is None else index % distinct_frames
            counts = np.random.default_rng([spec.seed, seed_index]).poisson(base)
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


def _run_script(
    command: Sequence[str], *, what: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run a measuring script in a fresh process; the JSON it printed last (``what`` names a failure)."""
    done = subprocess.run(list(command), capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def measure_empcompress(
    movie: Movie,
    *,
    tree: Path,
    cache: str,
    work: Path,
    label: str,
    malloc_policy: bool = True,
    before: str = "warm-up",
) -> Row:
    """One conversion in a fresh process; ``malloc_policy``: set it first, as the CLI does (if ``tree``
    has :mod:`empcompress.malloc_policy`); ``before`` (:data:`EQUAL_DOSE_PROCESSES`): what the process
    does just before it, after its warm-up."""
    if cache == "warm":
        warm_cache(movie.path)
    output = work / "out" / (Path(movie.path).stem + ".tif")
    output.parent.mkdir(exist_ok=True)
    load = os.getloadavg()[0]
    measured = _run_script(
        [
            sys.executable,
            "-c",
            _MEASURE_EMPCOMPRESS,
            str(tree),
            movie.path,
            str(output),
            "1",
            cache,
            "cli" if malloc_policy else "off",
            before,
        ],
        what=f"{label} on {movie.path}",
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
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
        user_seconds=measured.get("user"),
        sys_seconds=measured.get("sys"),
        minor_faults=measured.get("minor_faults"),
        pool_allocated=measured.get("pool_allocated"),
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
    # the focused measurements replace the grid of movies
    focused = bool(
        args.stages
        or args.equal_doses
        or args.cold_warm
        or args.read_ahead
        or args.read_paths
        or args.first_touch
    )
    if args.first_touch:
        results["first_touch"] = run_first_touch(args)
    if args.stages:
        results["stages"] = run_stages(args)
    if args.equal_doses:
        results["equal_doses"] = run_equal_doses(args, work)
    if args.cold_warm:
        results["cold_warm"] = run_cold_warm(args, work)
    if args.read_ahead:
        results["read_ahead"] = run_read_ahead(args, work)
    if args.read_paths:
        results["read_paths"] = run_read_paths(args, work)
    relion = shutil.which("relion_convert_to_tiff") is not None and not args.skip_relion
    for dose in () if focused else DOSES:
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


#: Per-core throughput at equal doses (issue 10's "no worse per core than on 4096x4096"): float32
#: counts, both frame sizes, (frame shape, frames) cells, warm cache, ``threads=1``.
#: (frame shape, frames) of the equal-dose movies (the frames: ``--equal-doses-frames``, default 8).
EQUAL_DOSE_CELLS = (((4096, 4096), 8), (SUPER_RESOLUTION, 8))
#: Cold against warm cache on 4096x4096 float32 counts: (dose, frames).
COLD_WARM_CELLS = ((1.0, 24),)


def _checkpoint(args: argparse.Namespace, key: str, rows: list[dict[str, Any]]) -> None:
    """The rows so far, in ``<--json>.<key>.partial`` (a long run stopped early keeps what it measured)."""
    if args.json:
        Path(f"{args.json}.{key}.partial").write_text(json.dumps(rows, indent=1))


#: --equal-doses-process: what a measured conversion's process does just before it, after its warm-up
#: (the measuring script's ``before``), and the label's suffix.
EQUAL_DOSE_PROCESSES = {
    "fresh": ("warm-up", ""),  # nothing more: as the CLI's convert
    "after-movie": ("movie", ", after a movie"),  # converts the same movie: as a compress worker
    "touched": ("touched", ", memory just freed"),  # touches and frees 1.5 GiB (see --first-touch)
}


def _equal_dose_trees(args: argparse.Namespace) -> list[tuple[str, Path, bool, str]]:
    """(label, tree, malloc policy as the CLI sets it, what the process does first) of each code
    measured at equal doses, for each of ``--equal-doses-process``."""
    if not (args.equal_doses_old or args.no_malloc_policy_too):
        trees = [("empcompress", Path(args.tree), True)]
    else:
        trees = [("empcompress (new)", Path(args.tree), True)]
        if args.equal_doses_old:
            trees.insert(0, ("empcompress (old)", Path(args.equal_doses_old), True))
        if args.no_malloc_policy_too:
            trees.append(("empcompress (new, no malloc policy)", Path(args.tree), False))
    return [
        (label + EQUAL_DOSE_PROCESSES[process][1], tree, policy, EQUAL_DOSE_PROCESSES[process][0])
        for label, tree, policy in trees
        for process in args.equal_doses_process
    ]


def run_equal_doses(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """4096x4096 and 11520x8184 float32 movies at each dose, converted in turn ``args.equal_doses`` times.

    The order of the cells alternates from one repeat to the next, so that a drift in the
    machine's speed falls on both sizes alike; with several trees (``--equal-doses-old``,
    ``--no-malloc-policy-too``), each movie is converted by each tree in turn, the order
    alternating too.
    """
    rows: list[dict[str, Any]] = []
    trees = _equal_dose_trees(args)
    for dose in args.doses:
        movies: list[Movie] = []
        for shape in sorted({shape for shape, _ in EQUAL_DOSE_CELLS}):
            frame_counts = list(args.equal_doses_frames)
            if args.quick:
                shape = (shape[0] // 8, shape[1] // 8)
            _progress(f"writing {dose:g} e- float32 movies: {frame_counts} frames of {shape[1]}x{shape[0]}")
            movies += write_movies(work, dose, frame_counts, shape, sources=("float32",), distinct_frames=2)
        for repeat in range(args.equal_doses):
            for movie in movies if repeat % 2 == 0 else movies[::-1]:
                size = f"{movie.shape[1]}x{movie.shape[0]}"
                for label, tree, policy, before in trees if repeat % 2 == 0 else trees[::-1]:
                    _progress(f"equal doses {repeat}: {label}, {size}, {movie.n_frames} frames, {dose:g} e-")
                    time.sleep(args.settle_seconds)
                    row = measure_empcompress(
                        movie,
                        tree=tree,
                        cache="warm",
                        work=work,
                        label=label,
                        malloc_policy=policy,
                        before=before,
                    )
                    rows.append({**_row_json(row), "repeat": repeat})
                    _checkpoint(args, "equal_doses", rows)
        for movie in movies:
            Path(movie.path).unlink()
    return rows


def _trees_in_turn(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(label, tree) of the code measured: ``--tree`` alone, or ``--cold-warm-old``'s and it in turn."""
    if not args.cold_warm_old:
        return [("empcompress", Path(args.tree))]
    return [("empcompress (old)", Path(args.cold_warm_old)), ("empcompress (new)", Path(args.tree))]


def run_cold_warm(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """4096x4096 float32 movies converted warm and cold in turn, ``args.cold_warm`` pairs per cell.

    Within a pair the order alternates (warm first, then cold first), so neither cache state always
    runs on the machine's quieter moments. With ``args.cold_warm_old`` (a checkout of the code
    before), each conversion is run with both trees in turn as well, their order flipped every two
    pairs: the first warm run after the cold ones (the source just read into the page cache again)
    carries 0.3-0.4 s more system time, whichever code runs it, and flipping both orders together put
    the new tree there every time.
    """
    rows: list[dict[str, Any]] = []
    shape = (512, 512) if args.quick else (4096, 4096)
    trees = _trees_in_turn(args)
    for dose, n_frames in COLD_WARM_CELLS:
        _progress(f"writing {dose:g} e- float32 movie: {n_frames} frames of {shape[1]}x{shape[0]}")
        (movie,) = write_movies(work, dose, [n_frames], shape, sources=("float32",), distinct_frames=4)
        for repeat in range(args.cold_warm):
            for cache in ("warm", "cold") if repeat % 2 == 0 else ("cold", "warm"):
                for label, tree in trees if repeat // 2 % 2 == 0 else trees[::-1]:
                    _progress(f"cold/warm {repeat}: {label}, {dose:g} e-, {n_frames} frames, {cache}")
                    row = measure_empcompress(movie, tree=tree, cache=cache, work=work, label=label)
                    rows.append({**_row_json(row), "repeat": repeat})
                    _checkpoint(args, "cold_warm", rows)
        Path(movie.path).unlink()
    return rows


#: Runs in a fresh process: the read pass's reading and read-ahead alone, with the work on each frame
#: replaced by a sleep (no CPU, so the machine's load does not change it): how long the reads wait.
_MEASURE_READ_AHEAD = (
    _SCRIPT_HELPERS
    + r"""
import json, os, sys, time
import numpy as np
tree, source, work_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
sys.path.insert(0, tree)
from empcompress.mrc import MrcMovie
evict(source)
before, waits = io(), []
started = time.perf_counter()
with MrcMovie(source) as movie:
    buffer = np.empty(movie.header.frame_size_bytes, dtype=np.uint8)
    for index in range(movie.header.nz):
        asked = time.perf_counter()
        movie.read_raw_frame(index, out=buffer)
        waits.append(time.perf_counter() - asked)
        movie.prefetch(index + 1)  # as the read pass does
        time.sleep(work_seconds)  # the work on this frame
wall = time.perf_counter() - started
print(json.dumps({"wall": wall, "waits": waits, "read_bytes": io()["read_bytes"] - before["read_bytes"]}))
"""
)
#: Seconds of work per 4096x4096 float32 frame the read-ahead measurement stands in for (67 MB at
#: about 220 MB per CPU second: Huffman-only deflate at 1 e-, verified).
READ_AHEAD_WORK_SECONDS = (0.0, 0.3)


def _read_movie(args: argparse.Namespace, work: Path, what: str) -> Movie:
    """The 12-frame 4096x4096 float32 movie (1 e-) the read measurements read."""
    shape = (512, 512) if args.quick else (4096, 4096)
    _progress(f"writing the {what} movie: 12 frames of {shape[1]}x{shape[0]}")
    (movie,) = write_movies(work, 1.0, [12], shape, sources=("float32",), distinct_frames=2)
    return movie


def _read_row(
    measured_as: dict[str, Any],
    script: str,
    arguments: Sequence[str],
    *,
    what: str,
    repeat: int,
    work_seconds: float,
    movie: Movie,
) -> dict[str, Any]:
    """One run of a read measurement script (``measured_as``: its tool or way): its figures and the load."""
    load = os.getloadavg()[0]
    measured = _run_script([sys.executable, "-c", script, *arguments], what=what)
    return {
        **measured_as,
        "repeat": repeat,
        "work_seconds": work_seconds,
        "load": load,
        "movie": dict(movie.__dict__),
        **measured,
    }


def run_read_ahead(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Cold reads of a 4096x4096 float32 movie with the read pass's read-ahead, old and new code in turn."""
    rows: list[dict[str, Any]] = []
    movie = _read_movie(args, work, "read-ahead")
    trees = _trees_in_turn(args)
    for repeat in range(args.read_ahead):
        for work_seconds in READ_AHEAD_WORK_SECONDS:
            for label, tree in trees if repeat % 2 == 0 else trees[::-1]:
                _progress(f"read-ahead {repeat}: {label}, {work_seconds} s of work per frame")
                rows.append(
                    _read_row(
                        {"tool": label},
                        _MEASURE_READ_AHEAD,
                        [str(tree), movie.path, str(work_seconds)],
                        what=f"read-ahead with {tree}",
                        repeat=repeat,
                        work_seconds=work_seconds,
                        movie=movie,
                    )
                )
                _checkpoint(args, "read_ahead", rows)
    Path(movie.path).unlink()
    return rows


#: Runs in a fresh process: a 4096x4096 movie read frame by frame in one of several ways (``argv[3]``),
#: the work on each frame replaced by a sleep (``argv[4]`` s; no CPU): CPU seconds the reading cost
#: (user + system of the whole process, helper threads included: exact, unlike the split) and seconds
#: the frame reads waited. Ways (issue 10's cold/warm question: what bringing a cold source in costs):
#: ``warm`` and ``willneed`` read as the read pass does (``MrcMovie`` with its read-ahead helper), warm
#: and cold; ``mapped``: cold, the helper instead maps the next frame 8 MiB at a time with
#: ``MADV_HUGEPAGE`` and ``MADV_POPULATE_READ`` (large page-cache folios); the ``direct-*`` ways read
#: cold with ``O_DIRECT`` (no page cache, no copy by the kernel): ``direct-in-read`` in the read itself,
#: ``direct-ring`` ahead into a 32 MiB ring the read copies from, ``direct-second-buffer`` the next
#: frame ahead into a second frame buffer, ``direct-same-buffer`` into the frame's own buffer once a
#: third of the work is done (as if the pass let go of its raw frame after hashing and casting it).
_MEASURE_READ_PATH = (
    _SCRIPT_HELPERS
    + r"""
import json, mmap, os, resource, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
tree, source, way, work_seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
sys.path.insert(0, tree)
from empcompress.mrc import MrcMovie
BLOCK, PIECE, RING, MADV_POPULATE_READ = 4096, 8 << 20, 32 << 20, 22
if way == "warm":
    with open(source, "rb") as handle:
        while handle.read(PIECE):
            pass
else:
    evict(source)
movie = MrcMovie(source)
header = movie.header
size, offset0, n_frames = header.frame_size_bytes, header.data_offset_bytes, header.nz
end = offset0 + n_frames * size
def aligned(n_bytes):
    return np.frombuffer(mmap.mmap(-1, n_bytes), np.uint8)  # page-aligned
def extent(index):  # the frame's offset, and the block-aligned range holding it
    start = offset0 + index * size
    return start, start - start % BLOCK, -(-min(start + size, end) // BLOCK) * BLOCK
def pread_all(descriptor, view, offset):
    done = 0
    while done < len(view):
        n = os.preadv(descriptor, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done
pool = ThreadPoolExecutor(max_workers=1)
direct = os.open(source, os.O_RDONLY | os.O_DIRECT) if way.startswith("direct") else None
buffer = np.empty(size, np.uint8)
frames = [aligned(size + 2 * BLOCK) for _ in range(2 if way == "direct-second-buffer" else 1)]
def read_direct(index):
    start, low, high = extent(index)
    frame = frames[index % len(frames)]
    pread_all(direct, memoryview(frame)[: high - low], low)
    return frame[start - low : start - low + size]
if way == "mapped":
    plain = os.open(source, os.O_RDONLY)
    def bring_in(index):
        start, low, high = extent(index)
        for piece in range(low, high, PIECE):
            view = mmap.mmap(plain, min(PIECE, end - piece), prot=mmap.PROT_READ, offset=piece)
            view.madvise(mmap.MADV_HUGEPAGE)
            view.madvise(MADV_POPULATE_READ)
            view.close()
if way == "direct-ring":
    chunks = list(range(offset0 - offset0 % BLOCK, -(-end // BLOCK) * BLOCK, PIECE // 2))
    ring = [aligned(PIECE // 2) for _ in range(RING // (PIECE // 2))]
    free, filled, changed = threading.Semaphore(len(ring)), {}, threading.Condition()
    def fill():
        for number, chunk in enumerate(chunks):
            free.acquire()
            pread_all(direct, memoryview(ring[number % len(ring)]), chunk)
            with changed:
                filled[number] = True
                changed.notify_all()
    pool.submit(fill)
    def read_ring(index):
        start = offset0 + index * size
        position = start
        while position < start + size:
            number = (position - chunks[0]) // (PIECE // 2)
            chunk = chunks[number]
            with changed:
                changed.wait_for(lambda: number in filled)
            take = min(chunk + PIECE // 2, start + size) - position
            buffer[position - start : position - start + take] = ring[number % len(ring)][
                position - chunk : position - chunk + take
            ]
            position += take
            if position == chunk + PIECE // 2:
                free.release()
        return buffer
usage, started, waits, pending = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), [], None
for index in range(n_frames):
    asked = time.perf_counter()
    if way in ("warm", "willneed"):
        last = movie.read_raw_frame(index, out=buffer)
        movie.prefetch(index + 1)
    elif way == "mapped":
        if pending is not None:
            pending.result()
        last = movie.read_raw_frame(index, out=buffer)
        pending = pool.submit(bring_in, index + 1) if index + 1 < n_frames else None
    elif way == "direct-in-read":
        last = read_direct(index)
    elif way == "direct-ring":
        last = read_ring(index)
    elif way in ("direct-second-buffer", "direct-same-buffer"):
        pending = pending or pool.submit(read_direct, index)
        last = pending.result()
        pending = None
    waits.append(time.perf_counter() - asked)
    if way == "direct-second-buffer" and index + 1 < n_frames:
        pending = pool.submit(read_direct, index + 1)
    if way == "direct-same-buffer" and index + 1 < n_frames:
        time.sleep(work_seconds / 3)
        pending = pool.submit(read_direct, index + 1)
        time.sleep(work_seconds * 2 / 3)
    else:
        time.sleep(work_seconds)
wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF)
if not np.array_equal(last, movie.read_raw_frame(n_frames - 1)):
    raise SystemExit(f"{way}: the last frame read differs from the file's")
movie.close()
pool.shutdown(wait=True, cancel_futures=True)
print(json.dumps({
    "wall": wall,
    "waits": waits,
    "cpu": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime,
    "sys": after.ru_stime - usage.ru_stime,
}))
"""
)
#: The ways ``_MEASURE_READ_PATH`` reads, in the report's order.
READ_PATHS = (
    "warm",
    "willneed",
    "mapped",
    "direct-in-read",
    "direct-ring",
    "direct-second-buffer",
    "direct-same-buffer",
)


#: Runs in a fresh process: argv[1] GiB touched page by page, after each pause of argv[2:] seconds
#: (the previous array freed just before the pause); prints [[pause, CPU s, wall s], ...].
_FIRST_TOUCH = r"""
import json, resource, sys, time
import numpy as np
n_bytes, pauses = int(float(sys.argv[1]) * 2**30), [float(p) for p in sys.argv[2:]]
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
rows = []
for pause in pauses:
    time.sleep(pause)
    used, started = cpu(), time.perf_counter()
    buffer = np.empty(n_bytes, dtype=np.uint8)  # as a frame buffer is made (NumPy asks for huge pages)
    buffer[::4096] = 1
    rows.append([pause, cpu() - used, time.perf_counter() - started])
    del buffer
print(json.dumps(rows))
"""
#: Seconds between freeing one array and touching the next, in --first-touch (0 twice: the first
#: array of a fresh process, then one right after it).
FIRST_TOUCH_PAUSES = (0.0, 0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)
FIRST_TOUCH_GIB = 1.0


def run_first_touch(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``args.first_touch`` fresh processes, each touching FIRST_TOUCH_GIB after each pause in turn."""
    rows = []
    for run in range(args.first_touch):
        _progress(f"first touch {run}")
        load = os.getloadavg()[0]
        measured = cast(
            list[list[float]],
            _run_script(
                [sys.executable, "-c", _FIRST_TOUCH, str(FIRST_TOUCH_GIB), *map(str, FIRST_TOUCH_PAUSES)],
                what="first touch",
            ),
        )
        for step, (pause, cpu_seconds, wall_seconds) in enumerate(measured):
            rows.append(
                {
                    "run": run,
                    "step": step,
                    "pause_seconds": pause,
                    "cpu_seconds_per_gib": cpu_seconds / FIRST_TOUCH_GIB,
                    "wall_seconds_per_gib": wall_seconds / FIRST_TOUCH_GIB,
                    "load": load,  # as the process started
                }
            )
    return rows


def format_first_touch(rows: list[dict[str, Any]]) -> list[str]:
    """Per step: CPU s per GiB, median (min-max) of the runs."""
    lines = [
        f"First touch of a fresh {FIRST_TOUCH_GIB:g} GiB array, CPU seconds per GiB, median (min-max) of "
        f"{len({row['run'] for row in rows})} fresh processes; each array is made after the previous one "
        "was freed and the pause given:",
        "",
        "| step | pause before, s | CPU s per GiB | wall s per GiB | load as the process started |",
        "|---|---|---|---|---|",
    ]
    steps: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        steps.setdefault(row["step"], []).append(row)
    for step, cell in sorted(steps.items()):
        what = "first array of the process" if step == 0 else f"{cell[0]['pause_seconds']:g}"
        lines.append(
            f"| {step} | {what} | {_spread([row['cpu_seconds_per_gib'] for row in cell], 2)} | "
            f"{_spread([row['wall_seconds_per_gib'] for row in cell], 2)} | "
            f"{_spread([row['load'] for row in cell], 1)} |"
        )
    return lines


def run_read_paths(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """A 12-frame 4096x4096 movie read in each of :data:`READ_PATHS` in turn, ``args.read_paths`` times."""
    rows: list[dict[str, Any]] = []
    movie = _read_movie(args, work, "read-path")
    work_seconds = READ_AHEAD_WORK_SECONDS[-1]
    for repeat in range(args.read_paths):
        for way in READ_PATHS if repeat % 2 == 0 else READ_PATHS[::-1]:
            _progress(f"read paths {repeat}: {way}, {work_seconds} s of work per frame")
            rows.append(
                _read_row(
                    {"way": way},
                    _MEASURE_READ_PATH,
                    [args.tree, movie.path, way, f"{work_seconds}"],
                    what=f"reading {way}",
                    repeat=repeat,
                    work_seconds=work_seconds,
                    movie=movie,
                )
            )
            _checkpoint(args, "read_paths", rows)
    Path(movie.path).unlink()
    return rows


def run_stages(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each stage of a conversion timed alone (CPU seconds, best of 3) on one frame of each size and dose.

    The stages the one-read conversion runs over every frame: sha256 of the source bytes (once
    while reading, once more over the rebuilt bytes while verifying), statistics, the cast to the
    storage type, encoding (LZW and Huffman-only deflate, whichever ``auto`` picks), decoding, and
    the cast back while verifying. Rates are MB of float32 source per CPU second, so that they
    add up like the whole conversion's.
    """
    import hashlib

    import imagecodecs

    sys.path.insert(0, str(REPO))
    from empcompress import kernels
    from empcompress.detect import frame_stats
    from empcompress.encode import encode_frame_strips, make_codec, rows_per_strip

    def cpu_seconds(work: Any, *arguments: Any) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            work(*arguments)
            best = min(best, time.process_time() - started)
        return best

    lzw = make_codec("lzw", level=None, is_integer=True)
    huffman = make_codec("deflate", level=None, is_integer=True)
    rows: list[dict[str, Any]] = []
    strip_rows = 0

    def encode_lzw(frame: Any) -> None:
        encode_frame_strips(frame, lzw, rows=strip_rows)

    def encode_huffman(frame: Any) -> None:
        encode_frame_strips(frame, huffman, rows=strip_rows)

    def decode_lzw(strips: list[bytes]) -> None:
        for strip in strips:
            imagecodecs.lzw_decode(strip)

    encode_frame_strips(np.zeros((64, 64), np.uint8), huffman, rows=16)  # compile the Numba encoder
    for dose in DOSES:
        for shape in ((4096, 4096), SUPER_RESOLUTION):
            if args.quick:
                shape = (shape[0] // 8, shape[1] // 8)
            spec = SyntheticMovieSpec(dose_per_pixel_per_frame=dose, n_frames=1, ny=shape[0], nx=shape[1])
            counts = np.random.default_rng([spec.seed, 0]).poisson(illumination(spec) * dose).astype("<f4")
            source = counts.reshape(-1).view(np.uint8)
            stored = np.empty(shape, np.uint8)
            kernels.flip_cast(counts, stored)
            strip_rows = rows_per_strip(frame_shape=shape, itemsize=1)
            encoded = encode_frame_strips(stored, lzw, rows=strip_rows)
            rebuilt = np.empty(shape, np.float32)
            seconds = {
                "sha256": cpu_seconds(lambda data: hashlib.sha256(data).digest(), source.data),
                "statistics": cpu_seconds(frame_stats, counts),
                "cast": cpu_seconds(kernels.flip_cast, counts, stored),
                "LZW encode": cpu_seconds(encode_lzw, stored),
                "LZW decode": cpu_seconds(decode_lzw, encoded),
                "Huffman encode": cpu_seconds(encode_huffman, stored),
                "cast back": cpu_seconds(kernels.flip_cast, stored, rebuilt),
            }
            _progress(f"stages {shape[1]}x{shape[0]} {dose:g} e-: {seconds}")
            rows.append({"dose": dose, "shape": list(shape), "size_bytes": source.size, "seconds": seconds})
    return rows


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
    if results.get("stages"):
        lines += ["", *format_stages(results["stages"])]
    if results.get("equal_doses"):
        lines += ["", *format_equal_doses(results["equal_doses"])]
    if results.get("cold_warm"):
        lines += ["", *format_cold_warm(results["cold_warm"])]
    if results.get("read_ahead"):
        lines += ["", *format_read_ahead(results["read_ahead"])]
    if results.get("read_paths"):
        lines += ["", *format_read_paths(results["read_paths"])]
    if results.get("first_touch"):
        lines += ["", *format_first_touch(results["first_touch"])]
    return "\n".join(lines)


def _spread(values: Sequence[float], digits: int = 0) -> str:
    """Median (min-max)."""
    return f"{np.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _mb_per_cpu_second(row: dict[str, Any]) -> float:
    return float(row["movie"]["size_bytes"] / 1e6 / max(row["cpu_seconds"], 1e-9))


def _size_label(movie: dict[str, Any]) -> str:
    return f"{movie['shape'][1]}x{movie['shape'][0]}"


def format_stages(stages: list[dict[str, Any]]) -> list[str]:
    names = list(stages[0]["seconds"])
    lines = [
        "Stages, MB of float32 source per CPU second (one frame, best of 3):",
        "",
        "| dose | frame | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for stage in stages:
        rates = [stage["size_bytes"] / 1e6 / max(stage["seconds"][name], 1e-9) for name in names]
        lines.append(
            f"| {stage['dose']:g} | {stage['shape'][1]}x{stage['shape'][0]} | "
            + " | ".join(f"{rate:.0f}" for rate in rates)
            + " |"
        )
    return lines


def _per_gb(row: dict[str, Any], key: str) -> float:
    return float(row[key] / (row["movie"]["size_bytes"] / 1e9))


EqualDoseCells = dict[tuple[str, float, str, int], list[dict[str, Any]]]


def _equal_dose_cells(rows: list[dict[str, Any]]) -> tuple[EqualDoseCells, str]:
    """The runs by (tool, dose, frame size, frames), and the smallest frame size's label."""
    cells: EqualDoseCells = {}
    for row in rows:
        movie = row["movie"]
        cells.setdefault((row["tool"], movie["dose"], _size_label(movie), movie["n_frames"]), []).append(row)
    smallest = _size_label(min((row["movie"] for row in rows), key=lambda movie: movie["size_bytes"]))
    return cells, smallest


def _paired_ratios(cell: list[dict[str, Any]], smallest_cell: list[dict[str, Any]]) -> list[float]:
    """MB/s per CPU s of each run in ``cell`` over that of the smallest frames' run of the same repeat."""
    by_repeat = {row["repeat"]: _mb_per_cpu_second(row) for row in smallest_cell}
    return [_mb_per_cpu_second(row) / by_repeat[row["repeat"]] for row in cell if row["repeat"] in by_repeat]


def format_pooled(runs: list[list[dict[str, Any]]]) -> list[str]:
    """The per-repeat ratios to the smallest frames of several equal-dose runs, pooled per tool, frame
    size and frames: per dose and over all doses, mean (95 % t-interval), number of pairs."""
    pooled: dict[tuple[str, str, int], dict[float, list[float]]] = {}
    for rows in runs:
        cells, smallest = _equal_dose_cells(rows)
        for (tool, dose, size, n_frames), cell in cells.items():
            if size != smallest:
                paired = _paired_ratios(cell, cells.get((tool, dose, smallest, n_frames), []))
                pooled.setdefault((tool, size, n_frames), {}).setdefault(dose, []).extend(paired)
    doses = sorted({dose for by_dose in pooled.values() for dose in by_dose})
    lines = [
        f"Pooled over {len(runs)} runs: MB/s per CPU s over the smallest frames', taken within each repeat; "
        "mean (95 % t-interval), number of pairs (pairs of different runs counted as independent):",
        "",
        "| tool | frame | frames | " + " | ".join(f"{dose:g} e-" for dose in doses) + " | all doses |",
        "|---|---|---|" + "---|" * (len(doses) + 1),
    ]
    for (tool, size, n_frames), by_dose in sorted(pooled.items()):
        every = [ratio for dose in doses for ratio in by_dose.get(dose, [])]
        texts = [_mean_interval(by_dose[dose]) if by_dose.get(dose) else "" for dose in doses]
        lines.append(f"| {tool} | {size} | {n_frames} | {' | '.join(texts)} | {_mean_interval(every)} |")
    return lines


def format_equal_doses(rows: list[dict[str, Any]]) -> list[str]:
    """Every run, then per cell: MB/s per CPU second, median (min-max), and the ratio to 4096x4096."""
    lines = [
        "Equal doses, every run (warm cache, threads 1):",
        "",
        "| repeat | tool | dose | frame | frames | MRC MB | stored as | output MB | wall s | CPU s | user s "
        "| sys s | minor faults | MB/s per CPU s | MB/s (wall) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        movie = row["movie"]
        faults = row.get("minor_faults")
        lines.append(
            f"| {row['repeat']} | {row['tool']} | {movie['dose']:g} | {_size_label(movie)} | "
            f"{movie['n_frames']} | {_mb(movie['size_bytes'])} | {row['stored']} | "
            f"{_mb(row['output_bytes'])} | {row['wall_seconds']:.1f} | {row['cpu_seconds']:.2f} | "
            f"{row['user_seconds']:.2f} | {row['sys_seconds']:.2f} | "
            f"{'-' if faults is None else faults} | {_mb_per_cpu_second(row):.0f} | "
            f"{movie['size_bytes'] / 1e6 / row['wall_seconds']:.0f} | {row['load']:.1f} |"
        )
    lines += [
        "",
        "Equal doses, summary: median (min-max) of the repeats; user and system seconds per GB of source; "
        "ratio of medians of MB/s per CPU s to the smallest frames (4096x4096) with as many frames, of the "
        "same tool; and the ratio taken within each repeat (the two sizes converted in the same repeat, so "
        "a drift of the machine's speed falls on both alike; with several frame counts or process kinds "
        "the two are some runs apart), median (min-max); mean (95 % t-interval), number of pairs:",
        "",
        "| tool | dose | frame | frames | stored as | runs | user s per GB | sys s per GB | MB/s per CPU s "
        "| / 4096x4096 | / 4096x4096, per repeat | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells, smallest = _equal_dose_cells(rows)
    for (tool, dose, size, n_frames), cell in cells.items():
        rates = [_mb_per_cpu_second(row) for row in cell]
        smallest_cell = cells.get((tool, dose, smallest, n_frames), [])
        reference = [_mb_per_cpu_second(row) for row in smallest_cell]
        ratio = float(np.median(rates) / np.median(reference)) if reference else float("nan")
        paired = _paired_ratios(cell, smallest_cell)
        paired_text = f"{_spread(paired, 3)}; {_mean_interval(paired)}" if paired else "-"
        lines.append(
            f"| {tool} | {dose:g} | {size} | {n_frames} | {cell[0]['stored']} | {len(cell)} | "
            f"{_spread([_per_gb(row, 'user_seconds') for row in cell], 2)} | "
            f"{_spread([_per_gb(row, 'sys_seconds') for row in cell], 2)} | {_spread(rates)} | "
            f"{ratio:.2f} | {paired_text} | {_spread([row['load'] for row in cell], 1)} |"
        )
    return lines + _format_fixed_and_per_byte(cells, smallest)


#: Student's t, 0.975 quantile, by degrees of freedom (for 95 % intervals of a mean of a few pairs).
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
          2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
          2.045, 2.042)  # fmt: skip


def _mean_interval(values: Sequence[float]) -> str:
    """The mean, its 95 % t-interval and the number of values (a t-interval, not a bootstrap: with
    3-5 pairs a percentile bootstrap gives little more than their range)."""
    n = len(values)
    if n < 2:
        return f"{np.mean(values):.3f}, n {n}"
    t = _T_975[n - 2] if n - 1 <= len(_T_975) else (2.0 if n <= 61 else 1.98)
    half = t * float(np.std(values, ddof=1)) / np.sqrt(n)
    mean = float(np.mean(values))
    return f"{mean:.3f} ({mean - half:.3f}-{mean + half:.3f}), n {n}"


def _format_fixed_and_per_byte(
    cells: dict[tuple[str, float, str, int], list[dict[str, Any]]], smallest: str
) -> list[str]:
    """With several frame counts of a movie: CPU s = fixed + size / rate, fitted to the medians."""
    series: dict[tuple[str, float, str], list[tuple[float, float, float]]] = {}
    for (tool, dose, size, _n_frames), cell in cells.items():
        series.setdefault((tool, dose, size), []).append(
            (
                float(cell[0]["movie"]["size_bytes"]),
                float(np.median([row["cpu_seconds"] for row in cell])),
                float(np.median([row["sys_seconds"] for row in cell])),
            )
        )
    fits: dict[tuple[str, float, str], tuple[float, float, float]] = {}
    for key, points in series.items():
        if len(points) < 2:
            continue
        sizes = np.array([point[0] for point in points])
        per_byte, fixed = np.polyfit(sizes, [point[1] for point in points], 1)
        _, sys_fixed = np.polyfit(sizes, [point[2] for point in points], 1)
        fits[key] = (1e-6 / per_byte, fixed, sys_fixed)
    if not fits:
        return []
    lines = [
        "",
        "Fixed cost per movie and rate per byte, fitted to the medians of the frame counts measured (CPU s "
        "= fixed + MB / rate); the rate's ratio to the smallest frames', of the same tool and dose:",
        "",
        "| tool | dose | frame | rate, MB per CPU s | / 4096x4096 | fixed CPU s per movie "
        "| of which system s |",
        "|---|---|---|---|---|---|---|",
    ]
    for (tool, dose, size), (rate, fixed, sys_fixed) in fits.items():
        reference = fits.get((tool, dose, smallest))
        ratio = f"{rate / reference[0]:.2f}" if reference else "-"
        lines.append(f"| {tool} | {dose:g} | {size} | {rate:.0f} | {ratio} | {fixed:.2f} | {sys_fixed:.2f} |")
    return lines


def format_read_ahead(rows: list[dict[str, Any]]) -> list[str]:
    """Per tree and work per frame: seconds the reads waited, median (min-max) of the runs."""
    lines = [
        "Read-ahead, cold cache: seconds the frame reads waited in all (frame 0 apart: nothing is read "
        "ahead of it), median (min-max) of the runs:",
        "",
        "| tool | work per frame s | runs | frame 0 wait s | frames 1.. wait s | wall s | MB/s (wall) "
        "| read_bytes / source | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["tool"], row["work_seconds"]), []).append(row)
    for (tool, work_seconds), cell in sorted(cells.items(), key=lambda item: (item[0][1], item[0][0])):
        size = cell[0]["movie"]["size_bytes"]
        lines.append(
            f"| {tool} | {work_seconds:g} | {len(cell)} | {_spread([row['waits'][0] for row in cell], 2)} | "
            f"{_spread([sum(row['waits'][1:]) for row in cell], 2)} | "
            f"{_spread([row['wall'] for row in cell], 2)} | "
            f"{_spread([size / 1e6 / row['wall'] for row in cell])} | "
            f"{_spread([row['read_bytes'] / size for row in cell], 3)} | "
            f"{_spread([row['load'] for row in cell], 1)} |"
        )
    return lines


def format_read_paths(rows: list[dict[str, Any]]) -> list[str]:
    """Per way of reading: CPU and system seconds, seconds the reads waited, median (min-max) of the runs."""
    lines = [
        "Ways of reading a 4096x4096 movie (the work on each frame a sleep): CPU seconds of the process "
        "(user + system, exact) and system seconds, seconds the reads of frames 1.. waited, wall, "
        "median (min-max) of the runs:",
        "",
        "| way | work per frame s | runs | CPU s | sys s | frames 1.. wait s | wall s | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cells: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(row["way"], []).append(row)
    for way, cell in cells.items():
        lines.append(
            f"| {way} | {cell[0]['work_seconds']:g} | {len(cell)} | "
            f"{_spread([row['cpu'] for row in cell], 2)} | {_spread([row['sys'] for row in cell], 2)} | "
            f"{_spread([sum(row['waits'][1:]) for row in cell], 2)} | "
            f"{_spread([row['wall'] for row in cell], 2)} | {_spread([row['load'] for row in cell], 1)} |"
        )
    return lines


def format_cold_warm(rows: list[dict[str, Any]]) -> list[str]:
    """Every run, then per cell: wall and CPU seconds, median (min-max), and the cold/warm ratios."""
    lines = [
        "Cold against warm, every run (threads 1):",
        "",
        "| repeat | tool | dose | frames | MRC MB | cache | stored as | wall s | CPU s | user s | sys s "
        "| wall - CPU s | MB/s (wall) | read_bytes / source | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        movie = row["movie"]
        lines.append(
            f"| {row['repeat']} | {row['tool']} | {movie['dose']:g} | {movie['n_frames']} | "
            f"{_mb(movie['size_bytes'])} | "
            f"{row['cache']} | {row['stored']} | {row['wall_seconds']:.2f} | {row['cpu_seconds']:.2f} | "
            f"{row['user_seconds']:.2f} | {row['sys_seconds']:.2f} | "
            f"{row['wall_seconds'] - row['cpu_seconds']:.2f} | "
            f"{movie['size_bytes'] / 1e6 / row['wall_seconds']:.0f} | "
            f"{row['read_bytes'] / movie['size_bytes']:.3f} | {row['load']:.1f} |"
        )
    lines += [
        "",
        "Cold against warm, summary: median (min-max) of the runs; cold/warm: ratio of the medians, and the "
        "median of the ratios within each pair:",
        "",
        "| tool | dose | frames | cache | runs | wall s | CPU s | sys s | MB/s (wall) "
        "| cold/warm wall (pairs) | cold/warm CPU (pairs) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cells: dict[tuple[str, float, int], dict[str, dict[int, dict[str, Any]]]] = {}
    for row in rows:
        movie = row["movie"]
        cell = cells.setdefault((row["tool"], movie["dose"], movie["n_frames"]), {})
        cell.setdefault(row["cache"], {})[row["repeat"]] = row
    for (tool, dose, n_frames), by_cache in cells.items():
        for cache in ("warm", "cold"):
            runs = list(by_cache.get(cache, {}).values())
            if not runs:
                continue
            size = runs[0]["movie"]["size_bytes"]
            walls = [row["wall_seconds"] for row in runs]
            cpus = [row["cpu_seconds"] for row in runs]
            ratios = "-"
            if cache == "cold" and "warm" in by_cache:
                warm = by_cache["warm"]
                pairs = [repeat for repeat in by_cache["cold"] if repeat in warm]
                wall_ratio = np.median(walls) / np.median([warm[r]["wall_seconds"] for r in pairs])
                cpu_ratio = np.median(cpus) / np.median([warm[r]["cpu_seconds"] for r in pairs])
                pair_wall = np.median(
                    [by_cache["cold"][r]["wall_seconds"] / warm[r]["wall_seconds"] for r in pairs]
                )
                pair_cpu = np.median(
                    [by_cache["cold"][r]["cpu_seconds"] / warm[r]["cpu_seconds"] for r in pairs]
                )
                ratios = f"{wall_ratio:.3f} ({pair_wall:.3f}) | {cpu_ratio:.3f} ({pair_cpu:.3f})"
            else:
                ratios = "- | -"
            lines.append(
                f"| {tool} | {dose:g} | {n_frames} | {cache} | {len(runs)} | {_spread(walls, 2)} | "
                f"{_spread(cpus, 2)} | "
                f"{_spread([row['sys_seconds'] for row in runs], 2)} | "
                f"{_spread([size / 1e6 / wall for wall in walls])} | {ratios} | "
                f"{_spread([row['load'] for row in runs], 1)} |"
            )
    return lines


def _processes(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    unknown = [kind for kind in kinds if kind not in EQUAL_DOSE_PROCESSES]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"{text!r}: kinds are {', '.join(EQUAL_DOSE_PROCESSES)}")
    return kinds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--work", default=str(REPO / "benchmarks" / "_work" / "superres"))
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--report-from", help="print the report of an earlier --json file and stop")
    parser.add_argument(
        "--pool-from",
        nargs="+",
        metavar="JSON",
        help="print the per-repeat ratios of the --equal-doses runs in these --json files, pooled, and stop",
    )
    parser.add_argument("--before-after", metavar="OLD_TREE", help="checkout of the previous code")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each before/after cell")
    parser.add_argument("--skip-relion", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small frames: a smoke test")
    parser.add_argument(
        "--equal-doses",
        type=int,
        default=0,
        metavar="REPEATS",
        help="instead of the grid: 4096x4096 and 11520x8184 float32 movies at each dose, REPEATS runs each",
    )
    parser.add_argument(
        "--equal-doses-frames",
        type=lambda text: tuple(sorted({int(part) for part in text.split(",")})),
        default=(8,),
        metavar="N[,N...]",
        help="with --equal-doses: frames per movie, comma-separated (default 8); with two or more "
        "(e.g. 8,24) the summary separates a fixed cost per movie from a cost per byte",
    )
    parser.add_argument(
        "--equal-doses-process",
        type=_processes,
        default=("fresh",),
        metavar="KIND[,KIND...]",
        help="with --equal-doses: what each measured conversion's process does first, comma-separated, "
        "each in turn: fresh (nothing: as the CLI's convert), after-movie (converts the same movie, "
        "unmeasured: as a compress worker converting movie after movie), touched (touches and frees "
        "1.5 GiB, so that the conversion gets memory just freed; see --first-touch); default fresh",
    )
    parser.add_argument(
        "--cold-warm",
        type=int,
        default=0,
        metavar="PAIRS",
        help="instead of the grid: 4096x4096 float32 movies, PAIRS warm and cold conversions in turn",
    )
    parser.add_argument(
        "--cold-warm-old", metavar="OLD_TREE", help="with --cold-warm: also the code in OLD_TREE, in turn"
    )
    parser.add_argument(
        "--read-ahead",
        type=int,
        default=0,
        metavar="PAIRS",
        help="instead of the grid: cold reads of a 4096x4096 movie with the read-ahead alone, PAIRS runs",
    )
    parser.add_argument(
        "--read-paths",
        type=int,
        default=0,
        metavar="N",
        help="instead of the grid: a 4096x4096 movie read in each of READ_PATHS (page cache, O_DIRECT)",
    )
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="with --equal-doses: wait S seconds before each measured process, so that what the one "
        "before freed is not still cheap to touch (on a VM that reports free memory to its host, "
        "about 10-20 s: see --first-touch); default 0",
    )
    parser.add_argument(
        "--first-touch",
        type=int,
        default=0,
        metavar="N",
        help="instead of the grid: CPU s per GiB of first touching fresh arrays, N fresh processes",
    )
    parser.add_argument(
        "--equal-doses-old", metavar="OLD_TREE", help="with --equal-doses: also the code in OLD_TREE, in turn"
    )
    parser.add_argument(
        "--no-malloc-policy-too",
        action="store_true",
        help="with --equal-doses: also the measured tree without the malloc policy the CLI sets, in turn",
    )
    parser.add_argument(
        "--doses",
        type=lambda text: tuple(float(part) for part in text.split(",")),
        default=DOSES,
        help=f"with --equal-doses: the doses, comma-separated (default {','.join(map(str, DOSES))})",
    )
    parser.add_argument("--tree", default=str(REPO), help="the code measured (default: this checkout)")
    parser.add_argument(
        "--stages", action="store_true", help="instead of the grid: each stage timed alone on one frame"
    )
    args = parser.parse_args(argv)
    if args.pool_from:
        runs = [json.loads(Path(path).read_text()).get("equal_doses", []) for path in args.pool_from]
        print("\n".join(format_pooled([rows for rows in runs if rows])))
        return 0
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
