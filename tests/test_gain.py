"""Gain estimation, classification and exception lists (empcompress.gain), and the gain kernels.

Synthetic sets: Poisson counts times a per-pixel float32 gain, rounded once to
float32 (what gain normalisation in float32 arithmetic writes), on small frames.
"""

from __future__ import annotations

import pickle
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mrc_factory import write_mrc

from empcompress import gain as gain_module
from empcompress import kernels
from empcompress.errors import GainError
from empcompress.gain import (
    MAX_EXCEPTION_FRACTION,
    GainExceptions,
    classify_movie,
    estimate_set_gain,
    finalize_gain,
    gain_partial_from_frames,
    gain_partial_from_movie,
    merge_gain_partials,
    sample_frame_indices,
)
from empcompress.gainref import exception_fraction

SHAPE = (64, 96)


def normalised(counts: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """float32(n * g): float32 counts times a float32 gain, in float32 arithmetic."""
    return (counts.astype(np.float32) * gain.astype(np.float32)).astype(np.float32)


def random_gain(rng: np.random.Generator, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    return rng.uniform(0.6, 1.6, size=shape).astype(np.float32)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def reproduced(values: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Rebuild values from counts under ``gain`` plus exceptions (what restore does), per frame."""
    out = np.empty_like(values)
    for index, frame in enumerate(values):
        counts = np.empty(frame.shape, dtype=np.uint16)
        _, indices, bits, _ = kernels.gain_counts(frame, gain, counts)
        kernels.gain_apply(counts, gain, out[index])
        out[index].reshape(-1).view(np.uint32)[indices] = bits
    return out


# ---------------------------------------------------------------- kernels vs NumPy twins

SPECIAL = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, -1.5, 1e-45, 3.4e38], dtype=np.float32)


@st.composite
def frames_and_gain(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A few frames of counts x gain with special values sprinkled in, and the gain."""
    ny = draw(st.integers(1, 9))
    nx = draw(st.integers(1, 11))
    n_frames = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.01, 3.0, size=(ny, nx)).astype(np.float32)
    counts = rng.poisson(draw(st.sampled_from([0.3, 1.0, 4.0])), size=(n_frames, ny, nx))
    values = normalised(counts, gain)
    noise = rng.random(values.shape) < draw(st.sampled_from([0.0, 0.05, 0.3]))
    values[noise] = rng.choice(SPECIAL, size=int(noise.sum()))
    floats = rng.random(values.shape) < 0.05
    values[floats] = rng.uniform(0, 10, size=int(floats.sum())).astype(np.float32)
    return values, gain


def empty_summary(shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    ny, nx = shape
    return (
        np.full((ny, nx, kernels.GAIN_SUMMARY_KEPT), np.inf, dtype=np.float32),
        np.zeros((ny, nx), dtype=np.uint8),
        np.zeros((ny, nx), dtype=np.uint16),
        np.zeros((ny, nx), dtype=np.uint8),
    )


@given(frames_and_gain())
def test_summary_update_and_finalize_agree_with_numpy(case: tuple[np.ndarray, np.ndarray]) -> None:
    values, _ = case
    shape = values.shape[1:]
    fast, slow = empty_summary(shape), empty_summary(shape)
    for frame in values:
        kernels.gain_summary_update(frame, *fast)
        kernels.gain_summary_update_numpy(frame, *slow)
    for a, b in zip(fast, slow, strict=True):
        assert np.array_equal(a, b)
    kept, n_kept, _, flags = fast
    for t in range(1, kept.shape[2]):  # ascending and distinct, +inf padded
        used = t < n_kept
        assert np.all(kept[..., t][used] > kept[..., t - 1][used])
        assert np.all(np.isinf(kept[..., t][~used]))
    gain_fast, status_fast = kernels.gain_finalize(kept, n_kept, flags)
    gain_slow, status_slow = kernels.gain_finalize_numpy(kept, n_kept, flags)
    assert same_bits(gain_fast, gain_slow)
    assert np.array_equal(status_fast, status_slow)


@given(frames_and_gain(), st.integers(0, 2**32 - 1))
def test_summary_merge_agrees_with_numpy(case: tuple[np.ndarray, np.ndarray], seed: int) -> None:
    values = case[0]
    shape = values.shape[1:]
    a, b = empty_summary(shape), empty_summary(shape)
    in_a = np.random.default_rng(seed).random(len(values)) < 0.5
    for frame, first in zip(values, in_a, strict=True):
        kernels.gain_summary_update(frame, *(a if first else b))
    fast = kernels.gain_summary_merge(a[0], b[0])
    slow = kernels.gain_summary_merge_numpy(a[0], b[0])
    assert np.array_equal(fast[0], slow[0])
    assert np.array_equal(fast[1], slow[1])
    whole = empty_summary(shape)
    for frame in values:
        kernels.gain_summary_update(frame, *whole)
    assert np.array_equal(fast[0], whole[0])  # K smallest of the union = union of the K smallest


@given(frames_and_gain(), st.sampled_from([np.uint8, np.uint16]))
def test_gain_counts_and_apply_agree_with_numpy(case: tuple[np.ndarray, np.ndarray], dtype: type) -> None:
    values, gain = case
    gain = gain.copy()
    gain.reshape(-1)[:2] = np.array([0.0, np.nan], dtype=np.float32)[: gain.size]
    for frame in values:
        out_fast = np.empty(frame.shape, dtype=dtype)
        out_slow = np.empty(frame.shape, dtype=dtype)
        top_fast, indices_fast, bits_fast, n_fast = kernels.gain_counts(frame, gain, out_fast)
        top_slow, indices_slow, bits_slow, n_slow = kernels.gain_counts_numpy(frame, gain, out_slow)
        assert top_fast == top_slow and n_fast == n_slow == indices_fast.size
        assert np.array_equal(out_fast, out_slow)
        assert np.array_equal(indices_fast, indices_slow)
        assert np.array_equal(bits_fast, bits_slow)
        applied_fast = kernels.gain_apply(out_fast, gain, np.empty(frame.shape, np.float32))
        applied_slow = kernels.gain_apply_numpy(out_fast, gain, np.empty(frame.shape, np.float32))
        assert same_bits(applied_fast, applied_slow)


@given(frames_and_gain(), st.sampled_from([np.uint8, np.uint16]))
def test_counts_times_gain_plus_exceptions_is_the_original_bit_for_bit(
    case: tuple[np.ndarray, np.ndarray], dtype: type
) -> None:
    """Any representation the counts kernel accepts restores exactly (NaN payloads and -0.0 too)."""
    values, gain = case
    for frame in values:
        counts = np.empty(frame.shape, dtype=dtype)
        _, indices, bits, _ = kernels.gain_counts(frame, gain, counts)
        rebuilt = kernels.gain_apply(counts, gain, np.empty(frame.shape, np.float32))
        # non-exception pixels: float32(count x gain) in float32 arithmetic, as downstream programs do it
        downstream = (counts[::-1].astype(np.float32) * gain).astype(np.float32)
        keep = np.ones(frame.size, dtype=bool)
        keep[indices] = False
        assert np.array_equal(
            rebuilt.view(np.uint32).reshape(-1)[keep], frame.view(np.uint32).reshape(-1)[keep]
        )
        assert np.array_equal(
            downstream.view(np.uint32).reshape(-1)[keep], frame.view(np.uint32).reshape(-1)[keep]
        )
        rebuilt.reshape(-1).view(np.uint32)[indices] = bits
        assert same_bits(rebuilt, frame)


def test_gain_counts_flags_negative_zero_and_nan_as_exceptions() -> None:
    gain = np.ones((2, 3), dtype=np.float32)
    frame = np.array([[0.0, -0.0, np.nan], [2.0, 2.5, -1.0]], dtype=np.float32)
    out = np.empty(frame.shape, dtype=np.uint8)
    top, indices, _, n_exceptions = kernels.gain_counts(frame, gain, out)
    assert top == 2 and n_exceptions == 4
    assert indices.tolist() == [1, 2, 4, 5]
    assert out[::-1][1, 0] == 2  # TIFF row order: flipped


@given(frames_and_gain(), st.sampled_from([np.uint8, np.uint16]), st.integers(0, 120))
def test_gain_counts_with_a_limit_collects_only_up_to_it(
    case: tuple[np.ndarray, np.ndarray], dtype: type, max_exceptions: int
) -> None:
    """Counts, the largest count and the number of exceptions never change; the lists only up to the limit."""
    values, gain = case
    for frame in values:
        whole = kernels.gain_counts(frame, gain, np.empty(frame.shape, dtype=dtype))
        out_fast = np.empty(frame.shape, dtype=dtype)
        out_slow = np.empty(frame.shape, dtype=dtype)
        fast = kernels.gain_counts(frame, gain, out_fast, max_exceptions=max_exceptions)
        slow = kernels.gain_counts_numpy(frame, gain, out_slow, max_exceptions=max_exceptions)
        assert np.array_equal(out_fast, out_slow)
        assert (fast.max_count, fast.n_exceptions) == (slow.max_count, slow.n_exceptions)
        assert (fast.max_count, fast.n_exceptions) == (whole.max_count, whole.n_exceptions)
        if whole.n_exceptions <= max_exceptions:
            for got in (fast, slow):
                assert got.indices is not None and got.bits is not None
                assert np.array_equal(got.indices, whole.indices)
                assert np.array_equal(got.bits, whole.bits)
        else:
            assert fast.indices is fast.bits is slow.indices is slow.bits is None
    with pytest.raises(ValueError, match="max_exceptions"):
        kernels.gain_counts(values[0], gain, np.empty(gain.shape, np.uint8), max_exceptions=-1)


@given(frames_and_gain(), st.sampled_from([255, 65535, 0, 1000]))
def test_counting_exceptions_alone_agrees_with_numpy_and_with_gain_counts(
    case: tuple[np.ndarray, np.ndarray], limit: int
) -> None:
    """How many exceptions counts up to ``limit`` leave, and the largest uint16 count reproducing one."""
    values, gain = case
    gain = gain.copy()
    gain.reshape(-1)[:2] = np.array([0.0, np.nan], dtype=np.float32)[: gain.size]
    for frame in (values[0], values[-1].astype(">f4")):
        fast = kernels.gain_exception_count(frame, gain, limit=limit)
        assert fast == kernels.gain_exception_count_numpy(frame, gain, limit=limit)
        if limit in (255, 65535):  # an unsigned type's range: what gain_counts into it finds
            dtype = np.uint8 if limit == 255 else np.uint16
            counted = kernels.gain_counts(frame, gain, np.empty(frame.shape, dtype=dtype))
            assert fast[0] == counted.n_exceptions
            # ... and the uint16 counts of its exceptions (GainCounter's check that uint8 is enough)
            assert counted.indices is not None and counted.bits is not None
            wider = kernels.gain_counts_numpy(
                counted.bits.view(np.float32),
                gain.reshape(-1)[counted.indices],
                np.empty(counted.indices.size, np.uint16),
            ).max_count
            assert fast[1] == wider
    assert kernels.gain_exception_count(values[0], gain)[1] == 0
    with pytest.raises(ValueError, match="count limit"):
        kernels.gain_exception_count(values[0], gain, limit=70000)
    with pytest.raises(ValueError, match="same shape"):
        kernels.gain_exception_count(values[0], gain[:, :0])


def _old_counter(gain: np.ndarray, frames: list[np.ndarray], outs: list[np.ndarray | None]) -> tuple:
    """GainCounter's state as it was: every frame's exceptions collected (the NumPy twins)."""
    limit = int(MAX_EXCEPTION_FRACTION * len(frames) * gain.size)
    n_exceptions = max_count = 0
    kept: list[tuple[np.ndarray, np.ndarray] | None] = []
    for frame, out in zip(frames, outs, strict=True):
        out = np.empty(gain.shape, np.uint16) if out is None else out
        top, indices, bits, _ = kernels.gain_counts_numpy(frame, gain, out)
        if out.dtype != np.uint16 and indices.size:
            wider = kernels.gain_counts_numpy(
                bits.view(np.float32), gain.reshape(-1)[indices], np.empty(indices.size, np.uint16)
            ).max_count
            top = max(top, wider)
        max_count = max(max_count, top)
        n_exceptions += int(indices.size)
        kept.append((indices, bits) if n_exceptions <= limit else None)
    return n_exceptions, max_count, kept


@given(
    st.integers(0, 2**32 - 1),
    st.lists(st.sampled_from(["right", "wrong", "bright", "noisy"]), min_size=1, max_size=6),
    st.sampled_from([None, np.uint8, np.uint16]),
)
def test_gain_counter_keeps_its_results_with_bounded_exception_lists(
    seed: int, kinds: list[str], dtype: type | None
) -> None:
    """The same counts, largest count, lists and survey as when every frame's exceptions were collected."""
    rng = np.random.default_rng(seed)
    gain = random_gain(rng, (40, 100))
    frames = []
    for kind in kinds:
        counts = rng.poisson(300.0 if kind == "bright" else 1.0, size=gain.shape)
        frame = normalised(counts, random_gain(rng, gain.shape) if kind == "wrong" else gain)
        if kind == "noisy":
            frame.reshape(-1)[rng.choice(frame.size, size=int(rng.integers(1, 4)))] = np.float32(0.3)
        frames.append(frame)
    outs = [None if dtype is None else np.empty(gain.shape, dtype) for _ in frames]
    counter = gain_module.GainCounter(gain, n_frames=len(frames), reference_name="g")
    for index, (frame, out) in enumerate(zip(frames, outs, strict=True)):
        counter.add(index, frame, out)
    old_outs = [None if dtype is None else np.empty(gain.shape, dtype) for _ in frames]
    n_exceptions, max_count, kept = _old_counter(gain, frames, old_outs)
    assert (counter.n_exceptions, counter.max_count) == (n_exceptions, max_count)
    for out, old in zip(outs, old_outs, strict=True):
        assert out is None or np.array_equal(out, old)
    try:
        survey = counter.survey()
    except RuntimeError:  # counts past uint8 counted into uint8: raised the same way as before
        assert dtype is np.uint8 and max_count > 255
        return
    assert survey.n_exceptions == n_exceptions and survey.max_count == max_count
    if survey.exceptions is not None:
        assert all(entry is not None for entry in kept)
        for (indices, bits), got_indices, got_bits in zip(
            kept, survey.exceptions.indices, survey.exceptions.bits, strict=True
        ):
            assert np.array_equal(indices, got_indices) and np.array_equal(bits, got_bits)
    else:
        assert n_exceptions > counter.limit or max_count > kernels.GAIN_COUNT_LIMIT


def _peak_bytes(run: Callable[[], object]) -> int:
    """Peak of memory NumPy and Python allocate while ``run`` runs (tracemalloc sees NumPy's arrays)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_wrong_gain_is_counted_without_a_whole_frame_of_exceptions(rng: np.random.Generator) -> None:
    """A frame under a wrong gain: nearly every value an exception (8 bytes a pixel if listed); not listed."""
    shape = (512, 512)
    gain, wrong = random_gain(rng, shape), random_gain(np.random.default_rng(99), shape)
    frame = normalised(rng.poisson(3.0, size=shape), gain)
    assert kernels.gain_exception_count(frame, wrong)[0] > 0.9 * frame.size
    counter = gain_module.GainCounter(wrong, n_frames=4, reference_name="wrong")
    out = np.empty(shape, np.uint8)
    counter.add(0, frame)  # its scratch counts (2 bytes a pixel) are made once
    counter.add(1, frame, out)  # (and the kernels compiled for uint8)
    # before: 2.0, 7.7 and 2.5 MB (8 bytes an exception; and scratch counts for exception_fraction)
    assert _peak_bytes(lambda: counter.add(2, frame)) < frame.size // 2
    assert _peak_bytes(lambda: counter.add(3, frame, out)) < frame.size // 2
    assert _peak_bytes(lambda: exception_fraction([frame], wrong)) < frame.size // 2
    assert counter.over_limit and counter.stored_dtype is None


# ---------------------------------------------------------------- estimation


def test_float32_gain_comes_back_exactly_without_exceptions(rng: np.random.Generator) -> None:
    gain = random_gain(rng)
    values = normalised(rng.poisson(1.0, size=(36, *SHAPE)), gain)
    estimate = finalize_gain(gain_partial_from_frames(list(values)))
    assert same_bits(estimate.gain, gain)
    assert estimate.n_exception == 0
    assert estimate.n_unhit == 0
    assert estimate.n_reliable == gain.size
    assert exception_fraction(list(values), estimate.gain) == 0.0


def test_pixels_that_never_saw_one_electron(rng: np.random.Generator) -> None:
    """Smallest value 2g or 3g (never a single electron): the search still finds a gain that fits."""
    gain = random_gain(rng)
    counts = rng.poisson(1.0, size=(30, *SHAPE))
    counts[:, :8, :] = rng.choice([0, 2, 3], size=(30, 8, SHAPE[1]))  # 2 and 3 electrons only
    counts[:, 8:16, :] = rng.choice([0, 3, 4, 5], size=(30, 8, SHAPE[1]))  # 3 or more only
    values = normalised(counts, gain)
    estimate = finalize_gain(gain_partial_from_frames(list(values)))
    assert estimate.n_exception == 0
    assert same_bits(estimate.gain[:8], gain[:8])  # v/2 is exact
    assert exception_fraction(list(values), estimate.gain) == 0.0  # 3g: some float32 near v/3 fits


def test_gains_near_multiples_of_each_other(rng: np.random.Generator) -> None:
    """Neighbouring gains that are (nearly) 2x or 3x each other, or 1 ulp apart, are kept apart."""
    base = np.float32(0.8)
    gain = np.empty(SHAPE, dtype=np.float32)
    gain[:, 0::4] = base
    gain[:, 1::4] = base * np.float32(2)
    gain[:, 2::4] = np.nextafter(base * np.float32(3), np.float32(10))
    gain[:, 3::4] = np.nextafter(base, np.float32(10))
    values = normalised(rng.poisson(1.0, size=(36, *SHAPE)), gain)
    estimate = finalize_gain(gain_partial_from_frames(list(values)))
    assert same_bits(estimate.gain, gain)
    assert estimate.n_exception == 0


def test_never_hit_dead_and_hot_pixels(rng: np.random.Generator) -> None:
    gain = random_gain(rng)
    gain[5, 7] = 0.0  # dead: always 0
    counts = rng.poisson(1.0, size=(30, *SHAPE))
    counts[:, 9, 11] = 0  # never hit
    counts[:, 20, 30] = rng.integers(60, 90, size=30)  # hot: many electrons every frame
    values = normalised(counts, gain)
    values[:, 40, 50] = np.float32(1234.5678)  # stuck value
    estimate = finalize_gain(gain_partial_from_frames(list(values)))
    assert estimate.status[5, 7] == kernels.GAIN_UNHIT
    assert estimate.status[9, 11] == kernels.GAIN_UNHIT
    assert estimate.gain[5, 7] == kernels.NEUTRAL_GAIN == estimate.gain[9, 11]
    assert estimate.status[20, 30] == kernels.GAIN_EXCEPTION
    assert estimate.status[40, 50] == kernels.GAIN_UNCONFIRMED
    assert estimate.n_unhit == 2
    assert estimate.n_exception == 1
    # only the hot pixel's values are exceptions, and they come back exactly
    fraction = exception_fraction(list(values), estimate.gain)
    assert 0 < fraction <= 30 / values.size
    assert same_bits(reproduced(values, estimate.gain), values)


def test_float64_gain_gives_exceptions_that_still_restore_exactly(rng: np.random.Generator) -> None:
    gain64 = rng.uniform(0.7, 1.4, size=SHAPE)
    values = (rng.poisson(0.3, size=(36, *SHAPE)) * gain64).astype(np.float32)
    estimate = finalize_gain(gain_partial_from_frames(list(values)))
    assert estimate.n_exception > 0
    fraction = exception_fraction(list(values), estimate.gain)
    assert 0 < fraction < MAX_EXCEPTION_FRACTION
    assert same_bits(reproduced(values, estimate.gain), values)


def test_partials_merge_in_any_order_and_pickle(rng: np.random.Generator) -> None:
    gain = random_gain(rng)
    values = normalised(rng.poisson(0.7, size=(24, *SHAPE)), gain)
    whole = gain_partial_from_frames(list(values))
    parts = [gain_partial_from_frames(list(values[i : i + 8])) for i in (0, 8, 16)]
    left = merge_gain_partials(merge_gain_partials(parts[0], parts[1]), parts[2])
    right = merge_gain_partials(parts[2], merge_gain_partials(parts[1], pickle.loads(pickle.dumps(parts[0]))))
    for merged in (left, right):
        assert np.array_equal(merged.kept, whole.kept)
        assert np.array_equal(merged.n_kept, whole.n_kept)
        assert np.array_equal(merged.n_hits, whole.n_hits)
        assert merged.n_frames == 24
    assert np.array_equal(
        parts[0].n_kept, gain_partial_from_frames(list(values[:8])).n_kept
    )  # inputs unchanged
    with pytest.raises(GainError, match="frame size"):
        merge_gain_partials(whole, gain_partial_from_frames([values[0][:10]]))


def test_partial_from_movie_samples_frames(tmp_path: Path, rng: np.random.Generator) -> None:
    gain = random_gain(rng)
    values = normalised(rng.poisson(1.0, size=(20, *SHAPE)), gain)
    path = write_mrc(tmp_path / "movie.mrc", values, mode=2, byte_order=">")
    partial = gain_partial_from_movie(path, max_frames=5)
    assert partial.n_frames == 5
    assert partial.sources == (str(path),)
    expected = gain_partial_from_frames([values[i] for i in sample_frame_indices(20, 5)])
    assert np.array_equal(partial.kept, expected.kept)
    assert gain_partial_from_movie(path).n_frames == 20
    counts_path = write_mrc(tmp_path / "counts.mrc", rng.poisson(1, size=(3, 4, 5)).astype(np.uint8), mode=0)
    with pytest.raises(GainError, match="float32"):
        gain_partial_from_movie(counts_path)


def test_sample_frame_indices() -> None:
    assert sample_frame_indices(5, None) == [0, 1, 2, 3, 4]
    assert sample_frame_indices(5, 10) == [0, 1, 2, 3, 4]
    assert sample_frame_indices(40, 4) == [0, 13, 26, 39]
    assert sample_frame_indices(40, 1) == [0]


# ---------------------------------------------------------------- exception lists


@given(
    st.lists(
        hnp.arrays(np.uint32, st.integers(0, 20), elements=st.integers(0, 6143), unique=True),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 2**32 - 1),
)
def test_exception_lists_round_trip(frames: list[np.ndarray], seed: int) -> None:
    rng = np.random.default_rng(seed)
    indices = tuple(np.sort(part).astype(np.uint32) for part in frames)
    bits = tuple(
        rng.integers(0, 2**32, size=part.size, dtype=np.uint64).astype(np.uint32) for part in indices
    )
    exceptions = GainExceptions(indices, bits)
    decoded = GainExceptions.decode(exceptions.encode(), n_frames=len(frames), n_pixels=6144, name="x.tif")
    assert decoded.n_exceptions == exceptions.n_exceptions
    for a, b in zip(decoded.indices + decoded.bits, exceptions.indices + exceptions.bits, strict=True):
        assert np.array_equal(a, b)


def test_damaged_exception_lists_are_refused() -> None:
    text = GainExceptions((np.array([3, 9], np.uint32),), (np.array([1, 2], np.uint32),)).encode()
    with pytest.raises(GainError, match="does not match"):
        GainExceptions.decode(text, n_frames=2, n_pixels=100, name="x.tif")
    with pytest.raises(GainError, match="damaged"):
        GainExceptions.decode(text, n_frames=1, n_pixels=5, name="x.tif")
    with pytest.raises(GainError, match="damaged"):
        GainExceptions.decode("not base64!", n_frames=1, n_pixels=5, name="x.tif")


# ---------------------------------------------------------------- classification


def test_classify_counts_gain_normalised_and_float(tmp_path: Path, rng: np.random.Generator) -> None:
    gain = random_gain(rng)
    counts = rng.poisson(1.0, size=(12, *SHAPE))
    plain = write_mrc(tmp_path / "plain.mrc", counts.astype(np.float32), mode=2)
    normal = write_mrc(tmp_path / "normal.mrc", normalised(counts, gain), mode=2)
    integrating = write_mrc(
        tmp_path / "float.mrc", (rng.standard_normal((12, *SHAPE)) * 20 + 100).astype(np.float32), mode=2
    )
    integers = write_mrc(tmp_path / "int16.mrc", counts.astype(np.int16), mode=1)
    assert classify_movie(plain).kind == "counts"
    assert classify_movie(plain, gain=gain).kind == "counts"  # never apply a gain to counts
    assert classify_movie(integers).kind == "counts"
    assert classify_movie(normal).kind == "gain-normalised"
    assert classify_movie(normal, gain=gain).kind == "gain-normalised"
    assert classify_movie(integrating).kind == "float"
    other = random_gain(np.random.default_rng(99))
    wrong = classify_movie(normal, gain=other)
    assert wrong.kind == "float"
    assert "not this movie's gain" in wrong.reason
    assert wrong.exception_fraction is not None and wrong.exception_fraction > 0.3


def test_classify_refuses_a_sample_too_sparse_to_confirm(tmp_path: Path, rng: np.random.Generator) -> None:
    gain = random_gain(rng)
    values = normalised(rng.poisson(0.002, size=(4, *SHAPE)), gain)
    values[0, 0, 0] = gain[0, 0]  # at least one hit, never confirmed
    path = write_mrc(tmp_path / "sparse.mrc", values, mode=2)
    kind = classify_movie(path, n_sample_frames=2)
    assert kind.kind == "float"
    assert "too few pixels" in kind.reason
    assert kind.n_sampled_frames == 4  # it looked at every frame before giving up


def test_classify_grows_a_sparse_sample(tmp_path: Path, rng: np.random.Generator) -> None:
    gain = random_gain(rng)
    values = normalised(rng.poisson(0.05, size=(64, *SHAPE)), gain)
    path = write_mrc(tmp_path / "sparse.mrc", values, mode=2)
    kind = classify_movie(path, n_sample_frames=2)
    assert kind.kind == "gain-normalised"
    assert kind.n_sampled_frames > 2


def test_set_estimate_skips_counts_and_flags_another_session(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    gain = random_gain(rng)
    other = random_gain(np.random.default_rng(7))
    paths = []
    for index in range(3):
        values = normalised(rng.poisson(1.0, size=(12, *SHAPE)), gain)
        paths.append(write_mrc(tmp_path / f"a{index}.mrc", values, mode=2))
    plain = write_mrc(tmp_path / "plain.mrc", rng.poisson(1.0, size=(6, *SHAPE)).astype(np.float32), mode=2)
    stranger = write_mrc(tmp_path / "b.mrc", normalised(rng.poisson(1.0, size=(12, *SHAPE)), other), mode=2)
    result = estimate_set_gain([*paths, plain], max_frames=12)
    assert result.used == tuple(str(p) for p in paths)
    assert [p for p, _ in result.skipped] == [str(plain)]
    assert result.misfits == ()
    assert same_bits(result.estimate.gain, gain)
    # a movie of another gain conflicts with the others: it is left out and never spoils the estimate
    mixed = estimate_set_gain([*paths, stranger])
    assert mixed.used == tuple(str(p) for p in paths)
    assert [p for p, _ in mixed.misfits] == [str(stranger)] and mixed.misfits[0][1] > 0.5
    assert same_bits(mixed.estimate.gain, gain)
    assert classify_movie(stranger, gain=result.estimate.gain).kind == "float"
    # a movie normalised with the gain upside down joins in its orientation
    flipped = write_mrc(
        tmp_path / "f.mrc", normalised(rng.poisson(1.0, size=(12, *SHAPE)), gain[::-1]), mode=2
    )
    with_flipped = estimate_set_gain([flipped, *paths])
    assert set(with_flipped.used) == {str(flipped), *map(str, paths)} and not with_flipped.misfits
    assert same_bits(with_flipped.estimate.gain, gain) or same_bits(with_flipped.estimate.gain, gain[::-1])
    with pytest.raises(GainError, match="none of the 1 movies"):
        estimate_set_gain([plain])


def test_module_docstring_names_the_api() -> None:
    doc = gain_module.__doc__ or ""
    for name in (
        "gain_partial_from_movie",
        "merge_gain_partials",
        "finalize_gain",
        "write_gain_reference",
        "classify_movie",
        "convert_movie",
    ):
        assert name in doc
        if name != "convert_movie":
            assert callable(getattr(gain_module, name))
