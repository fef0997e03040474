"""What report.json says (its schema): the head (totals, groups, problems and the last run of
the bag) and one record per file of the journal, made one at a time."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from typing import Any

from .. import __version__
from ..journal import STATE_DONE, GeneratedEntry, JournalEntry
from ..manifest import PAYLOAD_DIRNAME
from .display import display_path
from .summary import CompressSummary, GainMember

__all__ = ["report_head", "file_records", "report_document"]


def _path_fields(rel_path: str) -> dict[str, str]:
    raw = os.fsencode(rel_path)
    try:
        return {"source": raw.decode("utf-8")}
    except UnicodeDecodeError:  # the exact bytes, so that the original tree can be rebuilt
        return {"source": display_path(rel_path), "source_path_hex": raw.hex()}


def _file_record(entry: JournalEntry, member: GainMember | None = None) -> dict[str, Any]:
    return {
        **_path_fields(entry.rel_path),
        "output": f"{PAYLOAD_DIRNAME}/{entry.output_rel_path}" if entry.state == STATE_DONE else None,
        "category": entry.category,
        "state": entry.state,
        "outcome": entry.outcome,
        "source_size_bytes": entry.source_size_bytes,
        "source_sha256": entry.source_sha256,
        "output_size_bytes": entry.output_size_bytes,
        "output_sha256": entry.output_sha256,
        "output_md5": entry.output_md5,
        "stored_dtype": entry.stored_dtype,
        "storage_decision": entry.decision,
        "codec": entry.codec,
        "gain_reference": f"{PAYLOAD_DIRNAME}/{entry.gain_reference}" if entry.gain_reference else None,
        "gain_orientation": member.orientation if member else None,
        "gain_relion_orientation": member.relion_orientation if member else None,
        "message": entry.message,
    }


def report_head(summary: CompressSummary, generated: Iterable[GeneratedEntry]) -> dict[str, Any]:
    """report.json's content before its ``files`` (the totals, groups and problems of the bag)."""
    generated_paths = {entry.output_rel_path for entry in generated}
    last_run = {
        "started_at": summary.started_at,
        "elapsed_seconds": round(summary.elapsed_seconds, 3),
        "cluster": summary.cluster,
        "already_done": summary.n_up_to_date,
        "converted": summary.n_converted,
        "copied": summary.n_copied,
        "kept_as_is": summary.n_kept_as_is,
        "failed": summary.n_failed,
        "bytes_read": summary.bytes_read,
        "bytes_written": summary.bytes_written,
        "stale_outputs_removed": summary.n_stale_removed,
    }
    return {
        "tool": "empcompress",
        "tool_version": __version__,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": summary.source,
        "destination": summary.dest,
        "complete": summary.complete,
        "audit": "passed" if not summary.audit_problems else "failed",
        "audit_problems": [asdict(problem) for problem in summary.audit_problems],
        "all_movies_converted": summary.all_converted,
        "totals": {
            "files": summary.n_files,
            "source_size_bytes": summary.source_size_bytes,
            "payload_size_bytes": summary.payload_size_bytes,
            "ratio": round(summary.ratio, 4),
        },
        "categories": [asdict(category) for category in summary.categories],
        "storage_decisions": [asdict(decision) for decision in summary.decisions],
        "gain_references": [
            {
                **asdict(group),
                "output_rel_path": f"{PAYLOAD_DIRNAME}/{group.output_rel_path}",
                "members": [{**_path_fields(member.rel_path), **asdict(member)} for member in group.members],
                "generated": group.output_rel_path in generated_paths,
            }
            for group in summary.gain_references
        ],
        "gain_left_out": [asdict(problem) for problem in summary.gain_left_out],
        "failures": [asdict(problem) for problem in summary.failures],
        "kept_as_is": [asdict(problem) for problem in summary.kept_as_is],
        "not_touched": [asdict(problem) for problem in summary.not_touched],
        "empty_folders": [display_path(folder) for folder in summary.empty_folders],
        "last_run": last_run,
    }


def file_records(summary: CompressSummary, entries: Iterable[JournalEntry]) -> Iterator[dict[str, Any]]:
    """report.json's ``files``, one record at a time (never all of them at once)."""
    orientations = {member.rel_path: member for group in summary.gain_references for member in group.members}
    for entry in entries:
        yield _file_record(entry, orientations.get(entry.rel_path))


def report_document(
    summary: CompressSummary, entries: Iterable[JournalEntry], generated: Iterable[GeneratedEntry]
) -> dict[str, Any]:
    """The content of report.json, in memory (small bags and tests; :func:`write_reports` streams it)."""
    return {**report_head(summary, generated), "files": list(file_records(summary, entries))}
