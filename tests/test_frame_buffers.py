"""Frame buffers reused across a conversion's stages and a worker's conversions (issue 10): a buffer is
handed out again only once nothing refers to it, the pool never keeps more than the high-water mark,
and conversions that reuse buffers still write the same verified files."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from conftest import counts
from hypothesis import given, settings
from hypothesis import strategies as st
from mrc_factory import write_mrc

from empcompress import frame_buffers, kernels
from empcompress.convert import convert_movie
from empcompress.errors import VerificationError
from empcompress.frame_buffers import (
    drop_idle_frame_buffers,
    forget_frame_buffer,
    frame_buffer,
    frame_buffer_usage,
    keeping_frame_buffers,
    trim_idle_frame_buffers,
    trimming_idle_frame_buffers,
)
from empcompress.pipeline.gain_tasks import gain_step
from empcompress.restore import restore_movie
from empcompress.verify import verify_tiff


def address(array: npt.NDArray[np.generic]) -> int:
    return int(array.ctypes.data)


@pytest.fixture
def small_pooled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pool buffers of any size (the real threshold is 32 MiB), starting from an empty pool."""
    assert frame_buffer_usage().n_buffers == 0, "a scope from another test is still open"
    monkeypatch.setattr(frame_buffers, "MIN_POOLED_BYTES", 1)
    yield
    assert frame_buffer_usage().n_buffers == 0


def test_outside_a_scope_nothing_is_kept(small_pooled: None) -> None:
    first = frame_buffer((64, 64), np.float32)
    del first
    second = frame_buffer((64, 64), np.float32)
    assert second.shape == (64, 64) and second.dtype == np.float32
    assert frame_buffer_usage().n_buffers == 0


def test_small_buffers_are_never_pooled() -> None:
    with keeping_frame_buffers():
        small = frame_buffer(frame_buffers.MIN_POOLED_BYTES - 1, np.uint8)
        assert small.size == frame_buffers.MIN_POOLED_BYTES - 1
        assert frame_buffer_usage().n_buffers == 0


def test_a_free_buffer_is_handed_out_again(small_pooled: None) -> None:
    with keeping_frame_buffers():
        first = frame_buffer((100, 100), np.float32)
        spot = address(first)
        del first
        again = frame_buffer((100, 200), np.uint16)  # same byte count, another dtype and shape
        assert address(again) == spot and again.shape == (100, 200) and again.dtype == np.uint16
        assert frame_buffer_usage().n_buffers == 1


@pytest.mark.parametrize("holder", ["view", "reshaped", "memoryview", "dtype view"])
def test_a_buffer_with_a_view_left_is_not_handed_out(small_pooled: None, holder: str) -> None:
    with keeping_frame_buffers():
        first = frame_buffer(40_000, np.uint8)
        first[:] = 7
        kept: object
        if holder == "view":
            kept = first[10:20]
        elif holder == "reshaped":
            kept = first.reshape(200, 200)[5]
        elif holder == "memoryview":
            kept = memoryview(first[100:])
        else:
            kept = first.view(np.float32)[::3]
        spot = address(first)
        del first
        other = frame_buffer(40_000, np.uint8)
        assert address(other) != spot
        other[:] = 1
        del other
        assert frame_buffer_usage().in_use_bytes == 40_000
        del kept
        assert frame_buffer_usage().in_use_bytes == 0
        again = frame_buffer(40_000, np.uint8)  # both are free now: the first allocated is taken
        assert address(again) == spot


def test_a_free_buffer_serves_only_requests_of_its_size(small_pooled: None) -> None:
    with keeping_frame_buffers():
        large, medium = frame_buffer(9000, np.uint8), frame_buffer(5000, np.uint8)
        spots = {"large": address(large), "medium": address(medium)}
        del large, medium
        assert address(frame_buffer((1000, 5), np.uint8)) == spots["medium"]
        smaller = frame_buffer(4999, np.uint8)  # no free buffer of its size: a new one
        assert address(smaller) not in spots.values()
        assert frame_buffer_usage().n_allocated == 3


def test_a_request_of_a_new_size_lets_go_of_every_free_buffer(small_pooled: None) -> None:
    """So the pool holds no more than was in use at once, and a worker that moves on to movies of
    another size does not keep the old ones."""
    with keeping_frame_buffers():
        held = [frame_buffer(1000, np.uint8) for _ in range(4)]  # 4000 bytes at once
        del held
        big = frame_buffer(3500, np.uint8)
        usage = frame_buffer_usage()
        assert (usage.n_buffers, usage.in_use_bytes, usage.idle_bytes) == (1, 3500, 0)
        assert usage.high_water_bytes == 4000
        del big


def test_closing_the_last_scope_lets_go_and_arrays_in_use_stay_valid(small_pooled: None) -> None:
    with keeping_frame_buffers():
        with keeping_frame_buffers():
            kept = frame_buffer(5000, np.uint8)
            kept[:] = 3
            freed = frame_buffer(5000, np.uint8)
            del freed
        assert frame_buffer_usage().n_buffers == 2  # the outer scope still keeps them
    assert frame_buffer_usage().n_buffers == 0
    fresh = frame_buffer(5000, np.uint8)
    fresh[:] = 9
    assert (kept == 3).all()


def test_drop_idle_keeps_what_is_in_use(small_pooled: None) -> None:
    with keeping_frame_buffers():
        used = frame_buffer(3000, np.uint8)
        idle = frame_buffer(2000, np.uint8)
        del idle
        assert drop_idle_frame_buffers() == 2000
        usage = frame_buffer_usage()
        assert (usage.n_buffers, usage.in_use_bytes, usage.idle_bytes) == (1, 3000, 0)
        assert usage.high_water_bytes == 3000
        del used


def test_a_gain_step_lets_go_of_idle_buffers_first_and_last(small_pooled: None) -> None:
    @gain_step
    def step() -> int:
        idle_at_start = frame_buffer_usage().idle_bytes
        own = frame_buffer(3000, np.uint8)  # the step's own, idle when it ends
        del own
        return idle_at_start

    with keeping_frame_buffers():
        idle = frame_buffer(2000, np.uint8)
        del idle
        assert frame_buffer_usage().idle_bytes == 2000
        assert step() == 0
        assert frame_buffer_usage().n_buffers == 0


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.integers(1, 6000)),
        st.tuples(st.just("let go"), st.integers(0, 20)),
        st.tuples(st.just("view"), st.integers(0, 20)),
        st.tuples(st.just("drop idle"), st.just(0)),
        st.tuples(st.just("trim"), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(operations=OPERATIONS, cap=st.one_of(st.none(), st.integers(0, 8000)))
def test_no_array_in_use_is_ever_handed_out_again(operations: list[tuple[str, int]], cap: int | None) -> None:
    """Whatever the order of takes, views, lets-go and trims: every array in use keeps its values, the
    pool holds no more than the most asked for at once, and a trim leaves no more idle than the cap."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(frame_buffers, "MIN_POOLED_BYTES", 1)
        with keeping_frame_buffers(max_idle_bytes=cap):
            live: list[tuple[int, int, npt.NDArray[np.uint8]]] = []  # (fill, bytes asked, a view of a take)
            most_asked_bytes = 0  # the most bytes asked for by takes alive at once
            for step, (operation, number) in enumerate(operations):
                if operation == "take":
                    array = frame_buffer(number, np.uint8)
                    fill = step % 251 + 1
                    array[:] = fill
                    live.append((fill, number, array))
                    del array
                elif operation == "let go" and live:
                    live.pop(number % len(live))
                elif operation == "view" and live:
                    fill, asked, array = live.pop(number % len(live))
                    live.append((fill, asked, array[len(array) // 2 :]))  # only a view of it stays
                    del array
                elif operation == "drop idle":
                    drop_idle_frame_buffers()
                elif operation == "trim":
                    trim_idle_frame_buffers()
                    assert cap is None or frame_buffer_usage().idle_bytes <= cap
                most_asked_bytes = max(most_asked_bytes, sum(asked for _, asked, _ in live))
                assert all((array == fill).all() for fill, _, array in live)  # (no loop variable left)
                usage = frame_buffer_usage()
                held_bytes = usage.in_use_bytes + usage.idle_bytes
                assert held_bytes <= usage.high_water_bytes <= most_asked_bytes
            del live
        assert frame_buffer_usage().n_buffers == 0


def test_threads_never_share_a_buffer(small_pooled: None) -> None:
    failures: list[str] = []

    def work(fill: int) -> None:
        for _ in range(300):
            array = frame_buffer(4096, np.uint8)
            array[:] = fill
            if not (array == fill).all():
                failures.append(f"thread {fill} saw another's values")
            del array

    with keeping_frame_buffers():
        threads = [threading.Thread(target=work, args=(fill,)) for fill in (1, 2, 3, 4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert frame_buffer_usage().n_buffers <= 4
    assert failures == []


@pytest.mark.parametrize("source", ["float32 counts", "mode 101", "gain-normalised"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_second_conversion_reuses_every_buffer_of_the_first(
    small_pooled: None, tmp_path: Path, source: str, threads: int
) -> None:
    """As in a compress worker: the second movie's conversion allocates no new frame buffer (a
    gain-normalised one, whose stages need more distinct buffers than it holds at once, fewer), the
    pool does not grow, and both outputs verify and restore byte for byte."""
    rng = np.random.default_rng(10)
    values = counts(rng, (6, 96, 80), dose=0.4)
    if source == "mode 101":
        movie = write_mrc(tmp_path / "movie.mrc", np.minimum(values, 15).astype(np.uint8), mode=101)
    elif source == "gain-normalised":
        gain = rng.uniform(0.6, 1.6, size=(96, 80)).astype(np.float32)
        movie = write_mrc(tmp_path / "movie.mrc", counts(rng, (24, 96, 80)) * gain, mode=2)
    else:
        movie = write_mrc(tmp_path / "movie.mrc", values, mode=2)
    gain_option = "auto" if source == "gain-normalised" else None
    outputs = [tmp_path / name for name in ("first", "second")]
    for folder in outputs:
        folder.mkdir()
    with keeping_frame_buffers():
        first = convert_movie(movie, outputs[0] / "movie.tif", threads=threads, gain=gain_option)
        after_first = frame_buffer_usage()
        assert after_first.n_buffers > 0 and after_first.in_use_bytes == 0
        second = convert_movie(movie, outputs[1] / "movie.tif", threads=threads, gain=gain_option)
        after_second = frame_buffer_usage()
    allocated_again = after_second.n_allocated - after_first.n_allocated
    if source == "gain-normalised":
        assert allocated_again < after_first.n_allocated
    else:
        assert allocated_again == 0  # every take of the second conversion reused a buffer
    assert after_second.high_water_bytes == after_first.high_water_bytes
    assert after_second.n_buffers == after_first.n_buffers
    assert first.output_sha256 == second.output_sha256
    if source == "gain-normalised":
        assert second.gain is not None and second.gain.action == "applied"
    restore_movie(outputs[1] / "movie.tif", tmp_path / "back.mrc")
    assert (tmp_path / "back.mrc").read_bytes() == movie.read_bytes()


def test_a_conversion_alone_leaves_nothing_kept(small_pooled: None, tmp_path: Path) -> None:
    values = counts(np.random.default_rng(3), (4, 64, 64), dose=0.5).astype(np.float32)
    movie = write_mrc(tmp_path / "movie.mrc", values, mode=2)
    convert_movie(movie, tmp_path / "movie.tif")
    assert frame_buffer_usage().n_buffers == 0


def test_a_scope_bounds_what_stays_idle_once_an_inner_scope_closes(small_pooled: None) -> None:
    """As a worker's scope around a conversion's: what the conversion leaves idle is cut to the bound."""
    with keeping_frame_buffers(max_idle_bytes=2500):
        with keeping_frame_buffers():
            taken = [frame_buffer(n, np.uint8) for n in (1000, 2000, 3000)]
            del taken
            assert frame_buffer_usage().idle_bytes == 6000
        usage = frame_buffer_usage()
        assert usage.idle_bytes == 2000  # the largest that fits the bound
        assert usage.n_buffers == 1


def test_a_forgotten_buffer_is_never_handed_out_again(small_pooled: None) -> None:
    with keeping_frame_buffers():
        sample = frame_buffer((10, 100), np.float32)
        spot = address(sample)
        assert forget_frame_buffer(sample[2:])
        del sample
        assert frame_buffer_usage().n_buffers == 0
        frame_buffer((10, 100), np.float32)
        assert frame_buffer_usage().n_allocated == 2  # (malloc may give the same address back)
        del spot
        assert not forget_frame_buffer(np.empty(10))  # not a kept buffer: nothing to do


def test_a_poisoned_buffer_holds_nothing_it_held_before(small_pooled: None) -> None:
    with keeping_frame_buffers():
        before = frame_buffer(8000, np.uint8)
        before[:] = 7
        del before
        after = frame_buffer((1000, 2), np.float32, poisoned=True)
        assert (after.view(np.uint8) == frame_buffers.POISON_BYTE).all()
        assert frame_buffer_usage().n_allocated == 1  # it was the same buffer


def test_verification_cannot_pass_on_source_bytes_left_in_a_kept_buffer(
    small_pooled: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept buffer may hold a source frame (a sample read before the pass). If verification rebuilt
    into it and a stage failed to write the values, the left-over bytes would hash to the source:
    rebuild buffers are poisoned, so such a failure is caught."""
    values = counts(np.random.default_rng(8), (1, 64, 64), dose=0.5)
    movie = write_mrc(tmp_path / "movie.mrc", values, mode=2)
    convert_movie(movie, tmp_path / "movie.tif")
    with keeping_frame_buffers():
        # as after a read pass: a stored frame's buffer and a sample's, which holds its source bytes
        stored, seeded = frame_buffer(values[0].size, np.uint8), frame_buffer(values[0].nbytes, np.uint8)
        seeded[:] = np.frombuffer(movie.read_bytes()[-values[0].nbytes :], dtype=np.uint8)
        del stored, seeded
        monkeypatch.setattr(kernels, "flip_cast", lambda values, out: out)  # writes nothing
        with pytest.raises(VerificationError):
            verify_tiff(tmp_path / "movie.tif")
        assert (
            frame_buffer_usage().n_allocated == 2
        )  # verification reused both (it rebuilt into the sample's)


def test_a_trimming_task_leaves_no_more_idle_than_the_bound(small_pooled: None) -> None:
    """A worker's conversion task: what it leaves idle (buffers still in use when its own scope closed,
    idle once it returns) is cut to the worker's bound when it ends."""

    @trimming_idle_frame_buffers
    def task() -> None:
        kept = [frame_buffer(n, np.uint8) for n in (1000, 2000, 3000)]
        del kept

    with keeping_frame_buffers(max_idle_bytes=2500):
        task()
        assert frame_buffer_usage().idle_bytes == 2000


def test_the_workers_tasks_keep_to_the_frame_buffer_policies() -> None:
    """Conversion and classification tasks trim to the worker's bound; gain steps let go of everything."""
    from empcompress.pipeline import gain_tasks, tasks

    trimming = trimming_idle_frame_buffers(lambda: None).__code__
    dropping = frame_buffers.dropping_idle_frame_buffers(lambda: None).__code__
    for task in (tasks.run_file_task, tasks.classify_task):
        assert task.__wrapped__.__code__ is trimming  # type: ignore[attr-defined]
    gain_steps = [getattr(gain_tasks, name) for name in dir(gain_tasks) if name.endswith("_task")]
    assert len(gain_steps) >= 10
    for step in gain_steps:
        assert step.__wrapped__.__code__ is dropping
