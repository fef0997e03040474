"""Gain grouping's steps (empcompress.gain.grouping) and the recorded gain transform (gainref)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mrc_factory import write_mrc

from empcompress.errors import GainError
from empcompress.gain import finalize_gain, merge_gain_partials
from empcompress.gain.grouping import (
    AGREE,
    CONFLICT,
    UNKNOWN,
    Comparison,
    choose_seed,
    compare_estimates,
    fit_gain,
    fit_reference,
    inverse_orientation,
    movie_estimate,
    movie_partial,
    orient_partial,
)
from empcompress.gainref import (
    ORIENTATION_CODES,
    SCALE_CODES,
    TRANSFORMS,
    GainTransform,
    write_gain_reference,
)
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
