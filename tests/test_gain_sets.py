"""A set's gain (empcompress.gain.sets) and its seed comparison on scratch files (gain.set_compare).

The comparison of the sampled movies' own estimates moved from memory (every
estimate held, ``compare_estimates`` on each pair) to scratch files read by row
bands. These tests hold it to the in-memory algorithm: the same comparisons on
any estimates, and the same decisions (seed, members, orientations, misfits)
of ``estimate_set_gain`` as the in-memory version written out below.
"""

from __future__ import annotations

import gc
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mrc_factory import write_mrc

from empcompress import kernels
from empcompress.errors import GainError
from empcompress.gain import estimate_set_gain
from empcompress.gain import grouping as grouping_module
from empcompress.gain.classify import classify_movie
from empcompress.gain.estimate import GainEstimate
from empcompress.gain.grouping import (
    MIN_OVERLAP_PIXELS,
    choose_seed,
    compare_estimates,
    fit_gain,
    group_estimate,
    majority_frame,
    movie_estimate,
)
from empcompress.gain.set_compare import EstimateFiles, compare_sampled_estimates, scratch_bytes_needed
from empcompress.gain.sets import SEED_SAMPLE_MOVIES, SetEstimate, _sample_exception_fraction
from empcompress.gainref import ORIENTATION_CODES, GainTransform

CODES = tuple(ORIENTATION_CODES.values())


def _orient(array: np.ndarray, code: str) -> np.ndarray:
    return np.ascontiguousarray(GainTransform(code).apply(array))


@pytest.fixture(autouse=True)
def _one_kernel_thread() -> Iterator[None]:
    """Tiny frames: starting the kernels' threads costs more than their work."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


# ---------------------------------------------------------------- the comparison on scratch files


def _estimate(gain: np.ndarray, status: np.ndarray) -> GainEstimate:
    counts = [int(np.count_nonzero(status == code)) for code in range(4)]
    return GainEstimate(
        gain=np.ascontiguousarray(gain, dtype=np.float32),
        status=np.ascontiguousarray(status, dtype=np.uint8),
        n_reliable=counts[kernels.GAIN_RELIABLE],
        n_unconfirmed=counts[kernels.GAIN_UNCONFIRMED],
        n_exception=counts[kernels.GAIN_EXCEPTION],
        n_unhit=counts[kernels.GAIN_UNHIT],
        n_frames=1,
    )


@st.composite
def related_estimates(draw: st.DrawFn) -> list[GainEstimate]:
    """1-5 estimates: turns of one gain (or another), partly changed and confirmed, some of another size."""
    square = draw(st.booleans())
    ny = draw(st.integers(15, 30))  # at least MIN_OVERLAP_PIXELS pixels (when most are confirmed)
    nx = ny if square else draw(st.integers(14, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    base = rng.uniform(0.5, 2.0, (ny, nx)).astype(np.float32)
    estimates = []
    for _ in range(draw(st.integers(1, 5))):
        shape_kind = draw(st.sampled_from(["same"] * 5 + ["other"]))
        if shape_kind == "other":
            gain = rng.uniform(0.5, 2.0, (ny + 1, nx)).astype(np.float32)
        else:
            gain = _orient(base, draw(st.sampled_from(CODES if square else CODES[:4])))
        changed = rng.random(gain.shape) < draw(st.sampled_from([0.0, 0.0, 0.02, 0.05, 0.1, 0.3, 0.5, 1.0]))
        gain = gain.copy()
        gain[changed] = (gain[changed] * np.float32(1.25)).astype(np.float32)
        reliable = draw(st.sampled_from([0.3, 0.8, 0.95, 1.0]))
        status = rng.choice(
            np.array(
                [kernels.GAIN_RELIABLE, kernels.GAIN_UNHIT, kernels.GAIN_UNCONFIRMED, kernels.GAIN_EXCEPTION]
            ),
            size=gain.shape,
            p=[reliable, (1 - reliable) / 3, (1 - reliable) / 3, (1 - reliable) / 3],
        )
        if draw(st.booleans()):  # gains of pixels not confirmed are anything: -0.0, NaN, 1.0
            loose = status != kernels.GAIN_RELIABLE
            gain[loose] = rng.choice(
                np.array([-0.0, np.nan, 1.0, 0.0], dtype=np.float32), size=int(loose.sum())
            )
        estimates.append(_estimate(gain, status))
    return estimates


@given(estimates=related_estimates(), rows_per_band=st.integers(1, 30))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_comparing_on_scratch_files_by_bands_gives_the_in_memory_comparisons(
    tmp_path: Path, estimates: list[GainEstimate], rows_per_band: int
) -> None:
    """Every pair in all 8 orientations (4 for non-square), any band height: equal Comparisons."""
    expected = [
        compare_estimates(estimates[i], estimates[j], indices=(i, j))
        for i in range(len(estimates))
        for j in range(i + 1, len(estimates))
    ]
    nx = estimates[0].gain.shape[1]
    per_row = nx * (len(estimates) * 4 * 5 + 2)  # the buffer's model (4 regions for square frames)
    with EstimateFiles(
        [e.gain.shape for e in estimates], scratch_dir=tmp_path, buffer_bytes=rows_per_band * per_row
    ) as files:
        for estimate in estimates:
            files.add(estimate)
        assert files.compare() == expected
    assert list(tmp_path.iterdir()) == []  # no scratch file has a name


def test_the_comparisons_cover_every_verdict_and_orientation(tmp_path: Path) -> None:
    """The property test above is not vacuous: agree in each orientation, conflict and unknown all occur."""
    rng = np.random.default_rng(5)
    base = rng.uniform(0.5, 2.0, (20, 20)).astype(np.float32)
    reliable = np.full(base.shape, kernels.GAIN_RELIABLE, dtype=np.uint8)
    turned = [_estimate(_orient(base, code), reliable) for code in CODES]
    other = _estimate(rng.uniform(0.5, 2.0, base.shape).astype(np.float32), reliable)
    sparse = reliable.copy()
    sparse.reshape(-1)[MIN_OVERLAP_PIXELS - 1 :] = kernels.GAIN_UNHIT
    thin = _estimate(base, sparse)
    estimates = [turned[0], *turned[1:], other, thin]
    with EstimateFiles([e.gain.shape for e in estimates], scratch_dir=tmp_path, buffer_bytes=1) as files:
        for estimate in estimates:
            files.add(estimate)
        comparisons = files.compare()
    first = {c.second: c for c in comparisons if c.first == 0}
    for index, code in enumerate(CODES[1:], start=1):
        assert (first[index].verdict, first[index].orientation) == (grouping_module.AGREE, code)
    assert first[len(CODES)].verdict == grouping_module.CONFLICT
    assert first[len(CODES) + 1].verdict == grouping_module.UNKNOWN


def test_scratch_space_is_checked_before_anything_is_written(tmp_path: Path) -> None:
    assert scratch_bytes_needed([(8184, 11520)] * 8) == 8 * 4 * 8184 * 11520
    assert scratch_bytes_needed([(4096, 4096)]) == 2 * 4 * 4096 * 4096  # square: transposed too
    with pytest.raises(GainError, match="GB free"):
        EstimateFiles([(1 << 20, 1 << 20)] * 8, scratch_dir=tmp_path)
    with pytest.raises(GainError, match="not a directory"):
        EstimateFiles([(4, 4)], scratch_dir=tmp_path / "missing")
    assert list(tmp_path.iterdir()) == []


def test_a_reliable_pixel_of_gain_zero_is_refused(tmp_path: Path) -> None:
    """The packed form marks unconfirmed pixels with 0 bits: a reliable +0.0 gain cannot be kept."""
    gain = np.ones((4, 5), dtype=np.float32)
    gain[1, 2] = 0.0
    status = np.full(gain.shape, kernels.GAIN_RELIABLE, dtype=np.uint8)
    with (
        EstimateFiles([gain.shape], scratch_dir=tmp_path) as files,
        pytest.raises(GainError, match=r"\+0\.0"),
    ):
        files.add(_estimate(gain, status))


# ---------------------------------------------------------------- the set's decisions, against the old ones


def _in_memory_set_gain(
    paths: list[str], *, max_frames: int | None = None, n_sample_frames: int = 8
) -> SetEstimate:
    """``estimate_set_gain`` as it was: every sampled movie's own estimate held while comparing."""
    candidates, skipped = [], []
    for path in paths:
        kind = classify_movie(path, n_sample_frames=n_sample_frames)
        if kind.kind != "gain-normalised":
            skipped.append((str(path), f"{kind.kind}: {kind.reason}"))
        else:
            candidates.append(str(path))
    if not candidates:
        raise GainError(
            f"none of the {len(paths)} movies is gain-normalised; no gain to estimate "
            f"({'; '.join(f'{p}: {r}' for p, r in skipped[:3])})"
        )
    n_sample = min(len(candidates), SEED_SAMPLE_MOVIES)
    sample = [candidates[int(i * len(candidates) / n_sample)] for i in range(n_sample)]
    estimates = [movie_estimate(path, n_sample_frames=n_sample_frames) for path in sample]
    comparisons = [
        compare_estimates(estimates[i], estimates[j], indices=(i, j))
        for i in range(n_sample)
        for j in range(i + 1, n_sample)
    ]
    seed = choose_seed(n_sample, comparisons)
    oriented = {sample[index]: orientation for index, orientation in majority_frame(seed.members)}
    seed_gain = group_estimate(list(oriented.items()), n_sample_frames=max_frames).gain
    for path in candidates:
        if path in oriented:
            continue
        fit = fit_gain(path, seed_gain, name="the seed's gain")
        if fit.fits and fit.transform is not None and fit.transform.scale == "same":
            oriented[path] = fit.transform.orientation
    used = [path for path in candidates if path in oriented]
    estimate = group_estimate([(path, oriented[path]) for path in used], n_sample_frames=max_frames)
    misfits = [
        (path, _sample_exception_fraction(path, estimate.gain, n_sample_frames))
        for path in candidates
        if path not in oriented
    ]
    return SetEstimate(estimate, tuple(used), tuple(skipped), tuple(misfits))


def _write_set(
    directory: Path, rng: np.random.Generator, movies: list[tuple[str, str, float]], shape: tuple[int, int]
) -> list[str]:
    """Movies of (which gain: "a"/"b"/"counts", orientation, dose), 6 frames each."""
    gains = {name: rng.uniform(0.6, 1.6, shape).astype(np.float32) for name in ("a", "b")}
    paths = []
    for index, (which, code, dose) in enumerate(movies):
        counts = rng.poisson(dose, size=(6, *shape)).astype(np.float32)
        values = (
            counts if which == "counts" else (counts * _orient(gains[which], code)[None]).astype(np.float32)
        )
        paths.append(str(write_mrc(directory / f"m{index}.mrc", values, mode=2)))
    return paths


@given(
    movies=st.lists(
        st.tuples(
            st.sampled_from(["a", "a", "a", "b", "counts"]),
            st.sampled_from(CODES),
            st.sampled_from([0.05, 1.0, 1.0, 2.0]),
        ),
        min_size=2,
        max_size=10,
    ),
    square=st.booleans(),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_a_set_gain_makes_the_in_memory_decisions(
    tmp_path_factory: pytest.TempPathFactory, movies: list[tuple[str, str, float]], square: bool, seed: int
) -> None:
    """Seed, members, orientations, misfits, the gain: the in-memory algorithm's, in all 8 orientations."""
    shape = (24, 24) if square else (20, 28)
    if not square:  # quarter turns and transposes change the shape: a set of one frame size keeps the others
        movies = [(which, code, dose) for which, code, dose in movies if code in CODES[:4]] or [
            ("a", "identity", 1.0)
        ]
    directory = tmp_path_factory.mktemp("set")
    paths = _write_set(directory, np.random.default_rng(seed), movies, shape)
    scratch = tmp_path_factory.mktemp("scratch")
    try:
        expected = _in_memory_set_gain(paths)
    except GainError as error:  # nothing gain-normalised, or a seed of no movie: the same error
        with pytest.raises(GainError) as raised:
            estimate_set_gain(paths, scratch_dir=scratch)
        assert str(raised.value) == str(error)
        event("no gain")
        return
    result = estimate_set_gain(paths, scratch_dir=scratch)
    sampled_all = len(paths) <= SEED_SAMPLE_MOVIES
    event(f"{'all' if sampled_all else 'some'} sampled; misfits: {bool(result.misfits)}")
    event(f"orientations used: {len({code for which, code, _ in movies if which == 'a'})}")
    assert (result.used, result.skipped, result.misfits) == (
        expected.used,
        expected.skipped,
        expected.misfits,
    )
    for name in ("n_reliable", "n_unconfirmed", "n_exception", "n_unhit", "n_frames", "sources"):
        assert getattr(result.estimate, name) == getattr(expected.estimate, name)
    assert np.array_equal(result.estimate.gain.view(np.uint32), expected.estimate.gain.view(np.uint32))
    assert np.array_equal(result.estimate.status, expected.estimate.status)
    assert list(scratch.iterdir()) == []


def test_the_sampled_comparisons_are_the_in_memory_ones_for_every_orientation(tmp_path: Path) -> None:
    """One movie a orientation of one gain, one of another: the seed comparisons themselves, pair for pair."""
    movies = [("a", code, 1.0) for code in CODES] + [("b", "identity", 1.0)]
    paths = _write_set(tmp_path, np.random.default_rng(3), movies, (24, 24))

    def estimate_of(path: str) -> GainEstimate:
        return movie_estimate(path, n_sample_frames=4)

    estimates = [estimate_of(path) for path in paths]
    expected = [
        compare_estimates(estimates[i], estimates[j], indices=(i, j))
        for i in range(len(paths))
        for j in range(i + 1, len(paths))
    ]
    shapes = [(24, 24)] * len(paths)
    assert compare_sampled_estimates(paths, estimate_of, shapes, scratch_dir=tmp_path) == expected
    assert {c.orientation for c in expected if c.first == 0 and c.verdict == grouping_module.AGREE} == set(
        CODES[1:]
    )


def test_the_sampled_movies_estimates_are_never_held_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory does not grow with the number of sampled movies: one own estimate at a time (it was 8)."""
    paths = _write_set(tmp_path, np.random.default_rng(4), [("a", "identity", 1.0)] * 8, (24, 24))
    alive: list[weakref.ref[GainEstimate]] = []
    most = 0
    original: Callable[..., GainEstimate] = grouping_module.movie_estimate

    def tracked(path: str | os.PathLike[str], **options: int) -> GainEstimate:
        nonlocal most
        gc.collect()
        estimate = original(path, **options)
        alive.append(weakref.ref(estimate))
        most = max(most, sum(ref() is not None for ref in alive))
        return estimate

    monkeypatch.setattr(grouping_module, "movie_estimate", tracked)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the scratch files' default place
    result = estimate_set_gain(paths)
    assert len(alive) == 8 and most == 1
    assert len(result.used) == 8


_KEEP_AND_WAIT = """
import sys, time
import numpy as np
sys.path[:0] = sys.argv[2:]
from test_gain_sets import _estimate
from empcompress import kernels
from empcompress.gain.set_compare import EstimateFiles

gain = np.full((64, 64), 1.5, dtype=np.float32)
reliable = np.full(gain.shape, kernels.GAIN_RELIABLE, dtype=np.uint8)
files = EstimateFiles([gain.shape] * 2, scratch_dir=sys.argv[1])
files.add(_estimate(gain, reliable))
files.add(_estimate(gain, reliable))
print("kept", flush=True)
time.sleep(60)
"""


def test_a_killed_estimate_leaves_no_scratch_file_behind(tmp_path: Path) -> None:
    """The scratch files have no name once made: SIGKILL (an out-of-memory kill, a batch job's end)
    leaves nothing in TMPDIR, where 8 super-resolution estimates take 3 GB."""
    import signal
    import subprocess
    import sys

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    tests = str(Path(__file__).parent)
    package = str(Path(__file__).parents[1])
    command = [sys.executable, "-c", _KEEP_AND_WAIT, str(scratch), tests, package]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(60, child.kill)  # (a child that never answers must not hang the suite)
    watchdog.start()
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "kept"
        targets = [os.readlink(link) for link in Path(f"/proc/{child.pid}/fd").iterdir()]
        held = [target for target in targets if target.startswith(str(scratch)) and "(deleted)" in target]
        assert len(held) == 4  # rows and columns of two square estimates, open and nameless
        assert list(scratch.iterdir()) == []
    finally:
        watchdog.cancel()
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert list(scratch.iterdir()) == []


def _scratch_files_open(scratch: Path) -> list[str]:
    targets = [os.readlink(link) for link in Path("/proc/self/fd").iterdir() if link.is_symlink()]
    return [target for target in targets if target.startswith(str(scratch))]


def test_a_full_disk_while_keeping_an_estimate_leaves_no_scratch_file_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows of a square estimate are kept, its columns fail (disk full): the rows are closed too."""
    import errno

    import empcompress.gain.set_compare as set_compare_module

    def full(estimate: GainEstimate) -> Iterator[np.ndarray]:
        raise OSError(errno.ENOSPC, "No space left on device")
        yield  # (a generator, as the real one)

    gain = np.full((32, 32), 1.5, dtype=np.float32)
    reliable = np.full(gain.shape, kernels.GAIN_RELIABLE, dtype=np.uint8)
    files = EstimateFiles([gain.shape], scratch_dir=tmp_path)
    monkeypatch.setattr(set_compare_module, "_packed_columns", full)
    with pytest.raises(GainError, match=r"could not keep .*\(No space left on device\)") as caught:
        files.add(_estimate(gain, reliable))
    # closed at once, not when the error (whose traceback holds the rows file) is let go
    assert caught.value is not None and _scratch_files_open(tmp_path) == []
    assert list(tmp_path.iterdir()) == []
    files.close()
