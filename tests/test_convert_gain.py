"""Converting gain-normalised movies: counts + gain reference, restore/verify byte for byte."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
from conftest import require_tool
from hypothesis import given, settings
from hypothesis import strategies as st
from mrc_factory import write_mrc
from test_gainref import dm4_bytes

from empcompress.cli import main
from empcompress.convert import convert_movie
from empcompress.errors import GainError
from empcompress.gain import ORIENT_SAMPLE_FRAMES, PLAN_SAMPLE_FRAMES, classify_movie, sample_frame_indices
from empcompress.gainref import GAIN_REFERENCE_NAME, read_gain_array, write_gain_reference
from empcompress.reconstruct import CompressedMovie, read_record
from empcompress.restore import restore_movie
from empcompress.verify import verify_tiff

SHAPE = (64, 96)


def normalised(counts: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return (counts.astype(np.float32) * gain).astype(np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def restores_exactly(
    tiff: Path, source: Path, *, gain_path: Path | None = None, root: Path | None = None
) -> bool:
    restored = tiff.with_name(tiff.stem + ".restored.mrc")
    restore_movie(tiff, restored, gain_path=gain_path, overwrite=True, root=root)
    same = restored.read_bytes() == source.read_bytes()
    restored.unlink()
    return same


@pytest.fixture
def gain(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.6, 1.6, size=SHAPE).astype(np.float32)


@pytest.fixture
def movie(tmp_path: Path, rng: np.random.Generator, gain: np.ndarray) -> tuple[Path, np.ndarray]:
    counts = rng.poisson(1.0, size=(24, *SHAPE))
    source = tmp_path / "in" / "movie.mrc"
    source.parent.mkdir()
    write_mrc(source, normalised(counts, gain), mode=2, pixel_size_angstrom=0.83)
    return source, counts


@pytest.fixture
def out(tmp_path: Path) -> Path:
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


def test_auto_gain_stores_counts_and_restores_byte_for_byte(
    movie: tuple[Path, np.ndarray], gain: np.ndarray, out: Path
) -> None:
    source, counts = movie
    result = convert_movie(source, out / "movie.tif", gain="auto")
    assert result.gain is not None and result.gain.action == "applied"
    assert result.gain.n_exceptions == 0
    assert result.decision.stored_dtype == "uint8"
    reference = out / GAIN_REFERENCE_NAME
    assert Path(result.gain.reference_path or "") == reference
    assert result.gain.reference_sha256 == sha256(reference)
    assert np.array_equal(read_gain_array(reference), gain)  # MRC row order, exactly the true gain
    pages = tifffile.imread(out / "movie.tif")
    assert np.array_equal(pages, counts[:, ::-1])  # the TIFF holds the counts, rows flipped
    assert result.ratio > 8
    record = read_record(out / "movie.tif")
    assert record.storage.gain is not None
    assert record.storage.gain["reference"] == GAIN_REFERENCE_NAME
    assert record.storage.gain["reference_sha256"] == sha256(reference)
    assert restores_exactly(out / "movie.tif", source)
    assert verify_tiff(out / "movie.tif", against=source).compared_with_source


def test_supplied_gain_in_the_wrong_orientation_is_corrected(
    movie: tuple[Path, np.ndarray], gain: np.ndarray, tmp_path: Path, out: Path
) -> None:
    source, _ = movie
    flipped = tmp_path / "in" / "gain_flipped.mrc"
    write_mrc(flipped, np.ascontiguousarray(np.rot90(gain, 2))[None], mode=2)
    result = convert_movie(source, out / "movie.tif", gain=flipped)
    assert result.gain is not None and result.gain.action == "applied"
    assert "rotated 180 degrees" in result.gain.orientation
    assert "--gain_rot 2" in result.gain.orientation
    written = out / GAIN_REFERENCE_NAME
    assert np.array_equal(read_gain_array(written), gain)
    assert restores_exactly(out / "movie.tif", source)


def test_supplied_dm4_gain_is_read_and_oriented(
    movie: tuple[Path, np.ndarray], gain: np.ndarray, tmp_path: Path, out: Path
) -> None:
    source, _ = movie
    dm4 = tmp_path / "in" / "CountRef_movie.dm4"
    dm4.write_bytes(dm4_bytes(gain[::-1]))  # DM's first row is the top: upside down vs MRC rows
    result = convert_movie(source, out / "movie.tif", gain=dm4)
    assert result.gain is not None and result.gain.action == "applied"
    assert "flipped upside down" in result.gain.orientation
    assert restores_exactly(out / "movie.tif", source)


def test_outside_a_bag_a_gain_reference_in_an_ancestor_directory_is_copied_beside_the_tiff(
    movie: tuple[Path, np.ndarray], gain: np.ndarray, out: Path
) -> None:
    """A TIFF outside a bag must restore on its own: its reference lies in its own folder."""
    source, _ = movie
    reference = out / GAIN_REFERENCE_NAME
    digest = write_gain_reference(reference, gain)
    (out / "sub" / "dir").mkdir(parents=True)
    tiff = out / "sub" / "dir" / "movie.tif"
    result = convert_movie(source, tiff, gain=reference)
    assert result.gain is not None and result.gain.created_reference
    record = read_record(tiff)
    assert record.storage.gain is not None
    assert "/" not in record.storage.gain["reference"]
    assert record.storage.gain["reference_sha256"] == digest
    assert restores_exactly(tiff, source)


@pytest.mark.parametrize("marker", ["bagit.txt", ".empcompress"])
def test_inside_a_bag_one_reference_serves_every_folder_and_orientation(
    movie: tuple[Path, np.ndarray], gain: np.ndarray, tmp_path: Path, marker: str
) -> None:
    """In a bag's payload a TIFF names a reference anywhere in it, with its orientation (issue 9)."""
    source, counts = movie
    bag = tmp_path / "bag"
    (bag / "data" / "gain").mkdir(parents=True)
    if marker == "bagit.txt":
        (bag / marker).write_text("BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n")
    else:
        (bag / marker).mkdir()
    reference = bag / "data" / "gain" / GAIN_REFERENCE_NAME
    digest = write_gain_reference(reference, gain[::-1].copy())  # stored upside down
    folder = bag / "data" / "session" / "GridSquare_1" / "Data"
    folder.mkdir(parents=True)
    tiff = folder / "movie.tif"
    result = convert_movie(source, tiff, gain=reference)
    assert result.gain is not None and result.gain.action == "applied"
    assert not result.gain.created_reference
    assert sorted(p.name for p in folder.iterdir()) == ["movie.tif"]
    entry = read_record(tiff).storage.gain
    assert entry is not None
    assert entry["reference"] == f"../../../gain/{GAIN_REFERENCE_NAME}"
    assert entry["reference_sha256"] == digest
    assert entry["version"] == 2
    assert entry["transform"]["orientation"] == "flip-rows"
    assert (entry["transform"]["relion_gain_rot"], entry["transform"]["relion_gain_flip"]) == (0, 1)
    assert restores_exactly(tiff, source)  # no --gain, no root: the bag's payload is the root
    assert verify_tiff(tiff).n_frames == counts.shape[0]


def test_restore_needs_the_right_gain_reference(
    movie: tuple[Path, np.ndarray], gain: np.ndarray, tmp_path: Path, out: Path
) -> None:
    source, _ = movie
    convert_movie(source, out / "movie.tif", gain="auto")
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (out / "movie.tif").rename(moved / "movie.tif")
    with pytest.raises(GainError, match="not next to it; pass it with --gain"):
        restore_movie(moved / "movie.tif", moved / "back.mrc")
    assert not (moved / "back.mrc").exists()
    assert restores_exactly(moved / "movie.tif", source, gain_path=out / GAIN_REFERENCE_NAME)
    wrong = moved / "wrong.mrc"
    write_gain_reference(wrong, gain * np.float32(1.5))
    with pytest.raises(GainError, match="is not the gain reference"):
        verify_tiff(moved / "movie.tif", gain_path=wrong)
    with CompressedMovie(moved / "movie.tif") as opened:  # info needs no gain
        assert opened.needs_gain


def test_raw_count_movies_are_never_given_a_gain_and_the_file_is_carried_over(
    tmp_path: Path, rng: np.random.Generator, gain: np.ndarray, out: Path
) -> None:
    counts = rng.poisson(1.0, size=(6, *SHAPE)).astype(np.float32)
    source = write_mrc(tmp_path / "counts.mrc", counts, mode=2)
    dm4 = tmp_path / "SuperRef_x.dm4"
    dm4.write_bytes(dm4_bytes(gain))
    result = convert_movie(source, out / "counts.tif", gain=dm4)
    assert result.gain is not None and result.gain.action == "carried-over"
    assert (out / dm4.name).read_bytes() == dm4.read_bytes()
    assert np.array_equal(tifffile.imread(out / "counts.tif"), counts[:, ::-1])
    record = read_record(out / "counts.tif")
    assert record.storage.gain is not None
    assert record.storage.gain["kind"] == "carried-over"
    assert record.storage.gain["reference"] == dm4.name
    (out / dm4.name).unlink()  # restore does not need a carried-over gain
    assert restores_exactly(out / "counts.tif", source)
    auto = convert_movie(source, out / "auto.tif", gain="auto")
    assert auto.gain is not None and auto.gain.action == "not-applied"
    assert read_record(out / "auto.tif").storage.gain is None


def test_mixed_directory_plain_count_movies_stay_untouched(
    tmp_path: Path, rng: np.random.Generator, gain: np.ndarray, out: Path
) -> None:
    sources = {}
    for index in range(2):
        sources[f"normalised{index}"] = write_mrc(
            tmp_path / f"normalised{index}.mrc", normalised(rng.poisson(1.0, size=(12, *SHAPE)), gain), mode=2
        )
        plain = rng.poisson(1.0, size=(12, *SHAPE)).astype(np.float32)
        sources[f"plain{index}"] = write_mrc(tmp_path / f"plain{index}.mrc", plain, mode=2)
    assert main(["gain", "estimate", *map(str, sources.values()), "-o", str(out / "gain.mrc"), "-q"]) == 0
    assert np.array_equal(read_gain_array(out / "gain.mrc"), gain)
    for name, source in sources.items():
        result = convert_movie(source, out / f"{name}.tif", gain=out / "gain.mrc")
        assert result.gain is not None
        if name.startswith("plain"):
            assert result.gain.action == "carried-over"
            with mrcfile.open(source) as handle:
                assert np.array_equal(tifffile.imread(out / f"{name}.tif"), handle.data[:, ::-1])
        else:
            assert result.gain.action == "applied"
        assert restores_exactly(out / f"{name}.tif", source)


def test_a_movie_from_another_session_is_not_forced_onto_the_gain(
    movie: tuple[Path, np.ndarray], out: Path, rng: np.random.Generator
) -> None:
    source, _ = movie
    other = rng.uniform(0.6, 1.6, size=SHAPE).astype(np.float32)
    write_gain_reference(out / "other.mrc", other)
    assert classify_movie(source, gain=other).kind == "float"
    result = convert_movie(source, out / "movie.tif", gain=out / "other.mrc")
    assert result.gain is not None and result.gain.action == "not-applied"
    assert "does not belong to the movie" in result.gain.reason
    assert result.decision.stored_dtype == "float32"
    assert "gain not applied" in result.decision.reason
    assert restores_exactly(out / "movie.tif", source)


def test_too_many_exceptions_fall_back_to_float_and_say_why(
    tmp_path: Path, rng: np.random.Generator, gain: np.ndarray, out: Path
) -> None:
    values = normalised(rng.poisson(1.0, size=(12, *SHAPE)), gain)
    odd = rng.random(values.shape) < 0.01  # 1% of the values are not counts x gain ...
    sampled_frames = sample_frame_indices(12, PLAN_SAMPLE_FRAMES)
    odd[sampled_frames] = False  # ... outside the frames sampled to orient the gain
    values[odd] += np.float32(0.1234)
    source = write_mrc(tmp_path / "odd.mrc", values, mode=2)
    write_gain_reference(out / "gain.mrc", gain)
    result = convert_movie(source, out / "odd.tif", gain=out / "gain.mrc")
    assert result.gain is not None and result.gain.action == "not-applied"
    assert "does not reproduce" in result.gain.reason and "0.1% allowed" in result.gain.reason
    assert result.decision.stored_dtype == "float32"
    assert restores_exactly(out / "odd.tif", source)
    oriented_on = sampled_frames[:ORIENT_SAMPLE_FRAMES]
    values[oriented_on] += np.float32(0.1234) * (rng.random((len(oriented_on), *SHAPE)) < 0.01)  # sampled too
    sampled = write_mrc(tmp_path / "sampled.mrc", values, mode=2)
    result = convert_movie(sampled, out / "sampled.tif", gain=out / "gain.mrc")
    assert result.gain is not None and result.gain.action == "not-applied"
    assert "too many values are not counts x this gain" in result.gain.reason
    assert restores_exactly(out / "sampled.tif", sampled)


def test_float64_gain_exceptions_restore_byte_identical(
    tmp_path: Path, rng: np.random.Generator, out: Path
) -> None:
    gain64 = rng.uniform(0.7, 1.4, size=SHAPE)
    sparse = write_mrc(
        tmp_path / "sparse.mrc", (rng.poisson(0.3, size=(36, *SHAPE)) * gain64).astype(np.float32), mode=2
    )
    result = convert_movie(sparse, out / "sparse.tif", gain="auto")
    assert result.gain is not None and result.gain.action == "applied"
    assert result.gain.n_exceptions > 0
    assert restores_exactly(out / "sparse.tif", sparse)
    dense = write_mrc(
        tmp_path / "dense.mrc", (rng.poisson(1.0, size=(36, *SHAPE)) * gain64).astype(np.float32), mode=2
    )
    result = convert_movie(dense, out / "dense.tif", gain="auto")
    assert result.gain is not None and result.gain.action == "not-applied"  # ~1.4% exceptions
    assert restores_exactly(out / "dense.tif", dense)


def test_dead_hot_and_unhit_pixels_and_uint16_counts(
    tmp_path: Path, rng: np.random.Generator, gain: np.ndarray, out: Path
) -> None:
    gain = gain.copy()
    gain[3, 4] = 0.0
    counts = rng.poisson(1.0, size=(20, *SHAPE))
    counts[:, 10, 10] = 0
    counts[:, 20, 20] = rng.integers(300, 400, size=20)  # counts past uint8 ...
    counts[0, 20, 20] = 1  # ... with one single electron to pin its gain
    values = normalised(counts, gain)
    values[:, 30, 30] = rng.uniform(100, 200, size=20).astype(np.float32)  # hot, not counts x gain
    values[5, 40, 40] = -0.0
    values[6, 41, 41] = np.float32(np.nan)
    source = write_mrc(tmp_path / "defects.mrc", values, mode=2, byte_order=">")
    result = convert_movie(source, out / "defects.tif", gain="auto")
    assert result.gain is not None and result.gain.action == "applied"
    assert result.decision.stored_dtype == "uint16"
    assert 20 <= result.gain.n_exceptions <= 22  # the hot pixel (its smallest value fits), -0.0, NaN
    assert restores_exactly(out / "defects.tif", source)


@pytest.mark.slow
@settings(max_examples=8)
@given(
    seed=st.integers(0, 2**32 - 1),
    dose=st.sampled_from([0.05, 0.5, 2.0]),
    noise=st.sampled_from([0.0, 0.0005, 0.05]),
    byte_order=st.sampled_from(["<", ">"]),
)
def test_any_accepted_representation_restores_bit_for_bit(
    tmp_path_factory: pytest.TempPathFactory, seed: int, dose: float, noise: float, byte_order: str
) -> None:
    directory = tmp_path_factory.mktemp("prop")
    rng = np.random.default_rng(seed)
    gain = rng.uniform(0.2, 4.0, size=(24, 40)).astype(np.float32)
    values = normalised(rng.poisson(dose, size=(5, 24, 40)), gain)
    damaged = rng.random(values.shape) < noise
    values[damaged] = rng.choice(np.array([-0.0, np.nan, -3.0, 1e-30, 7.77], dtype=np.float32), damaged.sum())
    source = write_mrc(directory / "m.mrc", values, mode=2, byte_order=byte_order)
    result = convert_movie(source, directory / "m.tif", gain="auto")
    assert result.gain is not None
    assert restores_exactly(directory / "m.tif", source)


def test_cli_gain_estimate_convert_restore_verify(
    movie: tuple[Path, np.ndarray], out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, _ = movie
    gain_file = tmp_path / "estimated.mrc"
    assert main(["gain", "estimate", str(source), "-o", str(gain_file), "-q"]) == 0
    report = capsys.readouterr().out
    assert "reliable" in report and "exception" in report and "unhit" in report
    assert main(["gain", "estimate", str(source), "-o", str(gain_file), "-q"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["gain", "estimate", str(source), "-o", str(tmp_path / "j.mrc"), "--json", "-q"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["pixels"]["total"] == SHAPE[0] * SHAPE[1]
    assert main(["convert", str(source), "-o", str(out / "m.tif"), "--gain", str(gain_file), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "gain reference" in printed and "exception values" in printed
    # outside a bag the reference goes beside the TIFF, so that the folder restores on its own
    assert read_record(out / "m.tif").storage.gain["reference"] == GAIN_REFERENCE_NAME  # type: ignore[index]
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    (out / "m.tif").rename(elsewhere / "m.tif")
    assert main(["verify", str(elsewhere / "m.tif"), "-q"]) == 1
    assert "--gain" in capsys.readouterr().err
    assert main(["verify", str(elsewhere / "m.tif"), "--gain", str(gain_file), "-q"]) == 0
    restored = tmp_path / "restored.mrc"
    assert (
        main(["restore", str(elsewhere / "m.tif"), "-o", str(restored), "--gain", str(gain_file), "-q"]) == 0
    )
    assert restored.read_bytes() == source.read_bytes()
    assert main(["info", str(elsewhere / "m.tif")]) == 0


@pytest.mark.integration
def test_relion_reads_our_counts_and_the_gain_gives_back_the_movie(
    tmp_path: Path, rng: np.random.Generator, out: Path
) -> None:
    """RELION's reader decodes the TIFF; count x gain-reference.mrc (float32) is the original movie."""
    handler = require_tool("relion_image_handler")
    gain = rng.uniform(0.6, 1.6, size=(100, 140)).astype(np.float32)
    values = normalised(rng.poisson(1.0, size=(6, 100, 140)), gain)
    source = write_mrc(tmp_path / "movie.mrc", values, mode=2)
    flipped = tmp_path / "supplied_gain.mrc"
    write_mrc(flipped, np.ascontiguousarray(gain[:, ::-1])[None], mode=2)  # supplied left-right flipped
    result = convert_movie(source, out / "movie.tif", gain=flipped)
    assert result.gain is not None and result.gain.action == "applied" and result.gain.n_exceptions == 0
    decoded = out / "movie.mrcs"
    subprocess.run(
        [handler, "--i", str(out / "movie.tif"), "--o", str(decoded)], check=True, capture_output=True
    )
    with mrcfile.open(decoded, permissive=True) as handle:
        counts = np.asarray(handle.data, dtype=np.float32)
    with mrcfile.open(out / GAIN_REFERENCE_NAME) as handle:
        reference = np.asarray(handle.data)
    assert reference.dtype == np.float32
    rebuilt = (counts * reference).astype(np.float32)
    assert np.array_equal(rebuilt.view(np.uint32), values.view(np.uint32))
