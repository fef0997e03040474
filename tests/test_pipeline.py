"""The compress job on an in-process Dask cluster: tasks, resume, changes, refusal, stopping, gain sets."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from drives import make_drive, snapshot_tree, write_mrc

from empcompress.errors import JournalLockedError, PipelineError
from empcompress.journal import STATE_DONE, Journal
from empcompress.manifest import read_manifest, verify_bag
from empcompress.pipeline import (
    CompressOptions,
    FileEvent,
    FileTask,
    PlanEvent,
    compress_drive,
    copy_with_digests,
    run_file_task,
)
from empcompress.restore import restore_movie
from empcompress.scan import gain_support
from empcompress.write import TEMP_MARKER

NO_GAIN = CompressOptions(gain_sets=False)


def temporaries(root: Path) -> list[str]:
    return [str(path) for path in root.rglob("*") if TEMP_MARKER in path.name]


def recover_everything(source: Path, dest: Path, scratch: Path) -> None:
    """Every source file is in the bag: copied byte for byte, or restorable from its TIFF."""
    report = json.loads((dest / "report.json").read_text(encoding="utf-8"))
    outputs = {record["source"]: record for record in report["files"]}
    scratch.mkdir(exist_ok=True)
    for rel_path, (content, _) in snapshot_tree(source).items():
        record = outputs[rel_path]
        assert record["state"] == STATE_DONE, rel_path
        output = dest / record["output"]
        if record["outcome"] == "converted":
            restored = scratch / f"{hashlib.sha256(rel_path.encode()).hexdigest()}.mrc"
            restore_movie(output, restored)
            assert restored.read_bytes() == content, rel_path
            restored.unlink()
        else:
            assert output.read_bytes() == content, rel_path
        assert record["source_sha256"] == hashlib.sha256(content).hexdigest()


# ---------------------------------------------------------------- tasks


def test_copy_computes_both_digests_in_one_pass_and_keeps_mtime(tmp_path: Path) -> None:
    source = tmp_path / "in dir" / "file ü.bin"
    source.parent.mkdir()
    content = np.random.default_rng(0).integers(0, 256, 3 * (8 << 20) + 17, dtype=np.uint8).tobytes()
    source.write_bytes(content)
    os.utime(source, ns=(1_600_000_000_000_000_000, 1_600_000_000_123_456_789))
    output = tmp_path / "out" / "file ü.bin"
    output.parent.mkdir()
    size, sha256, md5 = copy_with_digests(source, output)
    assert size == len(content) and output.read_bytes() == content
    assert sha256 == hashlib.sha256(content).hexdigest() and md5 == hashlib.md5(content).hexdigest()
    assert output.stat().st_mtime_ns == source.stat().st_mtime_ns
    assert temporaries(tmp_path) == []
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert copy_with_digests(empty, tmp_path / "out" / "empty") == (
        0,
        hashlib.sha256(b"").hexdigest(),
        hashlib.md5(b"").hexdigest(),
    )


def _task(source: Path, output: Path, *, action: str, stop: Path) -> FileTask:
    return FileTask(
        rel_path=source.name,
        source_path=str(source),
        output_path=str(output),
        output_rel_path=output.name,
        action=action,
        category="movie",
        stop_path=str(stop),
    )


def test_file_tasks_convert_keep_fail_and_stop(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    movie = write_mrc(tmp_path / "m.mrc", rng.poisson(1.0, (4, 32, 40)).astype(np.float32))
    out = tmp_path / "out"
    stop = tmp_path / "stop"

    converted = run_file_task(_task(movie, out / "m.tif", action="convert", stop=stop))
    assert converted.ok and converted.outcome == "converted" and converted.stored_dtype == "uint8"
    assert converted.source_sha256 == hashlib.sha256(movie.read_bytes()).hexdigest()
    assert converted.output_sha256 == hashlib.sha256((out / "m.tif").read_bytes()).hexdigest()
    assert converted.output_md5 == hashlib.md5((out / "m.tif").read_bytes()).hexdigest()

    broken = tmp_path / "broken.mrc"
    broken.write_bytes(movie.read_bytes()[:-100])
    kept = run_file_task(_task(broken, out / "broken.tif", action="convert", stop=stop))
    assert kept.ok and kept.outcome == "kept-as-is" and "truncated" in kept.message
    assert kept.output_rel_path == "broken.mrc" and (out / "broken.mrc").read_bytes() == broken.read_bytes()
    assert not (out / "broken.tif").exists()

    missing = run_file_task(_task(tmp_path / "gone.txt", out / "gone.txt", action="copy", stop=stop))
    assert not missing.ok and "cannot be read" in missing.message

    stop.touch()
    stopped = run_file_task(_task(movie, out / "again.tif", action="convert", stop=stop))
    assert stopped.stopped and not stopped.ok
    assert not (out / "again.tif").exists()
    assert temporaries(tmp_path) == []


# ---------------------------------------------------------------- whole runs


def test_compress_makes_a_complete_bag_and_leaves_the_source_alone(tmp_path: Path, client: Any) -> None:
    source = make_drive(tmp_path / "src")
    before = snapshot_tree(source)
    events: list[Any] = []
    summary = compress_drive(source, tmp_path / "bag", client=client, options=NO_GAIN, on_event=events.append)
    dest = tmp_path / "bag"
    assert snapshot_tree(source) == before
    assert summary.bag_written and summary.complete and not summary.all_converted
    assert (summary.n_converted, summary.n_copied, summary.n_kept_as_is, summary.n_failed) == (4, 8, 1, 0)
    assert [problem.rel_path for problem in summary.kept_as_is] == ["Session 1/Movies/corrupt.mrc"]
    assert summary.payload_size_bytes < summary.source_size_bytes
    plan = next(event for event in events if isinstance(event, PlanEvent))
    assert (plan.n_files, plan.n_todo) == (13, 13)
    assert sum(isinstance(event, FileEvent) for event in events) == 13
    result = verify_bag(dest, full=True)
    assert result.ok, result.problems
    assert result.n_tiffs_decoded == 4
    recover_everything(source, dest, tmp_path / "scratch")
    listed = (dest / "ascp-file-list.txt").read_text(encoding="utf-8").splitlines()
    assert "data/Session 1/Movies/movie_001.tif" in listed and "manifest-sha256.txt" in listed
    assert len([line for line in listed if line.startswith("data/")]) == 13
    assert temporaries(dest) == []


def test_rerun_does_only_what_changed(tmp_path: Path, client: Any) -> None:
    source = make_drive(tmp_path / "src")
    dest = tmp_path / "bag"
    compress_drive(source, dest, client=client, options=NO_GAIN)
    again = compress_drive(source, dest, client=client, options=NO_GAIN)
    assert again.n_done_this_run == 0 and again.n_up_to_date == 13 and again.bag_written

    # a changed source, a lost output, a vanished source and a new file
    rng = np.random.default_rng(9)
    write_mrc(
        source / "Session 1" / "Movies" / "movie_001.mrc", rng.poisson(2.0, (6, 64, 64)).astype(np.float32)
    )
    (dest / "data" / "notes.txt").unlink()
    (source / "a" / "b" / "c" / "deep.log").unlink()
    (source / "new.star").write_text("data_new\n", encoding="utf-8")
    third = compress_drive(source, dest, client=client, options=NO_GAIN)
    assert (third.n_converted, third.n_copied) == (1, 2)
    assert third.n_up_to_date == 10 and third.n_stale_removed == 1
    assert not (dest / "data" / "a" / "b" / "c" / "deep.log").exists()
    manifest = read_manifest(dest / "manifest-sha256.txt")
    assert "data/new.star" in manifest and "data/a/b/c/deep.log" not in manifest
    assert verify_bag(dest).ok
    recover_everything(source, dest, tmp_path / "scratch")


def test_destination_checks(tmp_path: Path, client: Any) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a", encoding="utf-8")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious", encoding="utf-8")
    with pytest.raises(PipelineError, match="not empty and was not made by empcompress"):
        compress_drive(source, foreign, client=client)
    assert (foreign / "keep.txt").read_text(encoding="utf-8") == "precious"
    with pytest.raises(PipelineError, match="inside the source"):
        compress_drive(source, source / "bag", client=client)
    with pytest.raises(PipelineError, match="contains the source"):
        compress_drive(source, tmp_path, client=client)
    dest = tmp_path / "bag"
    # what a run killed before its journal existed leaves behind is accepted
    (dest / ".empcompress").mkdir(parents=True)
    (dest / ".empcompress" / "lock").write_text("", encoding="utf-8")
    (dest / "data" / "empty folder").mkdir(parents=True)
    compress_drive(source, dest, client=client)
    other = tmp_path / "src2"
    other.mkdir()
    with pytest.raises(PipelineError, match="was made from"):
        compress_drive(other, dest, client=client)


def test_a_second_run_on_the_same_destination_is_refused(tmp_path: Path, client: Any) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("a", encoding="utf-8")
    dest = tmp_path / "bag"
    with Journal.open(dest, source=str(source.resolve())), pytest.raises(JournalLockedError, match="refused"):
        compress_drive(source, dest, client=client)


def test_stopping_keeps_finished_files_and_leaves_no_temporaries(tmp_path: Path, client: Any) -> None:
    source = make_drive(tmp_path / "src", shape=(128, 128), n_frames=8, n_extra_movies=6)
    dest = tmp_path / "bag"
    stop = threading.Event()

    def stop_after_first(event: Any) -> None:
        if isinstance(event, FileEvent):
            stop.set()

    summary = compress_drive(
        source,
        dest,
        client=client,
        options=CompressOptions(gain_sets=False, max_in_flight=2),
        on_event=stop_after_first,
        stop=stop,
    )
    assert summary.interrupted and not summary.bag_written
    assert 0 < summary.n_done_this_run < summary.n_files  # some files done, not all
    assert not (dest / "bagit.txt").exists()
    assert temporaries(dest) == []
    with Journal.open(dest, source=str(source.resolve())) as journal:
        done = [row for row in journal.entries().values() if row.state == STATE_DONE]
    assert len(done) == summary.n_done_this_run
    for row in done:  # every row in the journal describes a present, complete output
        assert (dest / "data" / row.output_rel_path).stat().st_size == row.output_size_bytes
    finished = compress_drive(source, dest, client=client, options=NO_GAIN)
    assert finished.complete and finished.n_up_to_date == len(done)
    assert verify_bag(dest).ok
    recover_everything(source, dest, tmp_path / "scratch")


@pytest.mark.skipif(gain_support() is None, reason="needs empcompress.gain (issue 3)")
def test_gain_normalised_sets_get_one_gain_reference(tmp_path: Path, client: Any) -> None:
    source = make_drive(tmp_path / "src", gain_sets=True, n_frames=16)
    dest = tmp_path / "bag"
    summary = compress_drive(source, dest, client=client)
    (gain,) = summary.gain_references
    assert gain.output_rel_path == "Gain set/gain-reference.mrc"
    assert gain.n_members == 3 and gain.n_converted_with_gain == 3
    assert "data/Gain set/gain-reference.mrc" in read_manifest(dest / "manifest-sha256.txt")
    with_gain = [d for d in summary.decisions if "gain reference" in d.stored_dtype]
    assert with_gain and with_gain[0].n_movies == 3
    assert verify_bag(dest).ok
    recover_everything(source, dest, tmp_path / "scratch")
    # resumed runs reuse the gain reference
    again = compress_drive(source, dest, client=client)
    assert again.n_done_this_run == 0 and len(again.gain_references) == 1
    # a lost gain reference is estimated again, and the movies that used it are redone
    (dest / "data" / "Gain set" / "gain-reference.mrc").unlink()
    redone = compress_drive(source, dest, client=client)
    assert redone.n_converted == 3 and redone.n_up_to_date == redone.n_files - 3
    assert verify_bag(dest).ok
    recover_everything(source, dest, tmp_path / "scratch")


@pytest.mark.skipif(gain_support() is None, reason="needs empcompress.gain (issue 3)")
def test_two_sessions_mixed_in_one_folder_form_two_gain_groups(tmp_path: Path, client: Any) -> None:
    """A movie from another gain is never forced onto the first gain: it gets a group of its own."""
    from drives import gain_normalised_movie

    rng = np.random.default_rng(5)
    source = tmp_path / "src"
    gain_a = rng.uniform(0.8, 1.25, (48, 48)).astype(np.float32)
    gain_b = rng.uniform(0.8, 1.25, (48, 48)).astype(np.float32)
    for index in range(4):
        write_mrc(source / "set" / f"a_{index}.mrc", gain_normalised_movie(rng, gain_a, 16))
    write_mrc(source / "set" / "b_other_session.mrc", gain_normalised_movie(rng, gain_b, 16))
    dest = tmp_path / "bag"
    summary = compress_drive(source, dest, client=client, options=CompressOptions(gain_sample_movies=4))
    assert summary.complete and not summary.kept_as_is
    with Journal.open(dest, source=str(source.resolve())) as journal:
        rows = journal.entries()
    reference_a = rows["set/a_0.mrc"].gain_reference
    reference_b = rows["set/b_other_session.mrc"].gain_reference
    assert reference_a and reference_b and reference_a != reference_b
    assert all(rows[f"set/a_{index}.mrc"].gain_reference == reference_a for index in range(4))
    assert {row.stored_dtype for row in rows.values()} == {"uint8"}
    assert sorted(g.n_converted_with_gain for g in summary.gain_references) == [1, 4]
    assert verify_bag(dest, full=True).ok
    recover_everything(source, dest, tmp_path / "scratch")
