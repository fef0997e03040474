"""Whole-drive cases found in review: each once made a run lose, misplace or mislabel data."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import bagit
import numpy as np
import pytest
from drives import gain_normalised_movie, make_drive, write_mrc
from test_pipeline import recover_everything

import empcompress.mrc.header
import empcompress.scan
from empcompress.errors import PipelineError
from empcompress.manifest import verify_bag
from empcompress.pipeline import CompressOptions, compress_drive
from empcompress.pipeline.tasks import FileTask, run_file_task
from empcompress.reconstruct import read_record

pytestmark = pytest.mark.slow

NO_GAIN = CompressOptions(gain_sets=False)


def test_a_data_folder_that_is_a_link_into_src_is_refused(tmp_path: Path, client: Any) -> None:
    source, dest = make_drive(tmp_path / "src"), tmp_path / "bag"
    assert compress_drive(source, dest, client=client, options=NO_GAIN).complete
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    shutil.move(dest / "data", tmp_path / "old-data")
    (dest / "data").symlink_to(source)
    with pytest.raises(PipelineError, match="symbolic link"):
        compress_drive(source, dest, client=client, options=NO_GAIN)
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before


def test_a_sealed_bag_is_unsealed_before_anything_in_it_changes(
    tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, dest = make_drive(tmp_path / "src"), tmp_path / "bag"
    assert compress_drive(source, dest, client=client, options=NO_GAIN).complete
    (source / "notes.txt").unlink()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(dest / "report.json"))

    monkeypatch.setattr("empcompress.pipeline.run.write_reports", full)
    with pytest.raises(PipelineError, match="the disk holding the destination is full"):
        compress_drive(source, dest, client=client, options=NO_GAIN)
    assert not (dest / "bagit.txt").exists()  # never a "bag" whose payload no longer matches
    monkeypatch.undo()
    assert compress_drive(source, dest, client=client, options=NO_GAIN).complete
    bagit.Bag(str(dest)).validate()


def test_an_io_error_opening_a_movie_is_a_failure_not_a_property_of_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_mrc(tmp_path / "m.mrc", np.random.default_rng(0).poisson(1, (4, 32, 32)).astype(np.uint16))
    (tmp_path / "data").mkdir()
    real = empcompress.mrc.header.open_regular

    def flaky(path: str) -> Any:
        monkeypatch.setattr(empcompress.mrc.header, "open_regular", real)
        raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(empcompress.mrc.header, "open_regular", flaky)
    outcome = run_file_task(
        FileTask(
            rel_path="m.mrc",
            source_path=str(source),
            output_path=str(tmp_path / "data" / "m.tif"),
            output_rel_path="m.tif",
            action="convert",
            category="movie",
            stop_path=str(tmp_path / "stop"),
            payload_root=str(tmp_path / "data"),
        )
    )
    assert not outcome.ok and outcome.outcome == "" and "Input/output error" in outcome.message
    assert not (tmp_path / "data" / "m.mrc").exists()


def test_a_folder_unreadable_for_one_run_keeps_its_outputs(
    tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, dest = make_drive(tmp_path / "src"), tmp_path / "bag"
    assert compress_drive(source, dest, client=client, options=NO_GAIN).complete
    movies = dest / "data" / "Session 1" / "Movies"
    before = sorted(p.name for p in movies.iterdir())
    real = os.scandir

    def scandir(path: Any) -> Any:
        if str(path).endswith("Movies"):
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path)

    monkeypatch.setattr(empcompress.scan.os, "scandir", scandir)
    summary = compress_drive(source, dest, client=client, options=NO_GAIN)
    assert summary.exit_code == 1 and any("Movies" in p.rel_path for p in summary.failures)
    assert sorted(p.name for p in movies.iterdir()) == before
    monkeypatch.undo()
    assert compress_drive(source, dest, client=client, options=NO_GAIN).complete
    recover_everything(source, dest, tmp_path / "scratch")


def test_a_folder_replaced_by_a_file_of_its_name(tmp_path: Path, client: Any) -> None:
    source, dest = tmp_path / "src", tmp_path / "bag"
    (source / "notes").mkdir(parents=True)
    (source / "notes" / "a.txt").write_bytes(b"a")
    assert compress_drive(source, dest, client=client, options=NO_GAIN).complete
    shutil.rmtree(source / "notes")
    (source / "notes").write_bytes(b"now a file")
    summary = compress_drive(source, dest, client=client, options=NO_GAIN)
    assert summary.complete, summary.failures
    assert (dest / "data" / "notes").read_bytes() == b"now a file"


def test_two_gain_sets_in_one_folder_and_a_long_flipped_movie(tmp_path: Path, client: Any) -> None:
    """Two frame sizes in one folder are two sets with two references; a flipped member with a
    255-byte name (sorted last, so outside the 8 movies sampled for the estimate: issue 9 is about
    the estimate itself) gets its own re-oriented reference within the name limit."""
    rng = np.random.default_rng(1)
    source, dest = tmp_path / "src", tmp_path / "bag"
    for shape, prefix, n_movies in (((64, 64), "a", 8), ((32, 48), "b", 3)):
        gain = rng.uniform(0.8, 1.25, shape).astype(np.float32)
        for index in range(n_movies):
            write_mrc(source / "F" / f"{prefix}_{index}.mrc", gain_normalised_movie(rng, gain, 6))
        if prefix == "a":
            name = "z" * 251 + ".mrc"
            write_mrc(source / "F" / name, gain_normalised_movie(rng, gain[::-1].copy(), 6))
    summary = compress_drive(source, dest, client=client)
    assert summary.complete, summary.failures
    references = {}
    for tiff in (dest / "data" / "F").glob("*.tif"):
        gain = read_record(tiff).storage.gain
        assert gain is not None, f"{tiff.name} was stored without its gain"
        references[tiff.name] = gain["reference"]
    assert (
        len({references[f"a_{i}.tif"] for i in range(3)} | {references[f"b_{i}.tif"] for i in range(3)}) == 2
    )
    assert verify_bag(dest, full=True).ok
    recover_everything(source, dest, tmp_path / "scratch")
