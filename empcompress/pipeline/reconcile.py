"""Reconciliation of SRC, the journal and DEST's payload: what is up to date, what must go.

Runs in the driver process only (the journal's one writer). Before the work:
temporaries of interrupted runs are removed, generated files are checked against
their recorded sha256, the layout is drawn (journal names first), and each source
is compared with its journal row. After the work: generated files nothing uses and
payload files no row accounts for are removed, never a file a TIFF still needs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from ..files import file_sha256, is_temporary_name
from ..journal import OUTCOME_CONVERTED, STATE_DONE, GeneratedEntry, Journal, JournalEntry
from ..scan import ACTION_CONVERT, FileEntry
from .layout import KIND_CONVERTED, KIND_COPIED, PayloadLayout, PlannedSource

__all__ = [
    "sweep_temporaries",
    "prune_empty_folders",
    "check_generated",
    "draw_layout",
    "forget_vanished",
    "is_up_to_date",
    "forget_unused_generated",
    "remove_orphans",
    "remove_output",
]


def sweep_temporaries(dest: str | os.PathLike[str]) -> int:
    """Remove temporary files left in DEST by interrupted runs; returns how many."""
    removed = 0
    for directory, _, names in os.walk(dest):
        for name in names:
            if is_temporary_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    removed += 1
    return removed


def _size_is(path: Path, size_bytes: int) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and path.stat().st_size == size_bytes
    except OSError:
        return False


def check_generated(journal: Journal, payload: Path) -> set[str]:
    """Generated files no longer in DEST exactly as written (size and sha256); their rows are removed
    and the movies that need them must be redone. Returns their payload paths."""
    lost = set()
    for name, entry in journal.generated_entries().items():
        path = payload / name
        intact = entry.state == STATE_DONE and _size_is(path, entry.output_size_bytes)
        if intact:
            try:
                intact = file_sha256(path) == entry.output_sha256
            except OSError:
                intact = False
        if not intact:
            journal.remove_generated(name)
            lost.add(name)
    return lost


def draw_layout(
    entries: Iterable[FileEntry], rows: dict[str, JournalEntry], generated: Iterable[str]
) -> tuple[PayloadLayout, list[str]]:
    """The layout of this run: journal names first (stable), then new names. Also returns the
    generated files whose path a source now holds (they must be made again)."""
    layout = PayloadLayout()
    lost = layout.assign_sources(
        (
            PlannedSource(
                entry.rel_path,
                KIND_CONVERTED if entry.action == ACTION_CONVERT else KIND_COPIED,
                rows[entry.rel_path].output_rel_path if entry.rel_path in rows else "",
            )
            for entry in entries
        ),
        generated=generated,
    )
    return layout, lost


def remove_output(payload: Path, rel_path: str, *, layout: PayloadLayout | None) -> bool:
    """Remove one output of ours from the payload, never a path this run's layout has given out."""
    if not rel_path or (layout is not None and layout.owner(rel_path) is not None):
        return False
    path = payload / rel_path
    try:
        if not path.resolve().is_relative_to(payload.resolve()) or path.is_symlink():
            return False
        path.unlink()
        return True
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return False


def forget_vanished(
    journal: Journal,
    rows: dict[str, JournalEntry],
    entries: dict[str, FileEntry],
    payload: Path,
    layout: PayloadLayout,
    *,
    unreadable: tuple[str, ...] = (),
) -> int:
    """Remove the outputs and rows of sources that are no longer in SRC.

    A source under a folder (or a file) that could not be read this time has not vanished: its row
    and output stay (the run fails, says why, and the next one that can read it goes on).
    """
    removed = 0
    for rel_path, row in list(rows.items()):
        if rel_path in entries or _under_any(rel_path, unreadable):
            continue
        if row.state == STATE_DONE:
            remove_output(payload, row.output_rel_path, layout=layout)
        journal.remove(rel_path)
        del rows[rel_path]
        removed += 1
    return removed


def _under_any(rel_path: str, folders: tuple[str, ...]) -> bool:
    return any(folder in (".", rel_path) or rel_path.startswith(folder + "/") for folder in folders)


def prune_empty_folders(payload: Path) -> int:
    """Remove empty folders of the payload (a folder whose files went, where a file may now go)."""
    removed = 0
    for directory, folders, names in os.walk(payload, topdown=False):
        if Path(directory) != payload and not folders and not names:
            with contextlib.suppress(OSError):
                os.rmdir(directory)
                removed += 1
    return removed


def is_up_to_date(
    entry: FileEntry, row: JournalEntry | None, payload: Path, layout: PayloadLayout, lost: set[str]
) -> bool:
    """Done, same source (size, mtime, and ctime and inode where recorded), same name, output present."""
    if row is None or row.state != STATE_DONE or row.action != entry.action:
        return False
    if (row.source_size_bytes, row.source_mtime_ns) != (entry.size_bytes, entry.mtime_ns):
        return False
    if row.source_ctime_ns and entry.ctime_ns and row.source_ctime_ns != entry.ctime_ns:
        return False
    if row.source_inode and entry.inode and row.source_inode != entry.inode:
        return False
    expected = layout.output_of(entry.rel_path)
    if row.outcome != OUTCOME_CONVERTED:
        expected = layout.kept_output_of(entry.rel_path) if entry.action == ACTION_CONVERT else expected
    if row.output_rel_path != expected or (row.gain_reference and row.gain_reference in lost):
        return False
    return _size_is(payload / row.output_rel_path, row.output_size_bytes)


def forget_unused_generated(
    journal: Journal, rows: dict[str, JournalEntry], generated: dict[str, GeneratedEntry], payload: Path
) -> dict[str, GeneratedEntry]:
    """Remove generated files no finished movie uses any more (after a complete run)."""
    used = {row.gain_reference for row in rows.values() if row.state == STATE_DONE and row.gain_reference}
    kept = {}
    for name, entry in generated.items():
        if name in used:
            kept[name] = entry
            continue
        journal.remove_generated(name)
        remove_output(payload, name, layout=None)
    return kept


def remove_orphans(payload: Path, expected: set[str]) -> int:
    """Remove payload files that are not ``expected`` (outputs of earlier, interrupted attempts)."""
    if payload.is_symlink() or not payload.is_dir():
        return 0  # never walk into what a link points at
    removed = 0
    for directory, folders, names in os.walk(payload):
        for name in names + [folder for folder in folders if os.path.islink(os.path.join(directory, folder))]:
            path = Path(directory) / name
            rel = path.relative_to(payload).as_posix()
            if rel not in expected:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
    prune_empty_folders(payload)
    return removed
