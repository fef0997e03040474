"""Small files in batches: grouping, the batch task (durable before it returns), and a drive of them."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from drives import make_drive, snapshot_tree
from test_pipeline import recover_everything, temporaries

from empcompress.bag.verify import verify_bag
from empcompress.journal import Journal
from empcompress.pipeline import CompressOptions, batching, compress_drive
from empcompress.pipeline import driver as driver_module
from empcompress.pipeline import tasks as tasks_module
from empcompress.pipeline.tasks import FileOutcome, FileTask, run_file_batch


def _task(tmp_path: Path, name: str, size_bytes: int = 10, action: str = "copy") -> FileTask:
    source = tmp_path / "src" / name
    if not source.exists():
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes((name.encode() * (size_bytes // len(name) + 1))[:size_bytes])
    return FileTask(
        rel_path=name,
        source_path=str(source),
        output_path=str(tmp_path / "out" / name),
        output_rel_path=name,
        action=action,
        category="other",
        stop_path=str(tmp_path / "stop"),
        payload_root=str(tmp_path / "out"),
        source_size_bytes=source.stat().st_size,
    )


def test_batches_take_small_copies_in_queue_order_within_the_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "BATCH_MAX_FILES", 3)
    small = [_task(tmp_path, f"s{i}.xml") for i in range(5)]
    movie = _task(tmp_path, "m.mrc", action="convert")
    big = _task(tmp_path, "big.bin", size_bytes=batching.SMALL_FILE_BYTES + 1)
    assert [batching.is_batchable("file", t) for t in (small[0], movie, big)] == [True, False, False]
    assert not batching.is_batchable("gain", small[0])
    queue: deque[tuple[str, Any]] = deque(("file", t) for t in [*small[1:], movie, *small])
    assert batching.take_batch(queue, small[0]) == small[:3]  # at most 3 files
    assert batching.take_batch(queue, queue.popleft()[1]) == small[3:5]  # stops at the movie
    assert queue[0] == ("file", movie)
    monkeypatch.setattr(batching, "BATCH_MAX_BYTES", small[0].source_size_bytes * 2)
    queue = deque(("file", t) for t in small[1:])
    assert batching.take_batch(queue, small[0]) == small[:2]  # at most 2 files' bytes
    assert batching.n_files([("batch", small[:2]), ("file", movie)]) == 3


def test_a_batch_copies_every_file_and_syncs_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = tuple(_task(tmp_path, f"d/s{i}.xml", size_bytes=100 + i) for i in range(4))
    synced: list[list[str]] = []
    real_sync = tasks_module.sync_file_system

    def sync(paths: list[str]) -> None:
        assert all(Path(path).is_file() for path in paths)  # already in place, not yet recorded
        synced.append(list(paths))
        real_sync(paths)

    monkeypatch.setattr(tasks_module, "sync_file_system", sync)
    outcomes = run_file_batch(tasks)
    assert [o.ok for o in outcomes] == [True] * 4 and [o.rel_path for o in outcomes] == [
        t.rel_path for t in tasks
    ]
    assert synced == [[t.output_path for t in tasks]]
    for task, outcome in zip(tasks, outcomes, strict=True):
        assert Path(task.output_path).read_bytes() == Path(task.source_path).read_bytes()
        assert outcome.output_size_bytes == task.source_size_bytes
    assert temporaries(tmp_path / "out") == []


def test_a_batch_that_cannot_be_made_durable_records_nothing_as_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(paths: list[str]) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(tasks_module, "sync_file_system", fail)
    outcomes = run_file_batch(tuple(_task(tmp_path, f"s{i}.xml") for i in range(3)))
    assert not any(o.ok for o in outcomes)
    assert all(
        "could not be made durable" in o.message and "Input/output error" in o.message for o in outcomes
    )


def test_a_stop_mid_batch_leaves_the_rest_unstarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks = tuple(_task(tmp_path, f"s{i}.xml") for i in range(4))
    real = tasks_module.run_file_task

    def run_then_stop(task: FileTask, **shared: Any) -> FileOutcome:
        outcome = real(task, **shared)
        Path(task.stop_path).touch()  # the driver asks to stop after the first file
        return outcome

    monkeypatch.setattr(tasks_module, "run_file_task", run_then_stop)
    outcomes = run_file_batch(tasks)
    assert outcomes[0].ok and all(o.stopped and not o.ok for o in outcomes[1:])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["s0.xml"]


def test_a_batch_that_died_fails_each_of_its_files() -> None:
    class Died:
        def result(self) -> Any:
            raise RuntimeError("worker lost")

    tasks = [
        FileTask("a", "/a", "/o/a", "a", "copy", "other", "/stop"),
        FileTask("b", "/b", "/o/b", "b", "copy", "other", "/stop"),
    ]
    pairs = list(batching.batch_outcomes(Died(), tasks))
    assert [task.rel_path for task, _ in pairs] == ["a", "b"]
    assert all(not o.ok and "worker lost" in o.message and "run again" in o.message for _, o in pairs)


def test_a_drive_of_many_small_files_goes_in_few_tasks(
    tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_drive(tmp_path / "src")
    for index in range(300):
        folder = source / "EPU" / f"GridSquare_{index // 100}" / "Data"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"FoilHole_{index:04d}.xml").write_text(f"<xml>{index}</xml>", encoding="utf-8")
        (folder / f"FoilHole_{index:04d}.jpg").write_bytes(bytes([index % 256]) * (100 + index))
    before = snapshot_tree(source)
    log = tmp_path / "batches.log"  # tasks are pickled to the workers: a file, not a list, counts them
    real = driver_module.run_file_batch

    def counted(tasks: tuple[FileTask, ...]) -> tuple[FileOutcome, ...]:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{len(tasks)}\n")
        return real(tasks)

    monkeypatch.setattr(driver_module, "run_file_batch", counted)
    commits: list[int] = []  # the driver's journal transactions (each commit syncs the journal's disk)
    real_batch = Journal.batch

    @contextlib.contextmanager
    def counted_batch(journal: Journal) -> Iterator[None]:
        commits.append(len(commits))
        with real_batch(journal):
            yield

    monkeypatch.setattr(Journal, "batch", counted_batch)
    monkeypatch.setattr(driver_module, "COMMIT_SECONDS", 600.0)
    dest = tmp_path / "bag"
    summary = compress_drive(source, dest, client=client, options=CompressOptions(gain_sets=False))
    assert summary.bag_written and summary.sealed and summary.n_failed == 0
    assert summary.n_copied == 608  # 600 small files and the drive's own 8 other files
    batches = [int(line) for line in log.read_text(encoding="utf-8").split()]
    assert sum(batches) >= 600 and len(batches) <= 10, batches
    assert (
        len(commits) == 1
    )  # every row of the drive in one commit (within COMMIT_SECONDS), not one per batch
    assert snapshot_tree(source) == before
    result = verify_bag(dest)
    assert result.ok, result.problems
    recover_everything(source, dest, tmp_path / "scratch")
    assert temporaries(dest) == []
    # a re-run does nothing; a changed small file is redone alone
    (source / "EPU" / "GridSquare_1" / "Data" / "FoilHole_0150.xml").write_text(
        "<xml>new</xml>", encoding="utf-8"
    )
    again = compress_drive(source, dest, client=client, options=CompressOptions(gain_sets=False))
    assert again.n_copied == 1 and again.sealed
    assert (dest / "data" / "EPU" / "GridSquare_1" / "Data" / "FoilHole_0150.xml").read_text(
        encoding="utf-8"
    ) == ("<xml>new</xml>")


def test_batches_are_large_when_many_files_wait_and_shared_out_when_few() -> None:
    assert batching.batch_limit(100_000, 2) == batching.BATCH_MAX_FILES  # ~100 batches, not ~400
    assert batching.batch_limit(600, 2) == 150  # each of 2 threads gets two batches or more
    assert batching.batch_limit(10, 2) == batching.BATCH_MIN_FILES
    queue: deque[tuple[str, Any]] = deque()
    assert batching.take_batch(queue, FileTask("a", "/a", "/o/a", "a", "copy", "other", "/stop")) != []


def test_a_batch_makes_each_output_folder_once_and_names_its_worker_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = tuple(_task(tmp_path, f"g{i % 3}/d/s{i}.xml", size_bytes=50 + i) for i in range(12))
    made: list[str] = []
    real_makedirs = tasks_module.os.makedirs

    def makedirs(folder: str, exist_ok: bool = False) -> None:
        if not made or made[-1] != "(inside)":  # not os.makedirs making a parent of the folder
            made.append(folder)
        made.append("(inside)")
        try:
            real_makedirs(folder, exist_ok=exist_ok)
        finally:
            made.pop()

    names: list[str] = []
    real_name = tasks_module._worker_name

    def worker_name() -> str:
        names.append(real_name())
        return names[-1]

    monkeypatch.setattr(tasks_module.os, "makedirs", makedirs)
    monkeypatch.setattr(tasks_module, "_worker_name", worker_name)
    outcomes = run_file_batch(tasks)
    assert all(o.ok for o in outcomes) and len(names) == 1
    assert sorted(made) == sorted({str(Path(t.output_path).parent) for t in tasks})  # 3 folders, once each
    for task, outcome in zip(tasks, outcomes, strict=True):
        assert Path(task.output_path).read_bytes() == Path(task.source_path).read_bytes()
        assert outcome.worker == names[0] and outcome.output_size_bytes == task.source_size_bytes
    assert temporaries(tmp_path / "out") == []
