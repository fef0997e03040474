"""classify_movie streams its sample by row bands: the same decisions as holding the whole sample.

The reference below is the old in-memory algorithm (every sampled frame held, a
whole-frame partial, the whole sample grown 4x at a time), written with the
kernels' NumPy twins; the package's banded streaming must agree with it exactly
(kind, number of sampled frames, exception fraction bit for bit, reason text)
whatever the bands.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mrc_factory import write_mrc

from empcompress import kernels
from empcompress.gain import MovieClass, classify_movie, sample_frame_indices
from empcompress.gain.limits import MAX_EXCEPTION_FRACTION, MIN_RELIABLE_FRACTION
from empcompress.gainref import exception_counts, exception_fraction


def _normalised(counts: npt.NDArray[np.integer], gain: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return (counts.astype(np.float32) * gain).astype(np.float32)


def _reference_estimate(frames: list[npt.NDArray[np.float32]]) -> tuple[npt.NDArray[np.float32], int, int]:
    """(gain, reliable pixels, hit pixels) of a whole-frame partial of all the frames."""
    ny, nx = frames[0].shape
    kept = np.full((ny, nx, kernels.GAIN_SUMMARY_KEPT), np.inf, dtype=np.float32)
    n_kept = np.zeros((ny, nx), dtype=np.uint8)
    n_hits = np.zeros((ny, nx), dtype=np.uint16)
    flags = np.zeros((ny, nx), dtype=np.uint8)
    for frame in frames:
        kernels.gain_summary_update_numpy(frame, kept, n_kept, n_hits, flags)
    gain, status = kernels.gain_finalize_numpy(kept, n_kept, flags)
    n_reliable = int(np.count_nonzero(status == kernels.GAIN_RELIABLE))
    n_hit = n_reliable + int(
        np.count_nonzero((status == kernels.GAIN_UNCONFIRMED) | (status == kernels.GAIN_EXCEPTION))
    )
    return gain, n_reliable, n_hit


def _reference_fraction(frames: list[npt.NDArray[np.float32]], gain: npt.NDArray[np.float32]) -> float:
    scratch = np.empty(gain.shape, dtype=np.uint16)
    n_bad = sum(kernels.gain_counts_numpy(frame, gain, scratch)[1].size for frame in frames)
    return n_bad / max(1, sum(frame.size for frame in frames))


def old_classify(
    values: npt.NDArray[np.generic], *, mode: int, gain: npt.NDArray[np.float32] | None, n_sample_frames: int
) -> tuple[str, int, float | None]:
    """The old classify_movie on the movie's values in memory: (kind, sampled frames, fraction)."""
    nz = values.shape[0]
    frames = [values[i] for i in sample_frame_indices(nz, n_sample_frames)]
    n = len(frames)
    if values.dtype.kind in "iu" or all(kernels.float_frame_stats_numpy(f)[0] for f in frames):
        return "counts", n, None
    if mode != 2:
        return "float", n, None
    floats = [f.astype(np.float32) for f in frames]
    if gain is not None:
        if gain.shape != values.shape[1:]:
            return "float", n, None
        fraction = _reference_fraction(floats, gain)
        return ("gain-normalised" if fraction <= MAX_EXCEPTION_FRACTION else "float"), n, fraction
    while True:
        estimate, n_reliable, n_hit = _reference_estimate(floats)
        fraction = _reference_fraction(floats, estimate)
        confirmed = n_reliable / max(1, n_hit)
        if fraction > MAX_EXCEPTION_FRACTION or confirmed >= MIN_RELIABLE_FRACTION or n >= nz:
            break
        floats = [values[i].astype(np.float32) for i in sample_frame_indices(nz, 4 * n)]
        n = len(floats)
    if fraction > MAX_EXCEPTION_FRACTION or confirmed < MIN_RELIABLE_FRACTION:
        return "float", n, fraction
    return "gain-normalised", n, fraction


def _same(result: MovieClass, expected: tuple[str, int, float | None]) -> bool:
    return (result.kind, result.n_sampled_frames, result.exception_fraction) == expected


KINDS = ("counts", "gain-normalised", "sparse", "float", "spoiled", "int16", "float16")


@st.composite
def movies(draw: st.DrawFn) -> tuple[npt.NDArray[np.generic], int, npt.NDArray[np.float32]]:
    """(values (nz, ny, nx), MRC mode, the gain that normalised them)."""
    kind = draw(st.sampled_from(KINDS))
    nz = draw(st.integers(1, 40 if kind == "sparse" else 12))
    ny, nx = draw(st.integers(1, 12)), draw(st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    gain = rng.uniform(0.6, 1.6, size=(ny, nx)).astype(np.float32)
    dose = draw(st.sampled_from((0.02, 0.3, 1.0, 4.0)))
    if kind == "sparse":
        dose = draw(st.sampled_from((0.005, 0.02, 0.05)))
    counts = rng.poisson(dose, size=(nz, ny, nx))
    if kind == "counts":
        return counts.astype(np.float32), 2, gain
    if kind == "int16":
        return counts.astype(np.int16), 1, gain
    if kind == "float":
        return (rng.standard_normal((nz, ny, nx)) * 20 + 100).astype(np.float32), 2, gain
    if kind == "float16":
        return (rng.standard_normal((nz, ny, nx)) * 2 + 10).astype(np.float16), 12, gain
    values = _normalised(counts, gain)
    if kind == "spoiled":  # a few values no gain reproduces, anywhere in the movie
        for _ in range(draw(st.integers(1, 3))):
            z, y, x = rng.integers(nz), rng.integers(ny), rng.integers(nx)
            values[z, y, x] = np.float32(gain[y, x] * 1.37)
    return values, 2, gain


@given(
    movie=movies(),
    n_sample_frames=st.integers(1, 9),
    n_bands=st.integers(2, 12),
    byte_order=st.sampled_from("<>"),
)
def test_banded_classification_decides_as_the_whole_sample_did(
    tmp_path_factory: pytest.TempPathFactory,
    movie: tuple[npt.NDArray[np.generic], int, npt.NDArray[np.float32]],
    n_sample_frames: int,
    n_bands: int,
    byte_order: str,
) -> None:
    values, mode, true_gain = movie
    path = write_mrc(tmp_path_factory.mktemp("classify") / "m.mrc", values, mode=mode, byte_order=byte_order)
    gains = (
        None,
        true_gain,
        np.random.default_rng(5).uniform(0.6, 1.6, true_gain.shape).astype(np.float32),  # another gain
        np.ones((true_gain.shape[0] + 1, true_gain.shape[1]), np.float32),  # the wrong shape
    )
    for gain in gains:
        expected = old_classify(values, mode=mode, gain=gain, n_sample_frames=n_sample_frames)
        results = [
            classify_movie(path, gain=gain, n_sample_frames=n_sample_frames, n_bands=bands)
            for bands in (None, n_bands, values.shape[1])  # one band, some, one a row
        ]
        assert _same(results[0], expected), (results[0], expected)
        assert results[1] == results[0] and results[2] == results[0], results  # the reasons too


@pytest.mark.parametrize("n_bands", [1, 3, 16])
def test_a_sparse_sample_grows_as_before(tmp_path: Path, n_bands: int) -> None:
    rng = np.random.default_rng(1)
    gain = rng.uniform(0.6, 1.6, size=(16, 16)).astype(np.float32)
    values = _normalised(rng.poisson(0.05, size=(40, 16, 16)), gain)
    path = write_mrc(tmp_path / "sparse.mrc", values, mode=2)
    # 3 frames are too few to confirm a gain, 6 would do, but the rule grows 3 to 12
    assert old_classify(values, mode=2, gain=None, n_sample_frames=6) == ("gain-normalised", 6, 0.0)
    expected = old_classify(values, mode=2, gain=None, n_sample_frames=3)
    assert expected == ("gain-normalised", 12, 0.0)
    assert _same(classify_movie(path, n_sample_frames=3, n_bands=n_bands), expected)
    # too sparse for any sample: every frame is looked at before giving up
    sparse = _normalised(rng.poisson(0.002, size=(9, 16, 16)), gain)
    sparse[0, 0, 0] = gain[0, 0]
    path = write_mrc(tmp_path / "sparser.mrc", sparse, mode=2)
    expected = old_classify(sparse, mode=2, gain=None, n_sample_frames=2)
    assert expected == ("float", 9, 0.0)
    assert _same(classify_movie(path, n_sample_frames=2, n_bands=n_bands), expected)


def test_an_integral_first_band_does_not_make_counts(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    gain = rng.uniform(0.6, 1.6, size=(8, 8)).astype(np.float32)
    values = _normalised(rng.poisson(2.0, size=(6, 8, 8)), gain)
    values[:, :4] = 0.0  # nothing in the top band of any frame
    path = write_mrc(tmp_path / "half.mrc", values, mode=2)
    expected = old_classify(values, mode=2, gain=None, n_sample_frames=8)
    assert expected[0] == "gain-normalised"
    for n_bands in (1, 2, 8):
        assert _same(classify_movie(path, n_bands=n_bands), expected)


def test_exception_counts_add_up_over_frames_and_bands() -> None:
    rng = np.random.default_rng(11)
    gain = rng.uniform(0.6, 1.6, size=(9, 5)).astype(np.float32)
    frames = [_normalised(rng.poisson(1.0, size=(9, 5)), gain) for _ in range(3)]
    frames[1][4, 2] = np.float32(0.123)
    frames[2][8, 0] = np.float32(-1.0)
    whole = exception_counts(frames, gain)
    banded = [exception_counts([f[a:b] for f in frames], gain[a:b]) for a, b in ((0, 4), (4, 5), (5, 9))]
    assert whole == (2, 135)
    assert tuple(map(sum, zip(*banded, strict=True))) == whole
    assert exception_fraction(frames, gain) == 2 / 135


def test_classification_memory_does_not_grow_with_the_sample(tmp_path: Path) -> None:
    """Peak traced memory: the same for 4 and 32 sampled frames, and a few bands' worth.

    (The old code held every sampled frame: 32 frames of 48x512 float32 are 3 MiB.)
    """
    rng = np.random.default_rng(2)
    ny, nx = 48, 512
    gain = rng.uniform(0.6, 1.6, size=(ny, nx)).astype(np.float32)
    values = _normalised(rng.poisson(1.0, size=(32, ny, nx)), gain)
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    classify_movie(path, n_sample_frames=1, n_bands=4)  # compile the kernels outside the measurement

    def peak_bytes(n_sample_frames: int, known: npt.NDArray[np.float32] | None) -> int:
        tracemalloc.start()
        try:
            result = classify_movie(path, gain=known, n_sample_frames=n_sample_frames, n_bands=4)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
            assert result.kind == "gain-normalised" and result.n_sampled_frames == n_sample_frames

    band_pixels = ny * nx // 4
    for known in (None, gain):
        few, many = peak_bytes(4, known), peak_bytes(32, known)
        assert many <= few + 64 * 1024, (few, many)
        # one band's partial, gain, rows and scratch: about 40 bytes a band pixel, not 4 a sampled value
        assert many <= 48 * band_pixels + 256 * 1024, (many, band_pixels)
