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

import empcompress.convert
from empcompress import write
from empcompress.convert import convert_movie, survey_movie
from empcompress.mrc import MrcMovie
from empcompress.reconstruct import read_record
from empcompress.restore import restore_movie
from empcompress.verify import verify_tiff


def frame_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """Count every frame MrcMovie reads from now on."""
    seen: Counter[int] = Counter()
    original = MrcMovie.read_raw_frame

    def counting(self: MrcMovie, index: int, **options: Any) -> Any:
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
    monkeypatch.setattr(empcompress.convert, "_predicted_bigtiff", lambda *args, **kwargs: True)
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
    monkeypatch.setattr(empcompress.convert, "_predicted_bigtiff", lambda *args, **kwargs: False)
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
    original = empcompress.convert.kernels.flip_cast

    def corrupting(values: Any, out: Any) -> Any:
        result = original(values, out)
        out[0, 0] += 1  # the stored frame no longer matches the bytes read and hashed
        return result

    monkeypatch.setattr(empcompress.readpass.kernels, "flip_cast", corrupting)
    with pytest.raises(empcompress.convert.VerificationError, match="does not match the recorded source"):
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
