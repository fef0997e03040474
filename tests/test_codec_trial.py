"""The codec trial's frame: every 4th strip band of a frame in storage type, each band cast on its own
(no whole stored frame made), byte for byte what casting the whole frame and keeping those bands gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mrc_factory import write_mrc

from empcompress import kernels
from empcompress.convert.codec_trial import trial_frame
from empcompress.encode import rows_per_strip
from empcompress.mrc import MrcMovie


def whole_frame_bands(values: np.ndarray, stored_dtype: np.dtype, gain: np.ndarray | None) -> np.ndarray:
    """The reference: the whole frame cast (NumPy twins), then every 4th band of strips kept."""
    whole = np.empty(values.shape, dtype=stored_dtype)
    if gain is None:
        kernels.flip_cast_numpy(values, whole)
    else:
        kernels.gain_counts_numpy(values, gain, whole)
    rows = rows_per_strip(frame_shape=values.shape, itemsize=whole.dtype.itemsize)
    return np.concatenate([whole[start : start + rows] for start in range(0, whole.shape[0], 4 * rows)])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ny=st.integers(1, 700),
    nx=st.integers(1, 3000),
    stored=st.sampled_from(["uint8", "uint16"]),
    with_gain=st.booleans(),
    byte_order=st.sampled_from(["<", ">"]),
    seed=st.integers(0, 2**32 - 1),
)
# bands at rows 0, 348 and 696 of 700 (uint16: 87 rows a strip): the last one 4 rows high
@example(ny=700, nx=3000, stored="uint16", with_gain=False, byte_order="<", seed=1)
@example(ny=700, nx=3000, stored="uint16", with_gain=True, byte_order=">", seed=2)
@example(ny=700, nx=3000, stored="uint8", with_gain=True, byte_order="<", seed=3)  # 174 rows: 0, 696
def test_the_trial_is_every_fourth_band_of_the_whole_cast_frame(
    tmp_path: Path, ny: int, nx: int, stored: str, with_gain: bool, byte_order: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(3.0, size=(2, ny, nx)).astype(np.float32)
    gain = rng.uniform(0.5, 2.0, size=(ny, nx)).astype(np.float32) if with_gain else None
    values = counts * gain if gain is not None else counts
    if gain is not None:  # a few values no count reproduces under the gain (exceptions)
        values.reshape(-1)[rng.integers(0, values.size, size=3)] = np.float32(0.123)
    name = f"{ny}x{nx}{stored}{with_gain}{byte_order}.mrc"
    path = write_mrc(tmp_path / name, values, mode=2, byte_order=byte_order)
    with MrcMovie(path) as movie:
        frame = movie.read_frame(1)
        trial = trial_frame(movie, frame, np.dtype(stored), gain)
        expected = whole_frame_bands(frame, np.dtype(stored), gain)
    assert trial.dtype == np.dtype(stored) and trial.flags.c_contiguous
    np.testing.assert_array_equal(trial, expected)
