"""Scanning a drive: walking without following links, classifying, naming outputs, predicting."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from drives import make_drive, snapshot_tree, write_mrc

from empcompress.errors import InputError
from empcompress.scan import (
    ACTION_CONVERT,
    ACTION_COPY,
    CATEGORY_DEFECT_FILE,
    CATEGORY_GAIN_REFERENCE,
    CATEGORY_MICROGRAPH,
    CATEGORY_MOVIE,
    CATEGORY_OTHER,
    gain_support,
    scan_drive,
)


@pytest.fixture(scope="module")
def drive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_drive(tmp_path_factory.mktemp("drive") / "src")


def test_every_file_is_classified(drive: Path) -> None:
    plan = scan_drive(drive, predict=False)
    by_path = {entry.rel_path: entry for entry in plan.files}
    expected = {
        "Session 1/Movies/movie_001.mrc": (CATEGORY_MOVIE, ACTION_CONVERT, "Session 1/Movies/movie_001.tif"),
        "Session 1/Movies/film é 3.mrc": (CATEGORY_MOVIE, ACTION_CONVERT, "Session 1/Movies/film é 3.tif"),
        "Session 1/Movies/noisy float.mrcs": (
            CATEGORY_MOVIE,
            ACTION_CONVERT,
            "Session 1/Movies/noisy float.tif",
        ),
        "Session 1/Movies/corrupt.mrc": (CATEGORY_MOVIE, ACTION_CONVERT, "Session 1/Movies/corrupt.tif"),
        "Session 1/gain_ref.mrc": (CATEGORY_GAIN_REFERENCE, ACTION_COPY, "Session 1/gain_ref.mrc"),
        "Session 1/defects.txt": (CATEGORY_DEFECT_FILE, ACTION_COPY, "Session 1/defects.txt"),
        "Session 1/micrograph.mrc": (CATEGORY_MICROGRAPH, ACTION_COPY, "Session 1/micrograph.mrc"),
        "Processing/job 001 ünï/run_it001_data.star": (CATEGORY_OTHER, ACTION_COPY, None),
        "Session 1/Movies/movie_001.mrc.mdoc": (CATEGORY_OTHER, ACTION_COPY, None),
        "empty.txt": (CATEGORY_OTHER, ACTION_COPY, None),
        "a/b/c/deep.log": (CATEGORY_OTHER, ACTION_COPY, None),
    }
    for rel_path, (category, action, output) in expected.items():
        entry = by_path[rel_path]
        assert (entry.category, entry.action) == (category, action), rel_path
        assert entry.output_rel_path == (output or rel_path)
    corrupt = by_path["Session 1/Movies/corrupt.mrc"]
    assert "truncated" in corrupt.header_error
    movie = by_path["Session 1/Movies/movie_001.mrc"]
    assert (movie.n_frames, movie.frame_width, movie.frame_height, movie.mode) == (6, 64, 64, 2)
    assert movie.size_bytes == (drive / movie.rel_path).stat().st_size
    assert plan.total_size_bytes == sum(entry.size_bytes for entry in plan.files)
    counts = {category.category: category.n_files for category in plan.categories}
    assert counts == {"movie": 5, "micrograph": 1, "gain-reference": 1, "defect-file": 1, "other": 5}
    folders = {folder.folder: folder for folder in plan.folders}
    assert folders["Session 1/Movies"].n_movies == 5


def test_links_and_special_files_are_not_followed(tmp_path: Path) -> None:
    source = tmp_path / "src"
    outside = tmp_path / "outside"
    (source / "real").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("not on the drive", encoding="utf-8")
    (source / "real" / "a.txt").write_text("a", encoding="utf-8")
    os.symlink(outside, source / "to-outside")
    os.symlink(outside / "secret.txt", source / "secret-link.txt")
    os.symlink(source / "real", source / "loop")
    os.symlink(source / "nowhere", source / "broken")
    os.mkfifo(source / "pipe")
    plan = scan_drive(source, predict=False)
    assert [entry.rel_path for entry in plan.files] == ["real/a.txt"]
    reasons = {item.rel_path: item.reason for item in plan.skipped}
    assert "outside SRC" in reasons["to-outside"] and "outside SRC" in reasons["secret-link.txt"]
    assert "inside SRC" in reasons["loop"]
    assert "broken" in reasons["broken"]
    assert "not a regular file" in reasons["pipe"]


def test_colliding_output_names_are_made_unique(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    movie = rng.poisson(1.0, (3, 16, 16)).astype(np.float32)
    write_mrc(tmp_path / "x.mrc", movie)
    write_mrc(tmp_path / "x.mrcs", movie)
    write_mrc(tmp_path / "y.mrc", movie)
    (tmp_path / "y.tif").write_bytes(b"not really a tiff")
    plan = scan_drive(tmp_path, predict=False)
    outputs = {entry.rel_path: entry.output_rel_path for entry in plan.files}
    assert outputs == {"x.mrc": "x.mrc.tif", "x.mrcs": "x.mrcs.tif", "y.mrc": "y.mrc.tif", "y.tif": "y.tif"}
    assert len(set(outputs.values())) == len(outputs)


def test_volumes_are_copied_not_converted(tmp_path: Path) -> None:
    write_mrc(tmp_path / "map.mrc", np.zeros((32, 32, 32), np.float32), stack=False)
    (entry,) = scan_drive(tmp_path, predict=False).files
    assert (entry.category, entry.action) == (CATEGORY_OTHER, ACTION_COPY)
    assert "volume" in entry.note


def test_prediction_reads_a_sample_and_predicts_the_storage(drive: Path) -> None:
    before = snapshot_tree(drive)
    plan = scan_drive(drive, n_sample_movies=2, n_sample_frames=2, n_workers=2)
    assert snapshot_tree(drive) == before  # reads only
    by_mode = {(group.mode, group.kind): group for group in plan.predictions}
    counts = by_mode[(6, "counts")]
    assert counts.stored_dtype == "uint8" and counts.predicted_ratio > 1.5
    int8 = by_mode[(0, "counts")]
    assert int8.stored_dtype == "uint8"
    float_group = next(group for group in plan.predictions if group.mode == 2)
    assert float_group.n_movies == 2 and len(float_group.sampled) == 2
    unreadable = next(group for group in plan.predictions if group.kind == "unreadable")
    assert unreadable.n_movies == 1 and unreadable.predicted_ratio == 1.0
    assert 0 < plan.expected_output_size_bytes < plan.total_size_bytes
    assert plan.expected_seconds > 0 and plan.n_workers_assumed == 2
    document = json.loads(json.dumps(plan.to_dict()))
    assert document["source"] == str(drive.resolve())
    assert len(document["files"]) == len(plan.files)


def test_scanning_something_that_is_not_a_folder_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a folder"):
        scan_drive(tmp_path / "missing")


@pytest.mark.skipif(gain_support() is None, reason="needs empcompress.gain (issue 3)")
def test_prediction_recognises_gain_normalised_sets(tmp_path: Path) -> None:
    source = make_drive(tmp_path / "src", gain_sets=True, n_frames=16)
    plan = scan_drive(source, n_sample_movies=2, n_sample_frames=4)
    assert plan.gain_sets_supported
    (group,) = [group for group in plan.predictions if group.folder == "Gain set"]
    assert group.kind == "gain-normalised" and group.n_movies == 3
    assert group.predicted_ratio > 4
