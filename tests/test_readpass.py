"""One read of the source (issue 10): every frame is read once, the storage type decided from a sample
is checked on every frame (and widened by starting again when a frame does not fit), the record's
placeholders are filled in place, and the TIFF kind follows the real strip sizes whatever was guessed."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import counts, temporaries_in
from hypothesis import given, settings
from hypothesis import strategies as st
from mrc_factory import write_mrc

import empcompress.convert.plain
import empcompress.convert.with_gain
import empcompress.convert.write_pass
import empcompress.encode
import empcompress.gain.counts
from empcompress import kernels, write
from empcompress.convert import convert_movie, survey_movie
from empcompress.errors import VerificationError
from empcompress.gain.plan import plan_sample_indices
from empcompress.gainref import read_gain_array, write_gain_reference
from empcompress.mrc import MrcMovie
from empcompress.reconstruct import read_record
from empcompress.restore import restore_movie
from empcompress.verify import verify_tiff


def frame_reads(monkeypatch: pytest.MonkeyPatch, source: Path | None = None) -> Counter[int]:
    """Count every frame MrcMovie reads from now on (of ``source`` only, when given)."""
    seen: Counter[int] = Counter()
    original = MrcMovie.read_raw_frame

    def counting(self: MrcMovie, index: int, **options: Any) -> Any:
        if source is None or Path(self.path) == source:
            seen[index] += 1
        return original(self, index, **options)

    monkeypatch.setattr(MrcMovie, "read_raw_frame", counting)
    return seen


def round_trips(source: Path, output: Path) -> bool:
    back = output.with_suffix(".back.mrc")
    restore_movie(output, back)
    same = back.read_bytes() == source.read_bytes()
    back.unlink()
    return same


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", [(5, 48, 40), (1, 8, 8), (4, 1100, 2000)])
def test_every_frame_is_read_once(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int, shape: tuple
) -> None:
    source = write_mrc(tmp_path / "m.mrc", counts(rng, shape, dose=1.0), mode=2)
    reads = frame_reads(monkeypatch)
    result = convert_movie(source, tmp_path / "m.tif", threads=threads)
    assert reads == Counter(range(shape[0]))  # the sample frame included: it is not read twice
    assert result.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert read_record(tmp_path / "m.tif").source.sha256 == result.source_sha256
    assert round_trips(source, tmp_path / "m.tif")


@pytest.mark.parametrize(
    ("threads", "shape", "expected"),
    [(1, (5, 48, 40), [0]), (1, (1, 48, 40), []), (1, (3, 1100, 2000), [0]), (2, (3, 1100, 2000), [])],
)
def test_the_first_frame_is_read_while_the_codec_trial_runs(
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    threads: int,
    shape: tuple[int, int, int],
    expected: list[int],
) -> None:
    """A one-thread pass's first read starts before the trial (not after it); not the sample's frame.
    Two threads (frames big enough to get them) read into the pass's own buffers: nothing early."""
    source = write_mrc(tmp_path / "m.mrc", counts(rng, shape, dose=1.0), mode=2)
    events: list[Any] = []
    original_read_ahead, original_trial = MrcMovie.read_ahead, empcompress.convert.plain.trial_frame

    def read_ahead(self: MrcMovie, index: int) -> None:
        events.append(index)
        original_read_ahead(self, index)

    def trial(*args: Any, **options: Any) -> Any:
        events.append("trial")
        return original_trial(*args, **options)

    monkeypatch.setattr(MrcMovie, "read_ahead", read_ahead)
    monkeypatch.setattr(empcompress.convert.plain, "trial_frame", trial)
    convert_movie(source, tmp_path / "m.tif", threads=threads)
    assert events[: events.index("trial")] == expected
    assert round_trips(source, tmp_path / "m.tif")


@pytest.mark.parametrize(
    ("late_value", "stored"),
    [(300.0, "uint16"), (-2.0, "int16"), (0.5, "float32"), (-0.0, "float32"), (70000.0, "uint32")],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_a_frame_that_does_not_fit_the_sample_starts_again_wider(
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    late_value: float,
    stored: str,
    threads: int,
) -> None:
    values = counts(rng, (6, 32, 24), dose=1.0)
    values[4, 3, 5] = late_value  # after the sample (frame 3): found by the pass, not the sample
    source = write_mrc(tmp_path / "m.mrc", values, mode=2)
    reads = frame_reads(monkeypatch)
    result = convert_movie(source, tmp_path / "m.tif", threads=threads)
    assert result.decision == survey_movie(source).decision  # as if every frame had been surveyed first
    assert result.decision.stored_dtype == stored
    assert reads[0] == 2 + 1  # two passes, and the survey just above
    assert round_trips(source, tmp_path / "m.tif")
    assert temporaries_in(tmp_path) == []


@settings(max_examples=40, deadline=None)
@given(
    n_frames=st.integers(1, 5),
    late=st.sampled_from([None, 255.0, 256.0, -1.0, 1.5, float("nan"), 1e6, 65535.0, 65536.0]),
    where=st.integers(0, 4),
)
def test_the_decision_is_the_full_surveys(n_frames: int, late: float | None, where: int) -> None:
    import tempfile

    rng = np.random.default_rng(n_frames * 31 + where)
    values = counts(rng, (n_frames, 6, 10), dose=1.5)
    if late is not None:
        values[where % n_frames, 1, 2] = late
    with tempfile.TemporaryDirectory() as directory:
        source = write_mrc(Path(directory) / "m.mrc", values, mode=2)
        result = convert_movie(source, Path(directory) / "m.tif")
        survey = survey_movie(source)
        assert result.decision == survey.decision
        storage = read_record(Path(directory) / "m.tif").storage
        assert storage.reason == survey.decision.reason
        assert (storage.value_min == survey.decision.value_min) or np.isnan(survey.decision.value_min)
        assert round_trips(source, Path(directory) / "m.tif")


def test_a_wrong_bigtiff_guess_gives_a_classic_tiff(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_mrc(tmp_path / "m.mrc", counts(rng, (3, 40, 30), dose=1.0), mode=2)
    monkeypatch.setattr(empcompress.convert.write_pass, "predicted_bigtiff", lambda *args, **kwargs: True)
    reads = frame_reads(monkeypatch)
    convert_movie(source, tmp_path / "m.tif")
    assert reads == Counter({0: 2, 1: 2, 2: 2})  # written as BigTIFF, then once more as classic
    with tifffile.TiffFile(tmp_path / "m.tif") as tiff:
        assert not tiff.is_bigtiff
    verify_tiff(tmp_path / "m.tif")


def test_strips_past_a_classic_guess_give_a_bigtiff(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_mrc(tmp_path / "m.mrc", counts(rng, (3, 400, 300), dose=1.0), mode=2)
    monkeypatch.setattr(empcompress.convert.write_pass, "predicted_bigtiff", lambda *args, **kwargs: False)
    # room for the overhead and a little more than one frame's strips
    monkeypatch.setattr(write, "CLASSIC_TIFF_LIMIT_BYTES", (1 << 20) + 3 * 4096 + 20_000 + 60_000)
    convert_movie(source, tmp_path / "m.tif")
    with tifffile.TiffFile(tmp_path / "m.tif") as tiff:
        assert tiff.is_bigtiff
    verify_tiff(tmp_path / "m.tif")
    assert round_trips(source, tmp_path / "m.tif")


def test_the_record_replaces_its_placeholder_exactly(tmp_path: Path, rng: np.random.Generator) -> None:
    source = write_mrc(tmp_path / "m.mrc", counts(rng, (2, 20, 16), dose=1.0), mode=2)
    convert_movie(source, tmp_path / "m.tif")
    with tifffile.TiffFile(tmp_path / "m.tif") as tiff:
        tag = tiff.pages.first.tags[270]
        text = tag.value
        assert tag.count == len(text) + 1
    document = json.loads(text)
    assert document["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert "?" not in document["storage"]["reason"]
    with pytest.raises(RuntimeError, match="longer than its placeholder"):
        write.replace_description(tmp_path / "m.tif", text + " ")


def test_a_source_changed_during_the_read_is_caught(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is encoded is what is hashed: a frame altered after it was hashed fails verification."""
    source = write_mrc(tmp_path / "m.mrc", counts(rng, (3, 20, 16), dose=1.0), mode=2)
    original = kernels.flip_cast

    def corrupting(values: Any, out: Any) -> Any:
        result = original(values, out)
        out[0, 0] += 1  # the stored frame no longer matches the bytes read and hashed
        return result

    monkeypatch.setattr(empcompress.readpass.kernels, "flip_cast", corrupting)
    with pytest.raises(VerificationError, match="does not match the recorded source"):
        convert_movie(source, tmp_path / "m.tif")
    assert not (tmp_path / "m.tif").exists()
    assert temporaries_in(tmp_path) == []


def test_prefetch_is_only_a_hint(tmp_path: Path, rng: np.random.Generator) -> None:
    values = counts(rng, (3, 16, 12), dose=1.0)
    source = write_mrc(tmp_path / "m.mrc", values, mode=2)
    with MrcMovie(source) as movie:
        for index in (-1, 0, 1, 2, 3, 1000):
            movie.prefetch(index)  # out of range: nothing; in range: a hint to the kernel
        assert np.array_equal(movie.read_frame(1), values[1])


# ---- gain-normalised conversion: one read too (count, hash and encode in the same pass)

GAIN_SHAPE = (24, 64, 96)


def gain_movie(
    tmp_path: Path, rng: np.random.Generator, *, odd: dict[int, float] | None = None, late_count: int = 0
) -> tuple[Path, Path]:
    """A gain-normalised movie and its gain file; ``odd``: frame -> fraction of values off counts x gain."""
    gain = rng.uniform(0.6, 1.6, size=GAIN_SHAPE[1:]).astype(np.float32)
    counts = rng.poisson(1.0, size=GAIN_SHAPE)
    if late_count:
        counts[late_count, 5, 5] = 300  # past uint8, in a frame the plan does not sample
    values = (counts.astype(np.float32) * gain).astype(np.float32)
    for frame, fraction in (odd or {}).items():
        values[frame][rng.random(GAIN_SHAPE[1:]) < fraction] += np.float32(0.1234)
    (tmp_path / "out").mkdir()
    write_gain_reference(tmp_path / "out" / "gain.mrc", gain)
    return write_mrc(tmp_path / "m.mrc", values, mode=2), tmp_path / "out" / "gain.mrc"


def convert_with_gain(source: Path, gain: Path, threads: int = 1) -> Any:
    output = gain.parent / "m.tif"
    result = convert_movie(source, output, gain=gain, threads=threads)
    assert round_trips(source, output)
    assert result.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert temporaries_in(gain.parent) == []
    return result


def test_the_gain_plan_samples_frames_the_tests_avoid() -> None:
    assert plan_sample_indices(GAIN_SHAPE[0]) == [0, 8, 15, 23]  # and orients the gain on 0 and 8


@pytest.mark.parametrize("threads", [1, 2])
def test_a_gain_normalised_movie_is_read_once(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    source, gain = gain_movie(tmp_path, rng, odd={3: 0.001, 20: 0.001})
    reads = frame_reads(monkeypatch, source)
    result = convert_with_gain(source, gain, threads)
    assert reads == Counter(range(GAIN_SHAPE[0]))  # the plan's sampled frames included
    assert result.gain.action == "applied" and result.decision.stored_dtype == "uint8"
    assert result.gain.n_exceptions > 0  # from frames the plan did not sample: recorded all the same


def test_sampled_frames_past_the_budget_are_read_again(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, gain = gain_movie(tmp_path, rng)
    monkeypatch.setattr(empcompress.convert.with_gain, "HELD_SAMPLE_BYTES", 0)
    reads = frame_reads(monkeypatch, source)
    convert_with_gain(source, gain)
    assert reads == Counter(range(GAIN_SHAPE[0])) + Counter(plan_sample_indices(GAIN_SHAPE[0]))


def test_a_count_past_uint8_after_the_sample_starts_again_as_uint16(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, gain = gain_movie(tmp_path, rng, late_count=10)
    reads = frame_reads(monkeypatch, source)
    result = convert_with_gain(source, gain)
    assert result.gain.action == "applied" and result.decision.stored_dtype == "uint16"
    assert result.decision.value_max == 300
    sampled = set(plan_sample_indices(GAIN_SHAPE[0]))
    first_pass = Counter(i for i in range(11) if i not in sampled)  # up to the frame that outgrew it
    assert reads == Counter(sampled) + first_pass + Counter(range(GAIN_SHAPE[0]))


def test_exceptions_past_the_limit_after_the_sample_start_again_on_the_float_path(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, gain = gain_movie(tmp_path, rng, odd=dict.fromkeys(range(1, 7), 0.01))  # 0.1% of 24: 147
    reads = frame_reads(monkeypatch, source)
    result = convert_with_gain(source, gain)
    assert result.gain.action == "not-applied" and result.decision.stored_dtype == "float32"
    assert "does not reproduce" in result.gain.reason and "0.1% allowed" in result.gain.reason
    assert max(reads.values()) == 2 and sum(reads.values()) < 2 * GAIN_SHAPE[0]  # stopped early once
    assert "gain not applied" in read_record(gain.parent / "m.tif").storage.reason
    assert result.gain.n_exceptions == n_exceptions(source, gain)  # every frame counted, on the float path


def n_exceptions(source: Path, gain: Path) -> int:
    """Values of the movie that are not counts x gain (what the pass must have counted), by the NumPy twin."""
    reference = read_gain_array(gain)
    total = 0
    with MrcMovie(source) as movie:
        for index in range(movie.header.nz):
            values = np.array(movie.read_frame(index), dtype=np.float32)
            counted = kernels.gain_counts_numpy(values, reference, np.empty(values.shape, np.uint16))
            total += counted.n_exceptions
    return total


def test_a_sample_with_too_many_exceptions_is_one_float_read(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, gain = gain_movie(tmp_path, rng, odd={i: 0.01 for i in range(24) if i not in (0, 8)})
    reads = frame_reads(monkeypatch, source)
    result = convert_with_gain(source, gain)
    assert result.gain.action == "not-applied" and result.decision.stored_dtype == "float32"
    assert "does not reproduce" in result.gain.reason
    assert reads == Counter(range(GAIN_SHAPE[0]))


def test_a_float_pass_whose_full_count_keeps_the_gain_starts_again_with_it(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0.5% odd in two of the four sampled frames: 0.25% of the sample, 0.04% of the movie
    source, gain = gain_movie(tmp_path, rng, odd={15: 0.005, 23: 0.005})
    reads = frame_reads(monkeypatch, source)
    result = convert_with_gain(source, gain)
    assert result.gain.action == "applied" and result.decision.stored_dtype == "uint8"
    assert reads == Counter(2 * list(range(GAIN_SHAPE[0])))  # the float pass, then the counts
    assert result.gain.n_exceptions == n_exceptions(source, gain) > 24


def test_a_record_longer_than_its_placeholder_is_written_again(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, gain = gain_movie(tmp_path, rng, odd={5: 0.01, 12: 0.01})  # none in the sampled frames
    # no room: a placeholder without the gain entry
    monkeypatch.setattr(empcompress.convert.with_gain, "placeholder_record", lambda *args, **kwargs: None)
    reads = frame_reads(monkeypatch, source)
    result = convert_with_gain(source, gain)
    assert result.gain.action == "applied" and result.gain.n_exceptions > 0
    assert reads == Counter(2 * list(range(GAIN_SHAPE[0])))
    with tifffile.TiffFile(gain.parent / "m.tif") as tiff:  # the second placeholder had room to spare
        assert tiff.pages.first.tags[270].count == len(tiff.pages.first.tags[270].value) + 1


def test_other_gain_outcomes_are_one_read(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gain from another session (not applied from the plan) and a raw-count movie (carried over)."""
    source, gain = gain_movie(tmp_path, rng)
    write_gain_reference(gain, rng.uniform(0.6, 1.6, size=GAIN_SHAPE[1:]).astype(np.float32), overwrite=True)
    reads = frame_reads(monkeypatch, source)
    result = convert_with_gain(source, gain)
    assert result.gain.action == "not-applied" and result.decision.stored_dtype == "float32"
    assert reads == Counter(range(GAIN_SHAPE[0]))
    raw = write_mrc(tmp_path / "raw.mrc", counts(rng, GAIN_SHAPE, dose=1.0), mode=2)
    reads = frame_reads(monkeypatch, raw)
    output = gain.parent / "raw.tif"
    result = convert_movie(raw, output, gain=gain)
    assert result.gain is not None and result.gain.action == "carried-over"
    assert read_record(output).storage.gain["kind"] == "carried-over"  # type: ignore[index]
    assert reads == Counter(range(GAIN_SHAPE[0]))
    assert round_trips(raw, output)


def test_gain_counts_that_do_not_give_back_what_was_read_are_caught(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is counted is what is hashed: a count altered after the frame was read fails verification."""
    source, gain = gain_movie(tmp_path, rng)
    original = kernels.gain_counts

    def corrupting(values: Any, reference: Any, out: Any, *, max_exceptions: int | None = None) -> Any:
        result = original(values, reference, out, max_exceptions=max_exceptions)
        if out.shape == GAIN_SHAPE[1:]:  # the frames stored (not the trial's bands)
            out[0, 0] += 1
        return result

    monkeypatch.setattr(empcompress.gain.counts.kernels, "gain_counts", corrupting)
    with pytest.raises(VerificationError, match="does not match the recorded source"):
        convert_movie(source, gain.parent / "m.tif", gain=gain)
    assert not (gain.parent / "m.tif").exists()
    assert temporaries_in(gain.parent) == []


def distinct_frames(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Counts whose frames all differ (frame i: a band of value i + 1 where the others have counts)."""
    values = counts(rng, shape, dose=1.0)
    for index in range(shape[0]):
        values[index, index % shape[1], :] = index + 1
    return values


@pytest.mark.parametrize("threads", [1, 2])
def test_reused_stored_frames_write_the_file_fresh_frames_write(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """The stored frames come from two buffers in turn: same output as a fresh array per frame.

    Small frames on the threaded path (encoder pool, hashing helper), many strips per frame, so
    that a buffer reused while the pool still encodes its frame would change the file.
    """
    monkeypatch.setattr(kernels, "SINGLE_THREAD_FRAME_BYTES", 0)
    monkeypatch.setattr(empcompress.encode, "STRIP_TARGET_BYTES", 2048)
    source = write_mrc(tmp_path / "m.mrc", distinct_frames(rng, (9, 160, 120)), mode=2)
    original_store = empcompress.convert.plain.cast_store
    buffers: dict[bool, list[np.ndarray]] = {True: [], False: []}  # held: no address comes back

    def converted(reuse: bool) -> bytes:
        def store_of(*args: Any, **options: Any) -> Any:
            store = original_store(*args, **options, reuse=reuse)

            def tracked(*store_args: Any) -> Any:
                out = store(*store_args)
                buffers[reuse].append(out)
                return out

            return tracked

        monkeypatch.setattr(empcompress.convert.plain, "cast_store", store_of)
        output = tmp_path / f"m-{reuse}.tif"
        convert_movie(source, output, threads=threads, codec="lzw")  # verified against the pass's sha256
        assert round_trips(source, output)
        data = output.read_bytes()
        output.unlink()
        return data

    reused, fresh = converted(True), converted(False)
    assert len(buffers[True]) == len(buffers[False]) == 9
    assert len({id(frame) for frame in buffers[True]}) == write.FRAMES_IN_FLIGHT
    assert len({frame.ctypes.data for frame in buffers[False]}) == 9
    assert reused == fresh


def test_a_store_with_fewer_buffers_than_the_writer_holds_is_refused(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's frame-lifetime check is live: claim one frame in flight, and the encoder's
    second frame (taken before the first one's strips are out) stops the write."""
    source = write_mrc(tmp_path / "m.mrc", distinct_frames(rng, (4, 40, 30)), mode=2)
    monkeypatch.setattr(write, "FRAMES_IN_FLIGHT", 1)
    with pytest.raises(RuntimeError, match="before it was done with frame 0"):
        convert_movie(source, tmp_path / "m.tif")
    assert temporaries_in(tmp_path) == []
