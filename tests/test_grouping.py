"""Gain grouping's steps (empcompress.gain.grouping) and the recorded gain transform (gainref)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from mrc_factory import write_mrc

from empcompress.errors import GainError, TruncatedFileError
from empcompress.gain import estimate as estimate_module
from empcompress.gain import finalize_gain, gain_partial_from_movie, merge_gain_partials
from empcompress.gain.estimate import (
    MAX_BAND_PIXELS,
    GainBand,
    GainEstimate,
    assemble_gain_estimate,
    estimate_gain,
    gain_bands,
)
from empcompress.gain.grouping import (
    AGREE,
    CONFLICT,
    UNKNOWN,
    Comparison,
    choose_seed,
    compare_estimates,
    fit_gain,
    fit_reference,
    group_estimate,
    inverse_orientation,
    movie_estimate,
    movie_partial,
    orient_partial,
    root_frame_shape,
)
from empcompress.gainref import (
    ORIENTATION_CODES,
    SCALE_CODES,
    TRANSFORMS,
    GainTransform,
    write_gain_reference,
)
from empcompress.mrc import MrcMovie
from empcompress.pipeline.gain_groups import _deepest_common_folder

SHAPE = (40, 40)  # square: the quarter turns and transposes apply
CODES = tuple(ORIENTATION_CODES.values())


def _orient(array: np.ndarray, code: str) -> np.ndarray:
    return GainTransform(code).apply(array)


@pytest.fixture
def gain() -> np.ndarray:
    return np.random.default_rng(21).uniform(0.7, 1.4, SHAPE).astype(np.float32)


def _movie(path: Path, gain: np.ndarray, *, seed: int, n_frames: int = 12, dose: float = 1.0) -> Path:
    counts = np.random.default_rng(seed).poisson(dose, size=(n_frames, *gain.shape)).astype(np.float32)
    write_mrc(path, (counts * gain[None]).astype(np.float32), mode=2)
    return path


# ---------------------------------------------------------------- the transform a record stores


@given(
    orientation=st.sampled_from(CODES),
    scale=st.sampled_from(tuple(SCALE_CODES.values())),
    reciprocal=st.booleans(),
    ny=st.integers(1, 6),
    nx=st.integers(1, 6),
)
@settings(max_examples=80, deadline=None)
def test_a_transform_maps_a_file_of_its_file_shape_to_the_frame_shape(
    orientation: str, scale: str, reciprocal: bool, ny: int, nx: int
) -> None:
    frame_shape = (2 * ny, 2 * nx)
    transform = GainTransform(orientation, scale, reciprocal)
    data = np.random.default_rng(ny * 7 + nx).uniform(0.5, 2, transform.file_shape(frame_shape))
    assert transform.apply(data.astype(np.float32)).shape == frame_shape


def test_each_orientation_matches_its_table_entry_and_relion_numbers() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for name, rot, flip, function in TRANSFORMS:
        transform = GainTransform(ORIENTATION_CODES[name])
        assert np.array_equal(transform.apply(a), function(a))
        assert (transform.relion_gain_rot, transform.relion_gain_flip) == (rot, flip)
        back = GainTransform(inverse_orientation(transform.orientation))
        assert np.array_equal(back.apply(transform.apply(a)), a)


def test_unknown_transform_codes_are_refused() -> None:
    with pytest.raises(GainError):
        GainTransform("sideways")
    with pytest.raises(GainError):
        GainTransform("identity", "bin3")


# ---------------------------------------------------------------- comparing and seeding


@pytest.mark.parametrize("code", CODES)
def test_two_movies_of_one_gain_agree_in_the_orientation_between_them(
    tmp_path: Path, gain: np.ndarray, code: str
) -> None:
    first = movie_estimate(_movie(tmp_path / "a.mrc", gain, seed=1), n_sample_frames=4)
    second = movie_estimate(_movie(tmp_path / "b.mrc", _orient(gain, code), seed=2), n_sample_frames=4)
    comparison = compare_estimates(first, second, indices=(0, 1))
    assert comparison.verdict == AGREE and comparison.orientation == code
    assert comparison.n_overlap_pixels > 100


def test_movies_of_different_gains_conflict(tmp_path: Path, gain: np.ndarray) -> None:
    other = np.random.default_rng(99).uniform(0.7, 1.4, SHAPE).astype(np.float32)
    first = movie_estimate(_movie(tmp_path / "a.mrc", gain, seed=1), n_sample_frames=4)
    second = movie_estimate(_movie(tmp_path / "b.mrc", other, seed=2), n_sample_frames=4)
    assert compare_estimates(first, second).verdict == CONFLICT


def test_sparse_samples_cannot_tell(tmp_path: Path, gain: np.ndarray) -> None:
    first = movie_estimate(_movie(tmp_path / "a.mrc", gain, seed=1, n_frames=2, dose=0.02), n_sample_frames=2)
    second = movie_estimate(
        _movie(tmp_path / "b.mrc", gain, seed=2, n_frames=2, dose=0.02), n_sample_frames=2
    )
    assert compare_estimates(first, second).verdict == UNKNOWN


def test_the_seed_is_the_largest_agreeing_set_and_leaves_conflicts_out() -> None:
    comparisons = [
        Comparison(0, 1, AGREE, "identity", 500, 0.97),
        Comparison(0, 2, AGREE, "flip-rows", 500, 0.97),
        Comparison(1, 2, AGREE, "flip-rows", 500, 0.97),
        Comparison(0, 3, CONFLICT, "identity", 500, 0.0),
        Comparison(1, 3, CONFLICT, "identity", 500, 0.0),
        Comparison(2, 3, CONFLICT, "identity", 500, 0.0),
        Comparison(3, 4, AGREE, "rotate-90", 500, 0.97),
    ]
    seed = choose_seed(5, comparisons)
    assert dict(seed.members) == {0: "identity", 1: "identity", 2: "flip-rows"}
    assert {index for index, _ in seed.left_out} == {3, 4}
    assert "conflict" in dict(seed.left_out)[3]


def test_orientations_compose_along_agreements() -> None:
    # 1 = rotate-90(0), 2 = rotate-90(1): so 2 = rotate-180(0)
    seed = choose_seed(
        3, [Comparison(0, 1, AGREE, "rotate-90", 500, 1.0), Comparison(1, 2, AGREE, "rotate-90", 500, 1.0)]
    )
    assert dict(seed.members) == {0: "identity", 1: "rotate-90", 2: "rotate-180"}


def test_with_no_agreement_at_all_every_movie_without_a_conflict_is_merged() -> None:
    seed = choose_seed(3, [Comparison(0, 1, UNKNOWN, "identity", 0, 0.0)])
    assert dict(seed.members) == {0: "identity", 1: "identity", 2: "identity"}


# ---------------------------------------------------------------- one odd movie does not spoil a group


def test_a_flipped_movie_merged_in_its_orientation_gives_the_exact_gain(
    tmp_path: Path, gain: np.ndarray
) -> None:
    paths = [_movie(tmp_path / f"m{i}.mrc", gain, seed=i) for i in range(3)]
    paths.append(_movie(tmp_path / "flipped.mrc", gain[::-1].copy(), seed=9))
    estimates = [movie_estimate(p, n_sample_frames=4) for p in paths]
    comparisons = [
        compare_estimates(estimates[i], estimates[j], indices=(i, j))
        for i in range(4)
        for j in range(i + 1, 4)
    ]
    seed = choose_seed(4, comparisons)
    assert dict(seed.members)[3] == "flip-rows"
    partials = [movie_partial(paths[i], n_sample_frames=12, orientation=o) for i, o in seed.members]
    merged = partials[0]
    for partial in partials[1:]:
        merged = merge_gain_partials(merged, partial)
    estimate = finalize_gain(merged)
    assert np.array_equal(estimate.gain, gain)
    fits = [fit_gain(p, estimate.gain, name="g") for p in paths]
    assert all(fit.fits for fit in fits)
    assert [fit.transform.orientation for fit in fits if fit.transform] == ["identity"] * 3 + ["flip-rows"]


def test_orienting_a_partial_twice_by_inverses_is_the_same_partial(tmp_path: Path, gain: np.ndarray) -> None:
    partial = movie_partial(_movie(tmp_path / "a.mrc", gain, seed=1), n_sample_frames=4)
    for code in CODES:
        back = orient_partial(orient_partial(partial, code), inverse_orientation(code))
        assert np.array_equal(back.kept, partial.kept) and np.array_equal(back.n_hits, partial.n_hits)


def test_a_reference_of_another_gain_does_not_fit(tmp_path: Path, gain: np.ndarray) -> None:
    other = np.random.default_rng(5).uniform(0.7, 1.4, SHAPE).astype(np.float32)
    movie = _movie(tmp_path / "a.mrc", gain, seed=1)
    write_gain_reference(tmp_path / "right.mrc", _orient(gain, "transpose"))
    write_gain_reference(tmp_path / "wrong.mrc", other)
    right = fit_reference(movie, tmp_path / "right.mrc")
    assert right.fits and right.transform == GainTransform("transpose")
    wrong = fit_reference(movie, tmp_path / "wrong.mrc")
    assert not wrong.fits and wrong.transform is None and "orientation" in wrong.reason


def test_the_deepest_common_folder() -> None:
    assert _deepest_common_folder(["a/b/c/x.tif", "a/b/d/y.tif"]) == "a/b"
    assert _deepest_common_folder(["a/x.tif", "b/y.tif"]) == ""
    assert _deepest_common_folder(["a/b/x.tif"]) == "a/b"
    assert _deepest_common_folder(["x.tif", "a/y.tif"]) == ""


def test_merging_into_the_first_partial_equals_merging_into_a_new_one(
    tmp_path: Path, gain: np.ndarray
) -> None:
    first = movie_partial(_movie(tmp_path / "a.mrc", gain, seed=1), n_sample_frames=6)
    second = movie_partial(_movie(tmp_path / "b.mrc", gain, seed=2), n_sample_frames=6)
    fresh = merge_gain_partials(first, second)
    copy = orient_partial(orient_partial(first, "flip-rows"), "flip-rows")  # an independent copy
    merged = merge_gain_partials(copy, second, into_first=True)
    assert merged.kept is copy.kept  # no third partial
    for name in ("kept", "n_kept", "n_hits", "flags"):
        assert np.array_equal(getattr(merged, name), getattr(fresh, name)), name
    again = merge_gain_partials(merged, second, into_first=True)  # a retried merge changes no value
    assert np.array_equal(again.kept, fresh.kept) and np.array_equal(again.n_kept, fresh.n_kept)


# ---------------------------------------------------------------- by row bands (issue 10)


def _rows(bands: tuple[GainBand, ...]) -> list[tuple[int, int]]:
    return [band.rows for band in bands]


def test_bands_cover_the_gain_and_keep_each_band_small() -> None:
    assert _rows(gain_bands((4096, 4096))) == [(0, 4096)]  # as big as one band gets
    assert _rows(gain_bands((40, 40))) == [(0, 40)]
    superres = gain_bands((8184, 11520))
    assert len(superres) == 6
    assert all(0 < (band.stop - band.start) * 11520 <= MAX_BAND_PIXELS for band in superres)
    assert {band.frame_shape for band in superres} == {(8184, 11520)}
    assert _rows(gain_bands((10, 3), n_bands=4)) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert _rows(gain_bands((3, 5), n_bands=9)) == [(0, 1), (1, 2), (2, 3)]  # at most one a row
    assert _rows(gain_bands((1, 20_000_000))) == [(0, 1)]
    with pytest.raises(ValueError):
        gain_bands((10, 10), n_bands=0)


def _random_movie(path: Path, gain: np.ndarray, *, rng: np.random.Generator, n_frames: int) -> Path:
    """Poisson counts x gain, with a few values no gain gives (negative, NaN, -0.0, inf)."""
    counts = rng.poisson(0.8, size=(n_frames, *gain.shape)).astype(np.float32)
    values = (counts * gain[None]).astype(np.float32)
    odd = rng.random(values.shape) < 0.02
    values[odd] = rng.choice(np.array([-1.5, np.nan, -0.0, np.inf, 3.3], dtype=np.float32), size=odd.sum())
    return write_mrc(path, values, mode=2, byte_order=rng.choice(["<", ">"]))


def _assert_same_estimate(banded: GainEstimate, whole: GainEstimate) -> None:
    assert banded.gain.shape == whole.gain.shape
    assert np.array_equal(banded.gain.view(np.uint32), whole.gain.view(np.uint32))
    assert np.array_equal(banded.status, whole.status)
    assert (banded.n_reliable, banded.n_unconfirmed, banded.n_exception, banded.n_unhit) == (
        whole.n_reliable,
        whole.n_unconfirmed,
        whole.n_exception,
        whole.n_unhit,
    )
    assert (banded.n_frames, banded.sources) == (whole.n_frames, whole.sources)


@contextlib.contextmanager
def _one_kernel_thread() -> Iterator[None]:
    """Tiny frames: starting the kernels' threads costs more than their work (10x on a busy machine)."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


@given(
    ny=st.integers(1, 9),
    nx=st.integers(1, 9),
    n_bands=st.integers(1, 10),
    orientations=st.lists(st.sampled_from(CODES), min_size=1, max_size=3),
    n_frames=st.integers(1, 5),
    n_sample_frames=st.sampled_from([None, 1, 3]),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=150, deadline=None)
def test_a_gain_estimated_by_bands_is_the_unbanded_gain_bit_for_bit(
    ny: int,
    nx: int,
    n_bands: int,
    orientations: list[str],
    n_frames: int,
    n_sample_frames: int | None,
    seed: int,
) -> None:
    shapes = {root_frame_shape((ny, nx), code) for code in orientations}
    assume(len(shapes) == 1)  # a group's movies all turn into one shape
    (frame_shape,) = shapes
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.7, 1.4, (ny, nx)).astype(np.float32)
    with tempfile.TemporaryDirectory() as scratch, _one_kernel_thread():
        paths = [
            _random_movie(Path(scratch) / f"m{index}.mrc", gain, rng=rng, n_frames=n_frames)
            for index in range(len(orientations))
        ]
        members = list(zip(paths, orientations, strict=True))
        # unbanded: each movie's whole partial, turned, merged, finalized (as before issue 10)
        merged = None
        for path, code in members:
            partial = movie_partial(path, n_sample_frames=n_sample_frames, orientation=code)
            merged = partial if merged is None else merge_gain_partials(merged, partial)
        assert merged is not None
        whole = finalize_gain(merged)
        # banded, serially (the gain estimate command) and step by step (as the Dask tasks run)
        _assert_same_estimate(
            group_estimate(members, n_sample_frames=n_sample_frames, n_bands=n_bands), whole
        )
        bands = []
        for band in gain_bands(frame_shape, n_bands=n_bands):
            partials = [
                movie_partial(p, n_sample_frames=n_sample_frames, orientation=c, band=band)
                for p, c in members
            ]
            while len(partials) > 1:
                partials = [merge_gain_partials(partials[0], partials[1], into_first=True), *partials[2:]]
            bands.append(finalize_gain(partials[0]))
        _assert_same_estimate(assemble_gain_estimate(bands, frame_shape=frame_shape), whole)
        # one movie's own estimate
        own = finalize_gain(gain_partial_from_movie(paths[0], max_frames=n_sample_frames))
        _assert_same_estimate(estimate_gain([paths[0]], max_frames=n_sample_frames, n_bands=n_bands), own)


def test_a_movie_estimate_by_bands_is_its_unbanded_estimate(
    tmp_path: Path, gain: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _movie(tmp_path / "a.mrc", gain, seed=1, n_frames=40, dose=0.02)  # sparse: the sample grows
    whole = movie_estimate(path, n_sample_frames=2)
    monkeypatch.setattr(estimate_module, "MAX_BAND_PIXELS", 7 * SHAPE[1])  # 6 bands
    assert len(gain_bands(SHAPE)) == 6
    _assert_same_estimate(movie_estimate(path, n_sample_frames=2), whole)


def test_assembling_refuses_bands_that_do_not_make_the_gain(tmp_path: Path, gain: np.ndarray) -> None:
    path = _movie(tmp_path / "a.mrc", gain, seed=1)
    bands = [
        finalize_gain(gain_partial_from_movie(path, rows=band.rows)) for band in gain_bands(SHAPE, n_bands=3)
    ]
    _assert_same_estimate(
        assemble_gain_estimate(bands, frame_shape=SHAPE), finalize_gain(gain_partial_from_movie(path))
    )
    with pytest.raises(GainError, match="cover 27 of the 40 rows"):
        assemble_gain_estimate(bands[:2], frame_shape=SHAPE)
    with pytest.raises(GainError, match="does not fit"):
        assemble_gain_estimate([*bands, bands[0]], frame_shape=SHAPE)
    with pytest.raises(GainError, match="does not fit"):
        assemble_gain_estimate(bands, frame_shape=(40, 41))
    other = finalize_gain(gain_partial_from_movie(path, rows=(27, 40), max_frames=3))
    with pytest.raises(GainError, match="different frames"):
        assemble_gain_estimate([*bands[:2], other], frame_shape=SHAPE)
    with pytest.raises(GainError, match="no bands"):
        assemble_gain_estimate([], frame_shape=SHAPE)


def test_movies_of_two_frame_sizes_are_not_estimated_together(tmp_path: Path, gain: np.ndarray) -> None:
    first = _movie(tmp_path / "a.mrc", gain, seed=1)
    taller = _movie(tmp_path / "b.mrc", np.vstack([gain, gain]), seed=2)
    with pytest.raises(GainError, match="one frame size"):
        estimate_gain([first, taller])
    with pytest.raises(GainError, match="one frame size"):
        group_estimate([(first, "identity"), (taller, "identity")], n_sample_frames=None, n_bands=2)


@pytest.mark.parametrize(("mode", "byte_order", "nx"), [(2, "<", 7), (2, ">", 7), (101, "<", 7), (6, ">", 4)])
def test_reading_rows_of_a_frame_gives_those_rows_of_the_frame(
    tmp_path: Path, mode: int, byte_order: str, nx: int
) -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 16, size=(3, 5, nx)).astype(np.float32 if mode == 2 else np.uint16)
    path = write_mrc(
        tmp_path / "m.mrc",
        values.astype(np.uint8) if mode == 101 else values,
        mode=mode,
        byte_order=byte_order,
    )
    with MrcMovie(path) as movie:
        for index in range(3):
            frame = movie.read_frame(index).copy()
            for start, stop in [(0, 5), (1, 2), (2, 5), (4, 5)]:
                assert np.array_equal(movie.read_rows(index, start, stop), frame[start:stop])
        buffer = np.empty(2 * (movie.header.frame_size_bytes // 5), dtype=np.uint8)
        assert np.array_equal(movie.read_rows(2, 3, 5, out=buffer), movie.read_frame(2)[3:5])
        for index, start, stop in [(3, 0, 1), (-1, 0, 1), (0, 2, 2), (0, 3, 6), (0, -1, 2)]:
            with pytest.raises(IndexError):
                movie.read_rows(index, start, stop)
        with pytest.raises(ValueError, match="buffer"):
            movie.read_rows(0, 0, 1, out=buffer)


def test_reading_rows_of_a_truncated_movie_says_so(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "m.mrc", np.ones((2, 4, 4), dtype=np.float32), mode=2)
    with MrcMovie(path) as movie:
        with open(path, "r+b") as handle:  # our own test file, cut after it was opened
            handle.truncate(path.stat().st_size - 8)
        with pytest.raises(TruncatedFileError, match="rows 2:4 of frame 1"):
            movie.read_rows(1, 2, 4)
