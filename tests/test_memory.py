"""Peak memory of a conversion does not grow with the number of frames.

tracemalloc sees NumPy's allocations (NumPy reports them to it), so the peak
traced memory of converting a 4-frame and a 32-frame movie of the same frame
size must be about the same: frames are streamed, never collected.

The resident size (what a cluster worker's memory limit sees) is measured in a fresh
process: its peak while converting, above the process after imports and a warm-up
conversion, is at most :data:`FRAME_BUFFERS` source frames (issue 10: read buffers, the
held sample frame, the stored frames in flight, verification's rebuilt frames), the same
for 4 and 16 frames, and a float32 K3 super-resolution movie (11520x8184, 377 MB per
frame) converts within 2.5 GiB.
"""

from __future__ import annotations

import gc
import json
import os
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from mrc_factory import write_mrc

from empcompress.convert import convert_movie
from empcompress.restore import restore_movie

FRAME_SHAPE = (512, 512)  # 1 MiB per float32 frame
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1] * 4
#: The stated bound: a conversion's peak resident size above the warmed-up process, in source frames.
FRAME_BUFFERS = 6
SUPER_RESOLUTION_SHAPE = (8184, 11520)
RSS_LIMIT_BYTES = int(2.5 * 2**30)
TESTS = Path(__file__).resolve().parent

#: Run in a fresh process: warm up (imports, Numba's cached kernels, its threads) on a small movie,
#: then reset the peak resident size (Linux: ``5`` to /proc/self/clear_refs resets VmHWM) and convert
#: argv[1]; print the resident size before and the peak while converting.
_MEASURE = """
import gc, json, sys
from pathlib import Path
import numpy as np
from mrc_factory import write_mrc
from empcompress.convert import convert_movie

def status(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(field + ":"))

source, work, threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
warm = write_mrc(work / "warm.mrc", np.ones((2, 1536, 1536), np.float32), mode=2)
convert_movie(warm, work / "warm.tif", threads=threads)
gc.collect()
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS")
result = convert_movie(source, work / "out.tif", threads=threads)
print(json.dumps({"before": before, "peak": status("VmHWM"), "stored": result.decision.stored_dtype}))
"""


def peak_rss(source: Path, work: Path, *, threads: int) -> dict[str, int | str]:
    """Resident size (bytes) of a fresh process before, and its peak while, converting ``source``."""
    work.mkdir(exist_ok=True)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(source), str(work), str(threads)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    measured: dict[str, int | str] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def make_movie(path: Path, n_frames: int) -> Path:
    rng = np.random.default_rng(n_frames)
    values = rng.poisson(1.0, size=(n_frames, *FRAME_SHAPE)).astype(np.float32)
    return write_mrc(path, values, mode=2)


def traced_peak_bytes(function: object, *args: object, **kwargs: object) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        function(*args, **kwargs)  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - baseline


@pytest.mark.slow
def test_convert_peak_memory_does_not_grow_with_frames(tmp_path: Path) -> None:
    short = make_movie(tmp_path / "short.mrc", 4)
    long = make_movie(tmp_path / "long.mrc", 32)
    convert_movie(short, tmp_path / "warmup.tif", threads=2)  # compile and import outside the measurement

    peak_short = traced_peak_bytes(convert_movie, short, tmp_path / "short.tif", threads=2)
    peak_long = traced_peak_bytes(convert_movie, long, tmp_path / "long.tif", threads=2)
    print(f"peak traced memory: 4 frames {peak_short / 2**20:.1f} MiB, 32 frames {peak_long / 2**20:.1f} MiB")
    # The whole 32-frame movie is 32 MiB: holding it, or even 25 KB per frame, would show.
    assert peak_long < peak_short * 1.05 + FRAME_BYTES // 4
    assert peak_long < 16 * FRAME_BYTES


@pytest.mark.slow
def test_restore_peak_memory_does_not_grow_with_frames(tmp_path: Path) -> None:
    peaks = []
    for n_frames in (4, 32):
        source = make_movie(tmp_path / f"m{n_frames}.mrc", n_frames)
        convert_movie(source, tmp_path / f"m{n_frames}.tif", threads=2)
        peaks.append(
            traced_peak_bytes(restore_movie, tmp_path / f"m{n_frames}.tif", tmp_path / f"r{n_frames}.mrc")
        )
    print(f"peak traced memory of restore: {peaks[0] / 2**20:.1f} MiB, {peaks[1] / 2**20:.1f} MiB")
    assert peaks[1] < peaks[0] * 1.05 + FRAME_BYTES // 4


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_convert_peak_rss_is_a_few_frames_whatever_the_number_of_frames(tmp_path: Path, threads: int) -> None:
    shape = (2048, 2048)  # 16 MiB float32 frames: above the size that gets threads
    frame_bytes = shape[0] * shape[1] * 4
    growth = {}
    for n_frames in (4, 16):
        values = np.random.default_rng(n_frames).poisson(1.0, size=(n_frames, *shape)).astype(np.float32)
        source = write_mrc(tmp_path / f"m{n_frames}.mrc", values, mode=2)
        del values
        measured = peak_rss(source, tmp_path / f"work{n_frames}", threads=threads)
        growth[n_frames] = int(measured["peak"]) - int(measured["before"])
    print(f"peak RSS above the warmed-up process: {growth[4] / 2**20:.0f} / {growth[16] / 2**20:.0f} MiB")
    # 12 more frames are 192 MiB: holding them, or a quarter of each, would show
    assert growth[16] < growth[4] + frame_bytes * 3 // 4
    assert max(growth.values()) <= FRAME_BUFFERS * frame_bytes


def write_super_resolution_movie(path: Path, n_frames: int) -> Path:
    """A float32 MRC of 11520x8184 Poisson counts at 0.25 e-/pixel (frames are shifted copies)."""
    ny, nx = SUPER_RESOLUTION_SHAPE
    counts = np.random.default_rng(10).poisson(0.25, size=(ny, nx)).astype(np.float32)
    header = bytearray(1024)
    struct.pack_into("<4i", header, 0, nx, ny, n_frames, 2)
    struct.pack_into("<3i", header, 28, nx, ny, n_frames)
    struct.pack_into("<3i", header, 64, 1, 2, 3)
    header[208:212] = b"MAP "
    header[212:214] = b"\x44\x44"
    with open(path, "wb") as handle:
        handle.write(header)
        for index in range(n_frames):
            handle.write(np.roll(counts, 97 * index, axis=1).tobytes())
    return path


@pytest.mark.slow
def test_a_super_resolution_conversion_fits_in_2_5_gib(tmp_path: Path) -> None:
    source = write_super_resolution_movie(tmp_path / "k3.mrc", 4)  # 1.5 GB
    measured = peak_rss(source, tmp_path / "work", threads=2)
    frame_bytes = SUPER_RESOLUTION_SHAPE[0] * SUPER_RESOLUTION_SHAPE[1] * 4
    print(f"super-resolution float32: peak RSS {int(measured['peak']) / 2**20:.0f} MiB")
    assert measured["stored"] == "uint8"
    assert int(measured["peak"]) <= RSS_LIMIT_BYTES
    assert int(measured["peak"]) - int(measured["before"]) <= FRAME_BUFFERS * frame_bytes
