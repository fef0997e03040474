"""The compress job's journal: rows, exclusive lock, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from empcompress.errors import JournalLockedError, PipelineError
from empcompress.journal import (
    STATE_DONE,
    STATE_FAILED,
    GeneratedEntry,
    Journal,
    JournalEntry,
    is_journal_dest,
    journal_path,
)


def _entry(rel_path: str, **changes: object) -> JournalEntry:
    entry = JournalEntry(
        rel_path=rel_path,
        category="movie",
        action="convert",
        state=STATE_DONE,
        source_size_bytes=1234,
        source_mtime_ns=5678,
        output_rel_path=rel_path + ".tif",
        source_sha256="ab" * 32,
        outcome="converted",
        output_size_bytes=99,
        output_sha256="cd" * 32,
        output_md5="ef" * 16,
        stored_dtype="uint8",
        decision="float32 values are exact integers",
        codec="deflate, huffman-only",
        message="",
        attempts=1,
        elapsed_seconds=0.5,
    )
    return replace(entry, **changes)  # type: ignore[arg-type]


def test_rows_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    with Journal.open(tmp_path, source="/src") as journal:
        first = journal.record(_entry("a/movie é 1.mrc"))
        journal.record(_entry("b.txt", action="copy", outcome="copied", output_rel_path="b.txt"))
        journal.record(_entry("c.mrc", state=STATE_FAILED, message="cannot be read (Permission denied)"))
        assert first.updated_at > 0
    assert is_journal_dest(tmp_path)
    with Journal.open(tmp_path, source="/src") as journal:
        entries = journal.entries()
        assert list(entries) == ["a/movie é 1.mrc", "b.txt", "c.mrc"]
        assert entries["a/movie é 1.mrc"] == first
        assert entries["c.mrc"].state == STATE_FAILED
        assert journal.get("missing") is None
        journal.remove("b.txt")
        assert journal.get("b.txt") is None
        # replacing a row keeps one row per file
        journal.record(_entry("c.mrc", attempts=2))
        assert journal.entries()["c.mrc"].attempts == 2


def test_generated_entries_round_trip(tmp_path: Path) -> None:
    with Journal.open(tmp_path, source="/src") as journal:
        journal.record_generated(
            GeneratedEntry(
                "set/gain-reference.mrc", "gain-reference", STATE_DONE, 10, "a" * 64, "b" * 32, '{"n": 3}'
            )
        )
        (entry,) = journal.generated_entries().values()
        assert entry.detail == {"n": 3}
        journal.remove_generated("set/gain-reference.mrc")
        assert journal.generated_entries() == {}


def test_a_second_open_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    with Journal.open(tmp_path, source="/src"):
        with pytest.raises(JournalLockedError) as raised:
            Journal.open(tmp_path, source="/src")
        message = str(raised.value)
        assert str(tmp_path) in message
        assert f"pid {os.getpid()}" in message
        assert "refused" in message
    # released on close
    Journal.open(tmp_path, source="/src").close()


def test_another_source_is_refused(tmp_path: Path) -> None:
    Journal.open(tmp_path, source="/drive-a").close()
    with pytest.raises(PipelineError, match="made from /drive-a, not /drive-b"):
        Journal.open(tmp_path, source="/drive-b")
    # and the lock was released by the refusal
    Journal.open(tmp_path, source="/drive-a").close()


def test_a_corrupt_journal_gives_a_clear_error(tmp_path: Path) -> None:
    path = journal_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(PipelineError, match="journal cannot be opened"):
        Journal.open(tmp_path, source="/src")


_WRITER = textwrap.dedent(
    """
    import sys
    from empcompress.journal import Journal, JournalEntry
    journal = Journal.open(sys.argv[1], source="/src")
    print("locked", flush=True)
    index = 0
    while True:
        name = f"file-{index:06d}"
        journal.record(JournalEntry(name, "other", "copy", "done", index, index, name, message="x" * 200))
        index += 1
    """
)


def test_kill_9_leaves_a_consistent_journal_and_releases_the_lock(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(JournalLockedError):
            Journal.open(tmp_path, source="/src")
        time.sleep(0.5)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    with Journal.open(tmp_path, source="/src") as journal:
        entries = journal.entries()
    assert len(entries) > 0
    for index, (name, entry) in enumerate(sorted(entries.items())):
        # every committed row is whole, and rows were committed in order without gaps
        assert name == f"file-{index:06d}"
        assert entry.source_size_bytes == index and entry.message == "x" * 200
    # and the database passes SQLite's own check
    connection = sqlite3.connect(journal_path(tmp_path))
    assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    connection.close()
