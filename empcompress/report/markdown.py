"""report.md: the report for people (status, tables of categories, storage decisions and gain
groups, problems, the last run, how to upload; lists capped at :data:`MAX_LISTED_FILES`), and
its sections linking report.html's pictures and the EMPIAR deposition."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ..journal import STATE_DONE, JournalEntry
from .display import _utf8, display_path, human_bytes
from .names import DEPOSITION_JSON, FILE_LIST, REPORT_HTML, REPORT_JSON
from .summary import CompressSummary, FileProblem, GainSetReport

__all__ = ["MAX_LISTED_FILES", "render_markdown"]


#: report.md lists at most this many files per list (the rest: "N more: see report.json", which has
#: every file), so that a drive of 100,000 files gives a report a person can read
MAX_LISTED_FILES = 1000


def _how(gain: GainSetReport) -> str:
    try:
        detail = json.loads(gain.detail)
    except ValueError:
        detail = {}
    return str(detail.get("how", "")) if isinstance(detail, dict) else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _capped(lines: list[str], n_total: int, what: str) -> list[str]:
    """A list's first lines, and how many more there are in report.json."""
    if n_total <= len(lines):
        return lines
    return [*lines, f"- ... {n_total - len(lines)} more {what}: see `{REPORT_JSON}`"]


def _problem_lines(problems: Sequence[FileProblem]) -> list[str]:
    lines = [f"- `{display_path(p.rel_path)}`: {p.reason}" for p in problems[:MAX_LISTED_FILES]]
    return _capped(lines, len(problems), "files")


def render_markdown(summary: CompressSummary, entries: Sequence[JournalEntry]) -> str:
    """The content of report.md."""
    status = (
        "INCOMPLETE: the audit of the bag failed (see Audit problems); it is not sealed"
        if summary.audit_problems
        else "complete: every movie converted and verified, every other file copied; audit passed"
        if summary.all_converted
        else "complete, but some movies were kept as they were (see below); audit passed"
        if summary.complete
        else "INCOMPLETE: some files are not in the bag (see Failures)"
    )
    lines = [
        "# empcompress report",
        "",
        f"- Source: `{summary.source}`",
        f"- Bag: `{summary.dest}` (BagIt 1.0; payload under `data/`)",
        f"- Tool: empcompress {__version__}",
        f"- Status: {status}",
        f"- Size: {human_bytes(summary.source_size_bytes)} -> {human_bytes(summary.payload_size_bytes)} "
        f"({summary.ratio:.2f}x smaller)",
        "",
        "## Files by category",
        "",
        *_table(
            ("category", "files", "source", "in the bag"),
            [
                (c.category, c.n_files, human_bytes(c.source_size_bytes), human_bytes(c.output_size_bytes))
                for c in summary.categories
                if c.n_files
            ],
        ),
        "",
        "## Storage decisions",
        "",
        *_table(
            ("stored as", "codec", "movies", "source", "TIFF", "ratio"),
            [
                (
                    d.stored_dtype,
                    d.codec,
                    d.n_movies,
                    human_bytes(d.source_size_bytes),
                    human_bytes(d.output_size_bytes),
                    f"{d.source_size_bytes / max(1, d.output_size_bytes):.2f}",
                )
                for d in summary.decisions
            ],
        ),
    ]
    if summary.gain_references:
        lines += ["", "## Gain groups", ""]
        lines += [
            "Gain-normalised movies are grouped by the gain they share, wherever they are on the drive;",
            "each group's movies are stored as counts with one reference, in each movie's own orientation.",
            "",
        ]
        lines += _table(
            ("reference", "origin", "movies", "orientations (RELION)", "how"),
            [
                (
                    f"`data/{gain.output_rel_path}`",
                    "found on the drive" if gain.origin == "depositor" else "estimated",
                    gain.n_converted_with_gain,
                    ", ".join(
                        f"{n} x {orientation}"
                        for orientation, n in Counter(
                            m.relion_orientation for m in gain.members
                        ).most_common()
                    ),
                    _how(gain),
                )
                for gain in summary.gain_references
            ],
        )
    if summary.gain_left_out:
        lines += ["", f"## Gain-normalised movies in no gain group ({len(summary.gain_left_out)})", ""]
        lines += ["Stored as lossless float32 (bigger, nothing lost):", ""]
        lines += _problem_lines(summary.gain_left_out)
    for title, problems in (
        ("Audit problems", summary.audit_problems),
        ("Failures (not in the bag; the same command retries them)", summary.failures),
        ("Movies kept as they were (copied byte for byte, not converted)", summary.kept_as_is),
        ("Not touched", summary.not_touched),
    ):
        if problems:
            lines += ["", f"## {title}", ""]
            lines += _problem_lines(problems)
    if summary.empty_folders:
        lines += ["", "## Empty folders (a bag holds files only; recreate them from this list)", ""]
        folders = summary.empty_folders
        lines += _capped(
            [f"- `{display_path(folder)}`" for folder in folders[:MAX_LISTED_FILES]], len(folders), "folders"
        )
    lines += [
        "",
        "## Last run",
        "",
        f"- Started {summary.started_at}, {summary.elapsed_seconds:.1f} s on {summary.cluster}",
        f"- {summary.n_converted} converted, {summary.n_copied} copied, {summary.n_kept_as_is} kept as they "
        f"were, {summary.n_failed} failed, {summary.n_up_to_date} already done",
        "",
        "## Upload",
        "",
        f"`{FILE_LIST}` lists every verified file of the bag, relative to the bag's folder:",
        "`cd <bag> && ascp -k3 --file-list=ascp-file-list.txt ...`.",
        "Check the bag after transfer with `empcompress verify <bag>` (add `--full` to decode every TIFF),",
        "`bagit.py --validate <bag>` or `cd <bag> && sha256sum -c manifest-sha256.txt`.",
        "",
        "## Files",
        "",
        *_table(
            ("source", "outcome", "in the bag", "stored as"),
            [
                (
                    display_path(entry.rel_path),
                    entry.outcome or entry.state,
                    f"data/{entry.output_rel_path}" if entry.state == STATE_DONE else "-",
                    entry.stored_dtype or "-",
                )
                for entry in entries[:MAX_LISTED_FILES]
            ],
        ),
    ]
    if len(entries) > MAX_LISTED_FILES:
        lines += ["", f"... and {len(entries) - MAX_LISTED_FILES} more files: see `{REPORT_JSON}`."]
    lines.append("")
    return "\n".join(lines)


def _hand_off_markdown(deposition: Any, pictures: Sequence[tuple[str, str]]) -> str:
    """report.md's sections on the pictures (links into report.html) and the EMPIAR deposition."""
    lines = ["", "## Pictures", "", f"In `{REPORT_HTML}` (one self-contained page):", ""]
    lines += [f"- [{title}]({REPORT_HTML}#{anchor})" for anchor, title in pictures]
    lines += ["", "## EMPIAR deposition", ""]
    if deposition is None:
        return "\n".join([*lines, "Not written.", ""])
    state = "valid against the EMPIAR deposition schema" if deposition.schema.valid else "not yet valid"
    written = "" if deposition.written else " (the existing file was left as it is: see below)"
    lines.append(f"`{DEPOSITION_JSON}`{written}: {len(deposition.groups)} imagesets; {state}.")
    if deposition.to_fill:
        lines += [
            "",
            "For a person to fill (`empcompress deposition <bag> --template FILE` merges them):",
            "",
        ]
        lines += [f"- {_utf8(item)}" for item in deposition.to_fill]
    if deposition.problems:
        lines += ["", "Notes:", ""] + [f"- {_utf8(problem)}" for problem in deposition.problems]
    return "\n".join([*lines, ""])
