"""The seal: audit the finished payload, then write ``bagit.txt`` last.

``bagit.txt`` is what makes DEST a bag, so it is written only after an audit that
decodes nothing (fast): every source file of the plan maps to exactly one payload
file (or is a failure of this run), no two outputs share a path (case-insensitively
either), and :func:`empcompress.manifest.audit_bag` finds the payload exactly as
the journal describes it: every file listed once in each manifest with its
recorded size, nothing else in ``data/``, and every TIFF's gain reference present
with the sha256 its record names. The same audit runs in ``verify DEST``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..journal import OUTCOME_COPIED, STATE_DONE, GeneratedEntry, JournalEntry
from ..manifest import BagProblem, PayloadFile, audit_bag, seal_bag, write_bag
from ..scan import FileEntry
from .layout import path_key

__all__ = ["SealResult", "expected_payload", "audit_mapping", "write_and_seal"]


@dataclass(frozen=True)
class SealResult:
    sealed: bool
    problems: tuple[BagProblem, ...]


def expected_payload(
    rows: dict[str, JournalEntry], generated: dict[str, GeneratedEntry], entries: Container[str]
) -> list[PayloadFile]:
    """What ``data/`` must hold: the outputs of the finished sources named in ``entries`` and every
    generated file in use."""
    files = [
        PayloadFile(row.output_rel_path, row.output_size_bytes, row.output_sha256, row.output_md5)
        for name, row in sorted(rows.items())
        if name in entries and row.state == STATE_DONE
    ]
    files += [
        PayloadFile(entry.output_rel_path, entry.output_size_bytes, entry.output_sha256, entry.output_md5)
        for entry in generated.values()
        if entry.state == STATE_DONE
    ]
    return files


def audit_mapping(
    rows: dict[str, JournalEntry], generated: dict[str, GeneratedEntry], entries: dict[str, FileEntry]
) -> list[BagProblem]:
    """Every source maps to exactly one payload file; no payload path is shared by two owners."""
    problems: list[BagProblem] = []
    owners: defaultdict[str, list[str]] = defaultdict(list)  # path key -> the outputs with that key
    # a TIFF names our reference (a generated file) or a depositor's (the bag's copy of it)
    references = set(generated) | {
        row.output_rel_path
        for row in rows.values()
        if row.state == STATE_DONE and row.outcome == OUTCOME_COPIED
    }
    for rel_path in entries:
        row = rows.get(rel_path)
        if row is None:
            problems.append(BagProblem(rel_path, "a source file with no journal row: it is not in the bag"))
        elif row.state == STATE_DONE:
            owners[path_key(row.output_rel_path)].append(row.output_rel_path)
            if row.gain_reference and row.gain_reference not in references:
                problems.append(
                    BagProblem(
                        f"data/{row.output_rel_path}",
                        f"needs {row.gain_reference}, which is not in the journal as a file of this bag",
                    )
                )
    for name, entry in generated.items():
        if entry.state == STATE_DONE:
            owners[path_key(name)].append(name)
    for paths in owners.values():
        if len(paths) > 1:
            problems += [
                BagProblem(f"data/{path}", f"{len(paths)} outputs share this path") for path in paths
            ]
    return problems


def write_and_seal(
    dest: Path,
    *,
    payload: Sequence[PayloadFile],
    bag_info: Sequence[tuple[str, str]],
    tag_files: Sequence[str],
    mapping_problems: Sequence[BagProblem],
    seal: bool = True,
) -> SealResult:
    """Write manifests and tag files, audit, and seal only when the audit finds nothing (and ``seal``:
    a run with failures leaves a consistent but unsealed bag, which the next run finishes)."""
    write_bag(dest, payload=payload, bag_info=bag_info, tag_files=tag_files)
    problems = tuple(mapping_problems) + tuple(audit_bag(dest, expected=payload, sealed=False))
    if problems or not seal:
        return SealResult(False, problems)
    seal_bag(dest)
    return SealResult(True, ())
