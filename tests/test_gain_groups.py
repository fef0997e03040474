"""Gain groups across a drive (issue 9): one reference per gain, wherever the movies are.

Generated drives: an EPU-like session whose grid squares share one gain; a movie
normalised with the gain flipped; a depositor's reference above the movies; a
session too sparse to estimate. Every movie restores byte for byte from the bag
with no ``--gain`` option.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from drives import make_epu_session, snapshot_tree, write_mrc
from test_pipeline import recover_everything

from empcompress.bag import verify_bag
from empcompress.cli import main
from empcompress.gainref import write_gain_reference
from empcompress.journal import Journal
from empcompress.pipeline import CompressOptions, compress_drive
from empcompress.reconstruct import read_record

SHAPE = (48, 64)


@pytest.fixture
def gain() -> np.ndarray:
    return np.random.default_rng(11).uniform(0.7, 1.4, SHAPE).astype(np.float32)


def _rows(dest: Path, source: Path) -> dict[str, Any]:
    with Journal.open(dest, source=str(source.resolve())) as journal:
        return journal.entries()


def _generated(dest: Path, source: Path) -> dict[str, Any]:
    with Journal.open(dest, source=str(source.resolve())) as journal:
        return journal.generated_entries()


def _report(dest: Path) -> dict[str, Any]:
    return json.loads((dest / "report.json").read_text(encoding="utf-8"))


def test_an_epu_session_across_grid_squares_gets_exactly_one_reference(
    tmp_path: Path, client: Any, gain: np.ndarray
) -> None:
    source = tmp_path / "src"
    movies = make_epu_session(source, rng=np.random.default_rng(1), gain=gain, squares=(2, 3, 1))
    dest = tmp_path / "bag"
    summary = compress_drive(source, dest, client=client)
    assert summary.complete and summary.all_converted
    generated = _generated(dest, source)
    assert list(generated) == ["Images-Disc1/gain-reference.mrc"]  # the deepest folder holding them all
    rows = _rows(dest, source)
    movie_rows = [rows[str(m.relative_to(source))] for m in movies]
    assert {row.gain_reference for row in movie_rows} == {"Images-Disc1/gain-reference.mrc"}
    assert {row.stored_dtype for row in movie_rows} == {"uint8"}
    (group,) = summary.gain_references
    assert group.origin == "estimated" and group.n_converted_with_gain == len(movies)
    assert {member.orientation for member in group.members} == {"identity"}
    record = read_record(dest / "data" / movie_rows[0].output_rel_path)
    assert record.storage.gain is not None
    assert record.storage.gain["reference"] == "../../gain-reference.mrc"
    assert verify_bag(dest, full=True).ok
    recover_everything(source, dest, tmp_path / "scratch")  # restore_movie with no gain option
    # the command line too, on one TIFF, with no --gain
    tiff = dest / "data" / movie_rows[-1].output_rel_path
    assert main(["restore", str(tiff), "-o", str(tmp_path / "one.mrc"), "-q"]) == 0
    assert (tmp_path / "one.mrc").read_bytes() == movies[-1].read_bytes()
    # a second run changes nothing and names the same reference
    again = compress_drive(source, dest, client=client)
    assert again.n_done_this_run == 0 and len(again.gain_references) == 1


def test_a_flipped_movie_uses_the_same_reference_in_its_own_orientation(
    tmp_path: Path, client: Any, gain: np.ndarray
) -> None:
    source = tmp_path / "src"
    odd = "FoilHole_2000_Data_3001_4001_20240101_120000.mrc"
    make_epu_session(source, rng=np.random.default_rng(2), gain=gain, squares=(11,), flipped=(odd,))
    dest = tmp_path / "bag"
    summary = compress_drive(source, dest, client=client, options=CompressOptions(gain_sample_movies=8))
    assert summary.complete and summary.all_converted
    rows = _rows(dest, source)
    assert len(_generated(dest, source)) == 1
    assert {row.stored_dtype for row in rows.values() if row.category == "movie"} == {"uint8"}
    assert len({row.gain_reference for row in rows.values() if row.category == "movie"}) == 1
    report = _report(dest)
    orientation = {
        Path(f["source"]).name: f["gain_orientation"] for f in report["files"] if f["gain_orientation"]
    }
    assert orientation.pop(odd) == "flip-rows"
    assert set(orientation.values()) == {"identity"} and len(orientation) == 10
    (group,) = report["gain_references"]
    assert group["relion_orientation"] == "--gain_rot 0 --gain_flip 0"
    flipped_member = next(m for m in group["members"] if m["source"].endswith(odd))
    assert flipped_member["relion_orientation"] == "--gain_rot 0 --gain_flip 1"
    assert verify_bag(dest).ok
    recover_everything(source, dest, tmp_path / "scratch")


@pytest.mark.parametrize("name", ["gain-reference.mrc", "CountRef_session.mrc"])
def test_the_depositors_reference_above_the_movies_is_used_and_none_is_written(
    tmp_path: Path, client: Any, gain: np.ndarray, name: str
) -> None:
    source = tmp_path / "src"
    session = source / "session"
    movies = make_epu_session(session, rng=np.random.default_rng(3), gain=gain, squares=(2, 2))
    # the depositor's file is upside down relative to the movies (RELION would need --gain_flip 1)
    reference = session / "Images-Disc1" / name
    write_gain_reference(reference, gain[::-1].copy())
    before = snapshot_tree(source)
    dest = tmp_path / "bag"
    summary = compress_drive(source, dest, client=client)
    assert snapshot_tree(source) == before
    assert summary.complete and summary.all_converted
    assert _generated(dest, source) == {}  # no reference estimated or stored
    rows = _rows(dest, source)
    copy = rows[str(reference.relative_to(source))].output_rel_path
    assert (dest / "data" / copy).read_bytes() == reference.read_bytes()  # copied unchanged
    assert {rows[str(m.relative_to(source))].gain_reference for m in movies} == {copy}
    (group,) = summary.gain_references
    assert group.origin == "depositor" and group.relion_orientation == "--gain_rot 0 --gain_flip 1"
    assert "found on the drive" in (dest / "report.md").read_text(encoding="utf-8")
    assert verify_bag(dest, full=True).ok
    recover_everything(source, dest, tmp_path / "scratch")


def test_two_sessions_in_one_folder_each_with_its_depositor_reference(
    tmp_path: Path, client: Any, gain: np.ndarray
) -> None:
    other = np.random.default_rng(12).uniform(0.7, 1.4, SHAPE).astype(np.float32)
    source = tmp_path / "src"
    first = make_epu_session(source, rng=np.random.default_rng(4), gain=gain, squares=(2,), prefix="a_")
    second = make_epu_session(source, rng=np.random.default_rng(5), gain=other, squares=(2,), prefix="b_")
    write_gain_reference(source / "gain_a.mrc", gain)
    write_gain_reference(source / "gain_b.mrc", other)
    dest = tmp_path / "bag"
    summary = compress_drive(source, dest, client=client)
    assert summary.complete and summary.all_converted
    rows = _rows(dest, source)
    assert {rows[str(m.relative_to(source))].gain_reference for m in first} == {"gain_a.mrc"}
    assert {rows[str(m.relative_to(source))].gain_reference for m in second} == {"gain_b.mrc"}
    assert _generated(dest, source) == {}
    recover_everything(source, dest, tmp_path / "scratch")


def test_a_session_too_sparse_to_estimate_is_kept_lossless_and_reported(
    tmp_path: Path, client: Any, gain: np.ndarray
) -> None:
    source = tmp_path / "src"
    rng = np.random.default_rng(6)
    for index in range(2):
        counts = rng.poisson(0.01, size=(3, *SHAPE)).astype(np.float32)
        write_mrc(source / "sparse" / f"movie_{index}.mrc", (counts * gain[None]).astype(np.float32))
    dest = tmp_path / "bag"
    summary = compress_drive(source, dest, client=client)
    assert summary.complete
    rows = _rows(dest, source)
    for index in range(2):
        row = rows[f"sparse/movie_{index}.mrc"]
        assert row.stored_dtype == "float32" and row.gain_reference == ""
        assert row.decision or row.message  # the report says why
    assert _generated(dest, source) == {}
    report = (dest / "report.md").read_text(encoding="utf-8")
    assert "sparse/movie_0.mrc" in report
    recover_everything(source, dest, tmp_path / "scratch")


def test_scan_predicts_the_groups_and_their_references(tmp_path: Path, gain: np.ndarray) -> None:
    from empcompress.scan import scan_drive

    source = tmp_path / "src"
    make_epu_session(source, rng=np.random.default_rng(7), gain=gain, squares=(2, 3))
    (estimated,) = scan_drive(source).gain_groups
    assert (estimated.n_movies, estimated.reference, estimated.origin) == (5, "", "to be estimated")
    assert estimated.reference_size_bytes == 1024 + 4 * SHAPE[0] * SHAPE[1]
    write_gain_reference(source / "Images-Disc1" / "CountRef_x.mrc", gain[::-1].copy())
    (found,) = scan_drive(source).gain_groups
    assert found.reference == "Images-Disc1/CountRef_x.mrc" and found.origin == "found on the drive"
    assert found.n_fitted == found.n_sampled > 0
    assert found.relion_orientation == "--gain_rot 0 --gain_flip 1"


# ---------------------------------------------------------------- regressions from review


def test_an_unreadable_depositor_reference_keeps_its_copy_and_its_name(
    tmp_path: Path, client: Any, gain: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new group's reference never takes the path of a kept output (review #1, #8)."""
    import hashlib
    import os

    source = tmp_path / "src"
    make_epu_session(source, rng=np.random.default_rng(3), gain=gain, squares=(1, 1))
    reference = source / "Images-Disc1" / "gain-reference.mrc"
    write_gain_reference(reference, gain[::-1].copy())
    dest = tmp_path / "bag"
    assert compress_drive(source, dest, client=client).complete
    copy = dest / "data" / "Images-Disc1" / "gain-reference.mrc"
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    make_epu_session(source, rng=np.random.default_rng(4), gain=gain, squares=(1, 1), prefix="n_")
    real_access = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        return False if str(path) == str(reference) else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)  # root reads everything: pretend it cannot
    second = compress_drive(source, dest, client=client)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    assert not second.complete  # the unreadable file is a failure of this run ...
    monkeypatch.undo()
    third = compress_drive(source, dest, client=client)  # ... and the next run finishes
    assert third.complete
    assert verify_bag(dest, full=True).ok
    recover_everything(source, dest, tmp_path / "scratch")


def test_a_drive_holding_a_bag_gets_one_reference_that_every_movie_names(
    tmp_path: Path, client: Any, gain: np.ndarray
) -> None:
    """The outermost bag's payload is the root: a depositor's own bag inside the drive is payload
    like any other folder (review #2)."""
    source = tmp_path / "src"
    make_epu_session(source / "old" / "data", rng=np.random.default_rng(3), gain=gain, squares=(2,))
    (source / "old" / "bagit.txt").write_text("BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n")
    make_epu_session(source / "new", rng=np.random.default_rng(4), gain=gain, squares=(2,))
    dest = tmp_path / "bag"
    summary = compress_drive(source, dest, client=client)
    assert summary.complete and summary.all_converted
    assert list(_generated(dest, source)) == ["gain-reference.mrc"]
    rows = _rows(dest, source)
    assert {row.gain_reference for row in rows.values() if row.category == "movie"} == {"gain-reference.mrc"}
    assert not [p for p in (dest / "data" / "old").rglob("*.mrc")]  # nothing the layout did not plan
    recover_everything(source, dest, tmp_path / "scratch")


def test_an_io_error_while_grouping_fails_the_run_and_the_next_run_stores_counts(
    tmp_path: Path, client: Any, gain: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never stored as float32 for good because of a transient read error (review #5)."""
    import empcompress.gain.grouping as grouping

    source = tmp_path / "src"
    movies = make_epu_session(source, rng=np.random.default_rng(3), gain=gain, squares=(2,))
    bad = str(movies[0])
    real_estimate, real_fit = grouping.movie_estimate, grouping.fit_gain

    def estimate(path: Any, **kwargs: Any) -> Any:
        if str(path) == bad:
            raise OSError(5, "Input/output error", bad)
        return real_estimate(path, **kwargs)

    def fit(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path) == bad:
            raise OSError(5, "Input/output error", bad)
        return real_fit(path, *args, **kwargs)

    monkeypatch.setattr(grouping, "movie_estimate", estimate)
    monkeypatch.setattr(grouping, "fit_gain", fit)
    dest = tmp_path / "bag"
    first = compress_drive(source, dest, client=client)
    rows = _rows(dest, source)
    assert not first.complete and rows[str(movies[0].relative_to(source))].state == "failed"
    assert rows[str(movies[1].relative_to(source))].stored_dtype == "uint8"  # the other one is not spoiled
    monkeypatch.undo()
    second = compress_drive(source, dest, client=client)
    assert second.complete and second.all_converted
    rows = _rows(dest, source)
    assert {rows[str(m.relative_to(source))].stored_dtype for m in movies} == {"uint8"}
    assert len({rows[str(m.relative_to(source))].gain_reference for m in movies}) == 1
    recover_everything(source, dest, tmp_path / "scratch")


def test_recheck_releases_movies_waiting_for_an_unchanged_depositor_reference(
    tmp_path: Path, client: Any, gain: np.ndarray
) -> None:
    """review #4: an unchanged reference under --recheck is as good as a fresh copy."""
    source = tmp_path / "src"
    make_epu_session(source, rng=np.random.default_rng(3), gain=gain, squares=(2,))
    write_gain_reference(source / "gain-reference.mrc", gain)
    dest = tmp_path / "bag"
    assert compress_drive(source, dest, client=client).complete
    new = make_epu_session(source, rng=np.random.default_rng(8), gain=gain, squares=(1,), prefix="n_")
    again = compress_drive(source, dest, client=client, options=CompressOptions(recheck=True))
    assert again.complete and again.all_converted
    row = _rows(dest, source)[str(new[0].relative_to(source))]
    assert (row.stored_dtype, row.gain_reference) == ("uint8", "gain-reference.mrc")


def test_the_estimate_is_written_in_the_orientation_most_movies_have(
    tmp_path: Path, gain: np.ndarray
) -> None:
    """review #6: the first sampled movie being the flipped one does not flip the reference."""
    from drives import write_mrc as write_movie

    from empcompress.gain import estimate_set_gain

    rng = np.random.default_rng(9)
    paths = []
    for index in range(5):
        applied = gain[::-1] if index == 0 else gain
        counts = rng.poisson(1.0, size=(12, *SHAPE)).astype(np.float32)
        paths.append(write_movie(tmp_path / f"m{index}.mrc", (counts * applied[None]).astype(np.float32)))
    result = estimate_set_gain(paths)
    assert np.array_equal(result.estimate.gain.view(np.uint32), gain.view(np.uint32))


def test_a_crafted_transform_in_a_carried_over_entry_is_one_error_line(
    tmp_path: Path, gain: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    """review #3: no TypeError from a record that puts a transform where none belongs."""
    import tifffile

    from empcompress.convert import convert_movie
    from empcompress.errors import RecordError
    from empcompress.gain import GainRecord

    counts = np.random.default_rng(2).poisson(1.0, size=(3, *SHAPE)).astype(np.float32)
    write_mrc(tmp_path / "raw.mrc", counts)
    write_gain_reference(tmp_path / "gain.mrc", gain)
    (tmp_path / "out").mkdir()
    convert_movie(tmp_path / "raw.mrc", tmp_path / "out" / "raw.tif", gain=tmp_path / "gain.mrc")
    with tifffile.TiffFile(tmp_path / "out" / "raw.tif") as tiff:
        entry = json.loads(tiff.pages[0].description)["storage"]["gain"]
    assert entry["kind"] == "carried-over"
    for crafted in ("x", {}, {"orientation": "identity"}):
        with pytest.raises(RecordError, match=r"storage\.gain\.transform"):
            GainRecord.from_dict({**entry, "transform": crafted}, name="raw.tif")


def test_a_gain_estimated_by_row_bands_on_the_cluster_is_the_unbanded_gain(
    tmp_path: Path, client: Any, gain: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 10: big frames' partials are built, merged and finalized by bands; same bytes."""
    from empcompress.gain import estimate
    from empcompress.pipeline import gain_tasks

    source = tmp_path / "src"
    odd = "FoilHole_2001_Data_3001_4001_20240101_120000.mrc"
    make_epu_session(source, rng=np.random.default_rng(4), gain=gain, squares=(2, 3), flipped=(odd,))
    options = CompressOptions(gain_sample_movies=8)
    assert compress_drive(source, tmp_path / "whole", client=client, options=options).all_converted
    assembled = []
    real_assemble = gain_tasks.assemble_gain_estimate

    def assemble(bands: list[Any], *, frame_shape: tuple[int, int]) -> Any:
        assembled.append([band.gain.shape for band in bands])
        return real_assemble(bands, frame_shape=frame_shape)

    # the task is sent by name; what it calls is looked up on the (in-process) worker
    monkeypatch.setattr(gain_tasks, "assemble_gain_estimate", assemble)
    monkeypatch.setattr(estimate, "MAX_BAND_PIXELS", 10 * SHAPE[1])  # 5 bands of 9-10 rows
    summary = compress_drive(source, tmp_path / "banded", client=client, options=options)
    assert summary.all_converted
    assert assembled == [[(10, 64), (10, 64), (10, 64), (9, 64), (9, 64)]]
    (reference,) = _generated(tmp_path / "banded", source)
    assert list(_generated(tmp_path / "whole", source)) == [reference]
    banded_bytes = (tmp_path / "banded" / "data" / reference).read_bytes()
    assert banded_bytes == (tmp_path / "whole" / "data" / reference).read_bytes()
    orientation = {
        Path(f["source"]).name: f["gain_orientation"] for f in _report(tmp_path / "banded")["files"]
    }
    assert orientation[odd] == "flip-rows"
    recover_everything(source, tmp_path / "banded", tmp_path / "scratch")
