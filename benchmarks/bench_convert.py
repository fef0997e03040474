"""Benchmark: single-movie conversion against the entropy floor and against the peers.

For synthetic counting movies (float32 MRC of Poisson counts, see ``_synthetic.py``)
at several doses, this runs, each in a clean subprocess, and reports side by side:

* ``empcompress convert`` with every codec (auto, lzw, deflate, zstd) at
  ``--threads 1`` (the per-core figure) and ``--threads 2``;
* ``relion_convert_to_tiff`` (default compression, LZW, deflate level 1;
  single-threaded: its ``--j`` only applies to gain estimation);
* ``bzip2 -k`` and ``zstd -T1`` (levels 3 and 19) on the MRC file.

For each: output size as a multiple of the order-0 entropy floor of the counts
(n_pixels x entropy of the count histogram / 8 bytes), ratio against the MRC
file, MB/s of input (MB = 10^6 bytes), CPU seconds and peak RSS of the process.
Then it converts movies of different frame counts to show whether peak memory
depends on the number of frames, and states whether the issue's goals are met.

Sources are read from the page cache (they were just written; dropping caches
needs privileges we do not assume). ``empcompress`` MB/s come from the wall time
the tool itself reports for the whole conversion (read, detect, encode, write,
verify, hash, fsync and rename); the process wall time (with interpreter
start-up) is reported too and is what the RELION comparison uses.

Usage::

    python benchmarks/bench_convert.py            # default run (~15-25 min on 2 cores)
    python benchmarks/bench_convert.py --quick    # smoke test, small frames (< 1 min)
    python benchmarks/bench_convert.py --profile  # where the time goes in one conversion
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _synthetic import SyntheticMovie, SyntheticMovieSpec, write_synthetic_movie

HERE = Path(__file__).resolve().parent
DEFAULT_WORK_DIR = HERE / "_work"
OUR_CODECS = ("auto", "lzw", "deflate", "zstd")
GOAL_FLOOR_MULTIPLE = 1.08
GOAL_MB_PER_S_PER_CORE = 200.0
GOAL_SPEEDUP_VS_RELION = 2.0
GOAL_MEMORY_SLACK = 1.10  # peak(most frames) <= 1.10 x peak(fewest frames) + 16 MiB counts as flat
GOAL_MEMORY_SLACK_BYTES = 16 << 20


@dataclass
class Measurement:
    """One run of one tool on one file."""

    tool: str  # "empcompress" | "relion_convert_to_tiff" | "bzip2" | "zstd"
    options: str
    dose: float
    n_frames: int
    threads: int
    input_bytes: int
    output_bytes: int
    floor_bytes: float
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    pipeline_seconds: float | None = None  # the conversion's own wall time (empcompress)
    detail: str = ""
    load_average: float = 0.0  # 1-minute load average just before the run
    all_seconds: list[float] = field(default_factory=list)  # every repetition (empcompress)

    @property
    def floor_multiple(self) -> float:
        return self.output_bytes / self.floor_bytes

    @property
    def ratio(self) -> float:
        return self.input_bytes / self.output_bytes

    @property
    def seconds(self) -> float:
        return self.pipeline_seconds if self.pipeline_seconds is not None else self.wall_seconds

    @property
    def mb_per_s(self) -> float:
        return self.input_bytes / self.seconds / 1e6

    @property
    def process_mb_per_s(self) -> float:
        return self.input_bytes / self.wall_seconds / 1e6


@dataclass
class RunResults:
    machine: dict[str, str]
    command: str
    started: str
    options: dict[str, Any]
    movies: list[dict[str, Any]] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    memory: list[Measurement] = field(default_factory=list)
    finished: str = ""


# ------------------------------------------------------------------ running things


@dataclass(frozen=True)
class ProcessRun:
    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    stdout: str
    stderr: str


#: A tiny launcher between us and the measured command. On Linux a child's ru_maxrss starts at
#: the RSS of the process it was forked from (the pre-exec address space counts), so forking
#: straight from this benchmark (hundreds of MiB after generating a movie) would inflate every
#: peak. The launcher (bare interpreter, ~10 MiB) forks, execs, waits and reports.
_LAUNCHER = """
import json, os, sys, time
report, command = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(command[0], command)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(report, "w") as handle:
    json.dump({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss,
               "exit": os.waitstatus_to_exitcode(status)}, handle)
"""


def run_measured(command: Sequence[str], *, cwd: Path) -> ProcessRun:
    """Run ``command`` in a fresh process; wall time, CPU time and peak RSS of that process alone.

    Peak RSS has a floor of the launcher's own size (~10 MiB).
    """
    with tempfile.TemporaryDirectory() as tmp:
        report, out_path, err_path = Path(tmp) / "report.json", Path(tmp) / "stdout", Path(tmp) / "stderr"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            subprocess.run(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(report), *command],
                cwd=cwd,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        stdout = out_path.read_bytes().decode(errors="replace")
        stderr = err_path.read_bytes().decode(errors="replace")
        if not report.exists():
            raise RuntimeError(f"{' '.join(command)}: the launcher failed:\n{stderr[-2000:]}")
        measured = json.loads(report.read_text())
    if measured["exit"] != 0:
        raise RuntimeError(f"{' '.join(command)} failed with status {measured['exit']}:\n{stderr[-2000:]}")
    return ProcessRun(
        wall_seconds=measured["wall"],
        cpu_seconds=measured["cpu"],
        peak_rss_bytes=measured["maxrss_kib"] * 1024,  # Linux reports KiB
        stdout=stdout,
        stderr=stderr,
    )


def empcompress_command() -> list[str]:
    script = Path(sys.executable).with_name("empcompress")
    if script.exists():
        return [str(script)]
    found = shutil.which("empcompress")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from empcompress.cli import main; sys.exit(main())"]


def _load() -> float:
    return os.getloadavg()[0]


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def measure_empcompress(
    movie: SyntheticMovie, *, codec: str, threads: int, work: Path, repeat: int = 1
) -> Measurement:
    """``empcompress convert`` ``repeat`` times, each in a fresh process; keeps the fastest run.

    Peak RSS is the largest of the runs; every run's seconds are kept in ``all_seconds``.
    """
    output = work / f"out-{codec}-t{threads}.tif"
    best: Measurement | None = None
    all_seconds: list[float] = []
    peak = 0
    for _ in range(max(1, repeat)):
        load = _load()
        run = run_measured(
            [
                *empcompress_command(),
                "convert",
                movie.path,
                "-o",
                str(output),
                "--codec",
                codec,
                "--threads",
                str(threads),
                "--json",
                "--quiet",
                "--overwrite",
            ],
            cwd=work,
        )
        result = json.loads(run.stdout)
        size = output.stat().st_size
        assert size == result["output_size_bytes"], "output size disagrees with the tool's report"
        _remove(output)
        measurement = Measurement(
            tool="empcompress",
            options=f"--codec {codec}",
            dose=movie.spec.dose_per_pixel_per_frame,
            n_frames=movie.spec.n_frames,
            threads=threads,
            input_bytes=movie.size_bytes,
            output_bytes=size,
            floor_bytes=movie.entropy_floor_bytes,
            wall_seconds=run.wall_seconds,
            cpu_seconds=run.cpu_seconds,
            peak_rss_bytes=run.peak_rss_bytes,
            pipeline_seconds=float(result["elapsed_seconds"]),
            detail=f"{result['decision']['stored_dtype']}, {result['codec']}",
            load_average=load,
        )
        all_seconds.append(measurement.seconds)
        peak = max(peak, run.peak_rss_bytes)
        if best is None or measurement.seconds < best.seconds:
            best = measurement
    assert best is not None
    best.peak_rss_bytes = peak
    best.all_seconds = all_seconds
    return best


def measure_relion(movie: SyntheticMovie, *, options: Sequence[str], label: str, work: Path) -> Measurement:
    out_dir = work / "relion-out"
    _remove(out_dir)
    out_dir.mkdir()
    load = _load()
    run = run_measured(
        # relion appends the input path to --o: run it beside the movie with a bare file name
        [
            "relion_convert_to_tiff",
            "--i",
            Path(movie.path).name,
            "--o",
            f"{out_dir.name}/",
            "--j",
            "1",
            *options,
        ],
        cwd=Path(movie.path).parent,
    )
    outputs = sorted(out_dir.glob("*.tif"))
    if len(outputs) != 1:
        raise RuntimeError(f"relion_convert_to_tiff wrote {outputs} in {out_dir}:\n{run.stdout[-2000:]}")
    size = outputs[0].stat().st_size
    detail = _tiff_description(outputs[0])
    _remove(out_dir)
    return Measurement(
        tool="relion_convert_to_tiff",
        options=label,
        dose=movie.spec.dose_per_pixel_per_frame,
        n_frames=movie.spec.n_frames,
        threads=1,
        input_bytes=movie.size_bytes,
        output_bytes=size,
        floor_bytes=movie.entropy_floor_bytes,
        wall_seconds=run.wall_seconds,
        cpu_seconds=run.cpu_seconds,
        peak_rss_bytes=run.peak_rss_bytes,
        detail=detail,
        load_average=load,
    )


def _tiff_description(path: Path) -> str:
    """Sample type and compression of a TIFF's first page, e.g. 'float32, ADOBE_DEFLATE'."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages.first
            return f"{page.dtype}, {page.compression.name}"
    except Exception as error:  # a description only; never fail the benchmark on it
        return f"? ({error})"


def _prefix_copy(source: Path, n_bytes: int, destination: Path) -> None:
    with open(source, "rb") as src, open(destination, "wb") as dst:
        remaining = n_bytes
        while remaining > 0:
            chunk = src.read(min(remaining, 8 << 20))
            if not chunk:
                break
            dst.write(chunk)
            remaining -= len(chunk)


def measure_file_compressor(
    movie: SyntheticMovie, *, tool: str, level: int, work: Path, prefix_bytes: int = 0
) -> Measurement:
    """bzip2 or zstd on the MRC file (or, for slow settings, on its first ``prefix_bytes``)."""
    source = Path(movie.path)
    input_bytes, floor_bytes, detail = movie.size_bytes, movie.entropy_floor_bytes, "whole file"
    if 0 < prefix_bytes < movie.size_bytes:
        prefixed = work / f"prefix-{prefix_bytes}.mrc"
        _prefix_copy(source, prefix_bytes, prefixed)
        source, input_bytes = prefixed, prefix_bytes
        floor_bytes = movie.entropy_floor_bytes * prefix_bytes / movie.size_bytes
        detail = f"first {prefix_bytes / 2**20:.0f} MiB of the file; floor scaled"
    if tool == "bzip2":
        output = source.with_name(source.name + ".bz2")
        command = ["bzip2", "-k", "-f", f"-{level}", str(source)]
        options = f"-k -{level}"
    else:
        output = work / "out.zst"
        command = ["zstd", "-q", "-f", "-T1", f"-{level}", str(source), "-o", str(output)]
        options = f"-{level} -T1"
    load = _load()
    run = run_measured(command, cwd=work)
    size = output.stat().st_size
    _remove(output)
    if source != Path(movie.path):
        _remove(source)
    return Measurement(
        tool=tool,
        options=options,
        dose=movie.spec.dose_per_pixel_per_frame,
        n_frames=movie.spec.n_frames,
        threads=1,
        input_bytes=input_bytes,
        output_bytes=size,
        floor_bytes=floor_bytes,
        wall_seconds=run.wall_seconds,
        cpu_seconds=run.cpu_seconds,
        peak_rss_bytes=run.peak_rss_bytes,
        detail=detail,
        load_average=load,
    )


def warm_up(work: Path) -> None:
    """One small conversion so that Numba's cached kernels exist before we time anything."""
    movie = write_synthetic_movie(
        work / "warm-up.mrc", SyntheticMovieSpec(dose_per_pixel_per_frame=1.0, n_frames=2, ny=256, nx=320)
    )
    for threads in (1, 2):
        measure_empcompress(movie, codec="auto", threads=threads, work=work)
    _remove(Path(movie.path))


# ------------------------------------------------------------------ the run


def machine_description() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        memory = f"{kib / 2**20:.0f} GiB"
    versions = {}
    for name in ("empcompress", "numpy", "numba", "tifffile", "imagecodecs"):
        with contextlib.suppress(Exception):
            versions[name] = __import__(name).__version__
    tools = {}
    for tool, args in (
        ("relion_convert_to_tiff", ["--version"]),
        ("bzip2", ["--help"]),
        ("zstd", ["--version"]),
    ):
        if shutil.which(tool):
            with contextlib.suppress(Exception):
                text = subprocess.run([tool, *args], capture_output=True, text=True, timeout=30)
                first = (text.stdout + text.stderr).strip().splitlines()
                tools[tool] = first[0][:80] if first else "present"
        else:
            tools[tool] = "missing"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory,
        "python": platform.python_version(),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "tools": "; ".join(f"{k}: {v}" for k, v in tools.items()),
    }


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_dose(dose: float, args: argparse.Namespace, work: Path, results: RunResults) -> None:
    spec = SyntheticMovieSpec(
        dose_per_pixel_per_frame=dose, n_frames=args.frames, ny=args.ny, nx=args.nx, seed=args.seed
    )
    path = work / f"movie-{dose:g}e-{args.frames}f.mrc"
    started = time.perf_counter()
    movie = write_synthetic_movie(path, spec)
    _progress(
        f"dose {dose:g}: wrote {movie.size_bytes / 2**20:.0f} MiB in {time.perf_counter() - started:.0f} s; "
        f"entropy {movie.entropy_bits_per_pixel:.3f} bits/pixel, max count {movie.max_count}"
    )
    results.movies.append(
        {
            "dose": dose,
            "n_frames": spec.n_frames,
            "shape": [spec.ny, spec.nx],
            "size_bytes": movie.size_bytes,
            "entropy_bits_per_pixel": movie.entropy_bits_per_pixel,
            "floor_bytes": movie.entropy_floor_bytes,
            "max_count": movie.max_count,
        }
    )
    try:
        for codec in args.codecs:
            for threads in args.threads:
                m = measure_empcompress(movie, codec=codec, threads=threads, work=work, repeat=args.repeat)
                results.measurements.append(m)
                _progress(
                    f"  empcompress {codec} t{threads}: {m.floor_multiple:.3f} x floor, {m.mb_per_s:.0f} MB/s"
                )
        if not args.skip_relion and shutil.which("relion_convert_to_tiff"):
            for options, label in (
                ([], "default (auto)"),
                (["--compression", "lzw"], "--compression lzw"),
                (
                    ["--compression", "deflate", "--deflate_level", "1"],
                    "--compression deflate --deflate_level 1",
                ),
            ):
                m = measure_relion(movie, options=options, label=label, work=work)
                results.measurements.append(m)
                _progress(f"  relion {label}: {m.floor_multiple:.3f} x floor, {m.mb_per_s:.1f} MB/s")
        others: list[tuple[str, int, int]] = []
        if not args.skip_bzip2 and shutil.which("bzip2"):
            others.append(("bzip2", 9, 0))
        if shutil.which("zstd"):
            others.append(("zstd", 3, 0))
            others.append(("zstd", 19, args.zstd19_mib << 20))
        for tool, level, prefix in others:
            m = measure_file_compressor(movie, tool=tool, level=level, work=work, prefix_bytes=prefix)
            results.measurements.append(m)
            _progress(f"  {tool} -{level}: {m.floor_multiple:.3f} x floor, {m.mb_per_s:.1f} MB/s")
    finally:
        _remove(path)


def run_memory(args: argparse.Namespace, work: Path, results: RunResults) -> None:
    for n_frames in args.memory_frames:
        spec = SyntheticMovieSpec(
            dose_per_pixel_per_frame=1.0, n_frames=n_frames, ny=args.ny, nx=args.nx, seed=args.seed
        )
        path = work / f"memory-{n_frames}f.mrc"
        movie = write_synthetic_movie(path, spec)
        try:
            for threads in args.threads:
                m = measure_empcompress(movie, codec="auto", threads=threads, work=work, repeat=args.repeat)
                results.memory.append(m)
                _progress(f"  memory: {n_frames} frames t{threads}: peak {m.peak_rss_bytes / 2**20:.0f} MiB")
        finally:
            _remove(path)


# ------------------------------------------------------------------ reporting


def _find(ms: list[Measurement], **where: Any) -> list[Measurement]:
    return [m for m in ms if all(getattr(m, k) == v for k, v in where.items())]


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f}"


def _row(dose: float, one: Measurement | None, two: Measurement | None) -> str:
    first = one or two
    assert first is not None
    digits = 0 if first.tool == "empcompress" else 1
    speeds = [f"{m.mb_per_s:.{digits}f}" if m else "-" for m in (one, two)]
    peaks = " / ".join(f"{m.peak_rss_bytes / 2**20:.0f}" for m in (one, two) if m is not None)
    what = (
        first.detail
        if first.tool in ("empcompress", "relion_convert_to_tiff")
        else f"MRC file, {first.detail}"
    )
    cells = [
        f"{dose:g}",
        first.tool,
        f"`{first.options}`",
        what,
        _mib(first.output_bytes),
        f"{first.floor_multiple:.3f}",
        f"{first.ratio:.2f}",
        *speeds,
        f"{one.wall_seconds:.1f}" if one else "-",
        f"{one.cpu_seconds:.1f}" if one else "-",
        peaks,
    ]
    return "| " + " | ".join(cells) + " |"


def format_report(results: RunResults) -> str:
    lines: list[str] = []
    o = results.options
    lines.append(
        f"Run {results.started} .. {results.finished}; machine: {results.machine['cpu']}, "
        f"{results.machine['cores']} cores, {results.machine['memory']}; Python {results.machine['python']}"
    )
    lines.append(f"Versions: {results.machine['versions']}. Tools: {results.machine['tools']}.")
    lines.append(f"Command: `{results.command}`")
    lines.append(
        f"Movies: {o['frames']} frames of {o['nx']}x{o['ny']} float32 (integer counts), seed {o['seed']}; "
        "sources read from the page cache."
    )
    loads = [m.load_average for m in results.measurements + results.memory]
    if loads:
        lines.append(
            f"1-minute load average before each measurement: {min(loads):.2f} to {max(loads):.2f} "
            "(this benchmark's own processes count for 1-2 of it; the rest is other work on the machine)."
        )
    lines.append("")
    lines.append("| dose | entropy (bits/px) | floor (MiB) | MRC (MiB) | max count |")
    lines.append("|---|---|---|---|---|")
    for movie in results.movies:
        lines.append(
            f"| {movie['dose']:g} | {movie['entropy_bits_per_pixel']:.3f} | {_mib(movie['floor_bytes'])} | "
            f"{_mib(movie['size_bytes'])} | {movie['max_count']} |"
        )
    lines.append("")
    lines.append(
        "| dose | tool | options | stored as / codec | size (MiB) | x floor | ratio vs MRC | "
        "MB/s t1 | MB/s t2 | process s t1 | CPU s t1 | peak RSS MiB t1 / t2 |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    doses = [movie["dose"] for movie in results.movies]
    for dose in doses:
        seen: set[tuple[str, str]] = set()
        for m in _find(results.measurements, dose=dose):
            key = (m.tool, m.options)
            if key in seen:
                continue
            seen.add(key)
            runs = {
                x.threads: x for x in _find(results.measurements, dose=dose, tool=m.tool, options=m.options)
            }
            lines.append(_row(dose, runs.get(1), runs.get(2)))
    lines.append("")
    lines.append(
        "MB/s: MB (10^6 bytes) of MRC input per second of wall time; for empcompress the conversion's own "
        "wall time (read, detect, encode, write, verify from disk, hash, fsync, rename), for the others the "
        "process's. 'process s' is the whole process wall time (for empcompress including ~1 s of "
        "interpreter and import start-up); 'CPU s' is user+system CPU of the process. Peak RSS is "
        "ru_maxrss of a fresh process per measurement (floor ~8 MiB: the launcher). empcompress rows are "
        f"the fastest of {o.get('repeat', 1)} runs (every run is in the JSON); the others ran once."
    )
    if results.memory:
        lines.append("")
        lines.append("Peak memory against frame count (dose 1, `--codec auto`):")
        lines.append("")
        lines.append("| frames | MRC (MiB) | peak RSS MiB t1 | peak RSS MiB t2 | MB/s t1 | MB/s t2 |")
        lines.append("|---|---|---|---|---|---|")
        for n_frames in sorted({m.n_frames for m in results.memory}):
            runs = {m.threads: m for m in _find(results.memory, n_frames=n_frames)}
            first = next(iter(runs.values()))
            cells = [_mib(runs[t].peak_rss_bytes).split(".")[0] if t in runs else "-" for t in (1, 2)] + [
                f"{runs[t].mb_per_s:.0f}" if t in runs else "-" for t in (1, 2)
            ]
            lines.append(f"| {n_frames} | {_mib(first.input_bytes)} | {' | '.join(cells)} |")
    lines.append("")
    lines.extend(format_goals(results))
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def load_results(path: Path) -> RunResults:
    """Read back what ``--json`` wrote (to reprint the report)."""
    data = json.loads(path.read_text())
    data["measurements"] = [Measurement(**m) for m in data["measurements"]]
    data["memory"] = [Measurement(**m) for m in data["memory"]]
    return RunResults(**data)


def format_goals(results: RunResults) -> list[str]:
    lines = ["Goals (issue 2), at 1 e-/pixel/frame:", ""]
    if results.options.get("quick"):
        lines += ["(quick mode: the goals are for 4096x4096 movies; start-up dominates these verdicts)", ""]
    at_one = _find(results.measurements, dose=1.0)
    default = _find(at_one, tool="empcompress", options="--codec auto")
    default_t1 = [m for m in default if m.threads == 1]
    if default:
        multiple = default[0].floor_multiple
        lines.append(
            f"- default output within {GOAL_FLOOR_MULTIPLE - 1:.0%} of the entropy floor: "
            f"{_verdict(multiple <= GOAL_FLOOR_MULTIPLE)} ({multiple:.3f} x floor, {default[0].detail})"
        )
    if default_t1:
        speed = default_t1[0].mb_per_s
        cores = default_t1[0].cpu_seconds / default_t1[0].wall_seconds
        per_cpu_second = default_t1[0].input_bytes / default_t1[0].cpu_seconds / 1e6
        lines.append(
            f"- >= {GOAL_MB_PER_S_PER_CORE:.0f} MB/s of input per core (--threads 1): "
            f"{_verdict(speed >= GOAL_MB_PER_S_PER_CORE)} ({speed:.0f} MB/s; the process used "
            f"{cores:.2f} cores on average: {per_cpu_second:.0f} MB "
            f"per CPU-second incl. start-up)"
        )
        relion = _find(at_one, tool="relion_convert_to_tiff")
        relion_default = [m for m in relion if m.options.startswith("default")]
        if relion_default:
            speedup = relion_default[0].wall_seconds / default_t1[0].wall_seconds
            fastest = min(relion, key=lambda m: m.wall_seconds)
            lines.append(
                f"- >= {GOAL_SPEEDUP_VS_RELION:.0f}x faster than relion_convert_to_tiff (default settings, "
                f"process wall time, ours at --threads 1): {_verdict(speedup >= GOAL_SPEEDUP_VS_RELION)} "
                f"({speedup:.1f}x; against its fastest setting, {fastest.options}: "
                f"{fastest.wall_seconds / default_t1[0].wall_seconds:.1f}x at "
                f"{fastest.output_bytes / default_t1[0].output_bytes:.2f}x our size)"
            )
    if results.memory:
        frames = sorted({m.n_frames for m in results.memory})
        verdicts = []
        flat = True
        for threads in sorted({m.threads for m in results.memory}):
            small = _find(results.memory, n_frames=frames[0], threads=threads)[0]
            large = _find(results.memory, n_frames=frames[-1], threads=threads)[0]
            ok = large.peak_rss_bytes <= small.peak_rss_bytes * GOAL_MEMORY_SLACK + GOAL_MEMORY_SLACK_BYTES
            flat = flat and ok
            verdicts.append(
                f"t{threads}: {frames[0]} frames {_mib(small.peak_rss_bytes)} MiB, "
                f"{frames[-1]} frames {_mib(large.peak_rss_bytes)} MiB"
            )
        lines.append(
            f"- peak memory independent of the number of frames: {_verdict(flat)} ({'; '.join(verdicts)})"
        )
    return lines


# ------------------------------------------------------------------ profiling one conversion


class StageTimer:
    """Wall time per stage of one in-process conversion, by wrapping the package's functions."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.stage = threading.local()
        self.lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []

    def add(self, name: str, seconds: float) -> None:
        with self.lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def current(self) -> str:
        return getattr(self.stage, "name", "other")

    def wrap(
        self, owner: Any, attribute: str, label: str | Callable[[], str], *, sets_stage: str | None = None
    ) -> None:
        original = getattr(owner, attribute, None)
        if original is None:
            print(f"(profile: {owner}.{attribute} not found; not timed)", file=sys.stderr)
            return
        timer = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            previous = timer.current()
            if sets_stage is not None:
                timer.stage.name = sets_stage
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                name = label() if callable(label) else label
                timer.add(name, time.perf_counter() - started)
                timer.stage.name = previous

        setattr(owner, attribute, wrapper)
        self._undo.append((owner, attribute, original))

    def restore(self) -> None:
        for owner, attribute, original in reversed(self._undo):
            setattr(owner, attribute, original)


def profile_conversion(args: argparse.Namespace, work: Path) -> None:
    """Time the stages of one conversion in-process, then show cProfile's top functions."""
    import numpy as np

    from empcompress import convert, encode, kernels, mrc, reconstruct, verify
    from empcompress.convert import api as convert_api
    from empcompress.convert import write_pass as convert_pass

    dose = args.doses[0] if len(args.doses) == 1 else 1.0
    threads = args.threads[0]
    spec = SyntheticMovieSpec(
        dose_per_pixel_per_frame=dose, n_frames=args.frames, ny=args.ny, nx=args.nx, seed=args.seed
    )
    path = work / f"profile-{dose:g}e.mrc"
    movie = write_synthetic_movie(path, spec)
    output = work / "profile.tif"
    try:
        convert.convert_movie(path, output, threads=threads, overwrite=True)  # warm: JIT cache, page cache
        timer = StageTimer()
        timer.wrap(convert, "survey_movie", "survey (total)", sets_stage="survey")
        timer.wrap(convert_pass, "resolve_codec", "codec trial (auto)", sets_stage="trial")
        timer.wrap(convert, "write_tiff_stack", "encode+write pass (total)", sets_stage="write")
        timer.wrap(convert_api, "verify_tiff", "verify pass (total)", sets_stage="verify")
        timer.wrap(convert_api, "file_digests", "output sha256+md5")
        timer.wrap(convert_api, "commit_output", "fsync+rename")
        timer.wrap(convert, "frame_stats", "survey: integer stats (Numba)")
        timer.wrap(mrc.MrcMovie, "read_raw_frame", lambda: f"{timer.current()}: read source frame")
        timer.wrap(kernels, "flip_cast", lambda: f"{timer.current()}: flip_cast")
        timer.wrap(encode.Codec, "encode", "encode strips (summed over encoder threads)")
        timer.wrap(reconstruct.CompressedMovie, "read_stored_frame", "verify: read+decode page (tifffile)")
        timer.wrap(verify.np, "array_equal", "verify: compare bytes")
        started = time.perf_counter()
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            result = convert.convert_movie(path, output, threads=threads, overwrite=True)
        finally:
            profiler.disable()
            timer.restore()
        wall = time.perf_counter() - started
        print(
            f"One conversion of {movie.size_bytes / 2**20:.0f} MiB "
            f"({spec.n_frames} frames {spec.nx}x{spec.ny}, "
            f"dose {dose:g}), --threads {threads}, codec {result.codec}: {wall:.2f} s wall with timers "
            f"({movie.size_bytes / wall / 1e6:.0f} MB/s); load average {_load():.2f}"
        )
        print()
        print("| stage | seconds | share of wall | MB/s of input |")
        print("|---|---|---|---|")
        for name, seconds in sorted(timer.seconds.items(), key=lambda item: item[0]):
            print(
                f"| {name} | {seconds:.3f} | {seconds / wall:.0%} | {movie.size_bytes / seconds / 1e6:.0f} |"
            )
        t = timer.seconds
        derived = {
            "survey: sha256 (derived: total - stats - read)": t.get("survey (total)", 0)
            - t.get("survey: integer stats (Numba)", 0)
            - t.get("survey: read source frame", 0),
            "verify: rebuilt sha256 + rest (derived)": t.get("verify pass (total)", 0)
            - t.get("verify: read+decode page (tifffile)", 0)
            - t.get("verify: flip_cast", 0)
            - t.get("verify: compare bytes", 0)
            - t.get("verify: read source frame", 0),
            "write: tifffile + waiting for encoder (derived)": t.get("encode+write pass (total)", 0)
            - t.get("write: flip_cast", 0)
            - t.get("write: read source frame", 0),
        }
        for name, seconds in derived.items():
            speed = movie.size_bytes / max(seconds, 1e-9) / 1e6
            print(f"| {name} | {seconds:.3f} | {seconds / wall:.0%} | {speed:.0f} |")
        print()
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(15)
        del np
    finally:
        _remove(path)
        _remove(output)


# ------------------------------------------------------------------ main


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _names(text: str) -> list[str]:
    names = [x for x in text.split(",") if x]
    unknown = set(names) - set(OUR_CODECS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown codecs {sorted(unknown)}; choose from {', '.join(OUR_CODECS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1024x1024 frames, few frames, small samples"
    )
    parser.add_argument("--frames", type=int, help="frames per movie (default 16; quick 4)")
    parser.add_argument("--size", help="frame size NXxNY (default 4096x4096; quick 1024x1024)")
    parser.add_argument(
        "--doses", type=_floats, default=[0.5, 1.0, 2.0], help="e-/pixel/frame, comma-separated"
    )
    parser.add_argument("--codecs", type=_names, default=list(OUR_CODECS), help="empcompress codecs to run")
    parser.add_argument("--threads", type=_ints, default=[1, 2], help="empcompress --threads values")
    parser.add_argument(
        "--memory-frames", type=_ints, help="frame counts for the memory check (default 8,32; quick 2,8)"
    )
    parser.add_argument(
        "--zstd19-mib", type=int, help="run zstd -19 on the first N MiB only (default 16; 0 = whole file)"
    )
    parser.add_argument("--skip-relion", action="store_true")
    parser.add_argument("--skip-bzip2", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per empcompress measurement, fastest counts (default 2)"
    )
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument(
        "--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="scratch directory (default benchmarks/_work)"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results as JSON here")
    parser.add_argument("--report-from", type=Path, metavar="JSON", help="reprint a --json file's report")
    parser.add_argument(
        "--profile", action="store_true", help="time the stages of one conversion instead (dose 1)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.frames = args.frames or (4 if args.quick else 16)
    size = args.size or ("1024x1024" if args.quick else "4096x4096")
    args.nx, args.ny = (int(x) for x in size.lower().split("x"))
    if args.memory_frames is None:
        args.memory_frames = [2, 8] if args.quick else [8, 32]
    if args.zstd19_mib is None:
        args.zstd19_mib = 2 if args.quick else 16
    args.work_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that scratch files are still removed
    work = Path(tempfile.mkdtemp(prefix="bench-convert-", dir=args.work_dir))
    try:
        if args.profile:
            profile_conversion(args, work)
            return 0
        if args.report_from:
            print(format_report(load_results(args.report_from)))
            return 0
        command = "python benchmarks/bench_convert.py " + " ".join(sys.argv[1:] if argv is None else argv)
        results = RunResults(
            machine=machine_description(),
            command=command.strip(),
            started=datetime.datetime.now().isoformat(timespec="seconds"),
            options={
                "frames": args.frames,
                "nx": args.nx,
                "ny": args.ny,
                "seed": args.seed,
                "doses": args.doses,
                "repeat": args.repeat,
                "quick": args.quick,
            },
        )
        _progress("warming up (Numba kernel cache)")
        warm_up(work)
        for dose in args.doses:
            run_dose(dose, args, work, results)
        if args.memory_frames:
            run_memory(args, work, results)
        results.finished = datetime.datetime.now().isoformat(timespec="seconds")
        report = format_report(results)
        print(report)
        if args.json:
            payload = asdict(results)
            args.json.write_text(json.dumps(payload, indent=1))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            args.work_dir.rmdir()  # only if empty


if __name__ == "__main__":
    sys.exit(main())
