"""Peak memory of a conversion does not grow with the number of frames.

tracemalloc sees NumPy's allocations (NumPy reports them to it), so the peak
traced memory of converting a 4-frame and a 32-frame movie of the same frame
size must be about the same: frames are streamed, never collected.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from mrc_factory import write_mrc

from empcompress.convert import convert_movie
from empcompress.restore import restore_movie

FRAME_SHAPE = (512, 512)  # 1 MiB per float32 frame
FRAME_BYTES = FRAME_SHAPE[0] * FRAME_SHAPE[1] * 4


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
