"""The seal's mapping audit, and which files a failed audit has redone."""

from __future__ import annotations

from empcompress.journal import STATE_DONE, JournalEntry
from empcompress.pipeline.run import _redo_for
from empcompress.pipeline.seal import audit_mapping
from empcompress.scan import FileEntry


def _entry(rel_path: str) -> FileEntry:
    return FileEntry(rel_path, 1, 1, "movie", "convert", "")


def _row(rel_path: str, output: str, *, gain: str = "") -> JournalEntry:
    return JournalEntry(rel_path, "movie", "convert", STATE_DONE, 1, 1, output, gain_reference=gain)


def test_shared_paths_and_missing_rows_are_named_and_redone() -> None:
    entries = {name: _entry(name) for name in ("A.mrc", "a.mrc", "b.mrc", "c.mrc")}
    rows = {
        "A.mrc": _row("A.mrc", "A.tif"),
        "a.mrc": _row("a.mrc", "a.tif"),  # the same file on macOS and Windows
        "c.mrc": _row("c.mrc", "c.tif", gain="gone.mrc"),  # needs a reference the journal does not know
    }
    problems = audit_mapping(rows, {}, entries)
    named = {problem.rel_path for problem in problems}
    assert {"data/A.tif", "data/a.tif", "b.mrc", "data/c.tif"} <= named
    assert _redo_for(tuple(problems), rows, entries) == {"A.mrc", "a.mrc", "b.mrc", "c.mrc"}


def test_a_consistent_mapping_has_no_problem() -> None:
    entries = {name: _entry(name) for name in ("x.mrc", "y.mrc")}
    rows = {"x.mrc": _row("x.mrc", "x.tif"), "y.mrc": _row("y.mrc", "y.tif")}
    assert audit_mapping(rows, {}, entries) == []
