"""What a compress job did, for machines and for people.

Five files are written at the top of DEST, beside ``bagit.txt``: they are *tag
files* of the bag (outside the payload ``data/``, so the payload mirrors SRC
exactly) and are covered by ``tagmanifest-sha256.txt`` and ``tagmanifest-md5.txt``,
so they are checksummed along with everything else:

- ``report.json``: every file of the bag (source path, size and sha256; output
  path, size, sha256 and md5; category; outcome; storage decision; codec; gain
  reference), totals per category and per storage decision, gain references
  estimated, failures, movies kept as they were, and what was not touched;
- ``report.md``: the same, readable, linking the pictures of ``report.html``;
- ``report.html``: one self-contained page of pictures (see :mod:`empcompress.report_html`);
- ``empiar-deposition.json``: the bag's EMPIAR deposition (see :mod:`empcompress.deposition`);
- ``ascp-file-list.txt``: every verified file of the bag, one path per line,
  relative to DEST, for ``cd DEST && ascp --file-list=ascp-file-list.txt ...``.

The reports describe the bag as a whole (from the journal), plus a section on
the run that wrote them last.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .files import commit_output, temporary_output
from .journal import STATE_DONE, GeneratedEntry, JournalEntry
from .manifest import BAG_DECLARATION_FILES, PAYLOAD_DIRNAME, write_text_atomically

__all__ = [
    "REPORT_JSON",
    "REPORT_MARKDOWN",
    "REPORT_HTML",
    "DEPOSITION_JSON",
    "FILE_LIST",
    "REPORT_FILES",
    "FileProblem",
    "CategoryReport",
    "DecisionReport",
    "GainSetReport",
    "GainMember",
    "CompressSummary",
    "MAX_LISTED_FILES",
    "bag_info_fields",
    "report_head",
    "file_records",
    "report_document",
    "report_json_chunks",
    "write_text_chunks_atomically",
    "render_markdown",
    "file_list_lines",
    "write_reports",
    "human_bytes",
]

REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"
DEPOSITION_JSON = "empiar-deposition.json"
FILE_LIST = "ascp-file-list.txt"
REPORT_FILES: tuple[str, ...] = (REPORT_JSON, REPORT_MARKDOWN, REPORT_HTML, DEPOSITION_JSON, FILE_LIST)
#: report.md lists at most this many files per list (the rest: "N more: see report.json", which has
#: every file), so that a drive of 100,000 files gives a report a person can read
MAX_LISTED_FILES = 1000


@dataclass(frozen=True)
class FileProblem:
    """A file and what is wrong with it (or why it was handled differently)."""

    rel_path: str
    reason: str


@dataclass(frozen=True)
class CategoryReport:
    category: str
    n_files: int
    source_size_bytes: int
    output_size_bytes: int


@dataclass(frozen=True)
class DecisionReport:
    """Movies stored the same way (storage type and codec)."""

    stored_dtype: str
    codec: str
    n_movies: int
    source_size_bytes: int
    output_size_bytes: int


@dataclass(frozen=True)
class GainMember:
    """One movie stored as counts with a group's reference, and how the reference applies to it."""

    rel_path: str  # the source, relative to SRC
    orientation: str  # a GainTransform orientation code ("identity", "flip-rows", ...)
    relion_orientation: str  # the same in RELION's options: "--gain_rot R --gain_flip F"
    n_exceptions: int


@dataclass(frozen=True)
class GainSetReport:
    """A gain reference and the group of gain-normalised movies stored as counts with it."""

    output_rel_path: str  # payload path of the reference
    folder: str  # the payload folder it is in
    n_members: int
    n_converted_with_gain: int
    output_sha256: str
    detail: str  # JSON text from the estimation (movies sampled, left out, pixel counts)
    origin: str = "estimated"  # "estimated" (written by us) | "depositor" (a file from the drive)
    relion_orientation: str = ""  # the members' most common orientation, in RELION's terms
    members: tuple[GainMember, ...] = ()


@dataclass(frozen=True)
class CompressSummary:
    """The bag after a compress run, and what that run did."""

    source: str
    dest: str
    cluster: str
    dashboard_link: str
    started_at: str
    elapsed_seconds: float
    interrupted: bool
    n_files: int
    n_up_to_date: int
    n_converted: int
    n_copied: int
    n_kept_as_is: int
    n_failed: int
    bytes_read: int
    bytes_written: int
    n_stale_removed: int
    source_size_bytes: int
    payload_size_bytes: int
    categories: tuple[CategoryReport, ...]
    decisions: tuple[DecisionReport, ...]
    gain_references: tuple[GainSetReport, ...]
    failures: tuple[FileProblem, ...]
    kept_as_is: tuple[FileProblem, ...]
    not_touched: tuple[FileProblem, ...]
    bag_written: bool
    sealed: bool = False  # the audit passed and bagit.txt was written
    audit_problems: tuple[FileProblem, ...] = ()
    empty_folders: tuple[str, ...] = ()
    n_unchanged: int = 0  # recheck: sources whose sha256 matched the journal
    #: gain-normalised movies no gain group took (stored as lossless float32), and why
    gain_left_out: tuple[FileProblem, ...] = ()

    @property
    def n_done_this_run(self) -> int:
        return self.n_converted + self.n_copied + self.n_kept_as_is

    @property
    def complete(self) -> bool:
        """Every file of SRC is in the bag (converted, copied or kept as it was), proven by the audit."""
        return self.bag_written and self.sealed and not self.failures and not self.interrupted

    @property
    def exit_code(self) -> int:
        """0 complete, 130 interrupted, 1 anything less than a sealed bag holding every file."""
        if self.interrupted and not self.sealed:
            return 130
        return 0 if self.complete else 1

    @property
    def all_converted(self) -> bool:
        """Complete, and every movie was converted (none kept as it was)."""
        return self.complete and not self.kept_as_is

    @property
    def ratio(self) -> float:
        return self.source_size_bytes / max(1, self.payload_size_bytes)


def human_bytes(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n_bytes) < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} TiB"


def bag_info_fields(summary: CompressSummary) -> list[tuple[str, str]]:
    """bag-info.txt fields: source, tool, totals and storage decisions."""
    fields = [
        (
            "External-Description",
            f"Lossless compression of {summary.source}: MRC movies as verified TIFF stacks",
        ),
        ("Empcompress-Source", summary.source),
        ("Empcompress-Version", __version__),
        ("Empcompress-Source-Files", str(summary.n_files)),
        ("Empcompress-Source-Bytes", str(summary.source_size_bytes)),
        ("Empcompress-Payload-Bytes", str(summary.payload_size_bytes)),
        ("Empcompress-Ratio", f"{summary.ratio:.3f}"),
    ]
    for category in summary.categories:
        fields.append(
            (
                "Empcompress-Category",
                f"{category.category}: {category.n_files} files, {category.source_size_bytes} -> "
                f"{category.output_size_bytes} bytes",
            )
        )
    for decision in summary.decisions:
        fields.append(
            (
                "Empcompress-Storage-Decision",
                f"{decision.n_movies} movies stored as {decision.stored_dtype} with {decision.codec}: "
                f"{decision.source_size_bytes} -> {decision.output_size_bytes} bytes",
            )
        )
    for gain in summary.gain_references:
        fields.append(
            (
                "Empcompress-Gain-Reference",
                f"{PAYLOAD_DIRNAME}/{gain.output_rel_path} for {gain.n_members} movies",
            )
        )
    fields.append(("Empcompress-Movies-Kept-As-Is", str(len(summary.kept_as_is))))
    fields.append(("Empcompress-Files-Failed", str(len(summary.failures))))
    fields.append(("Empcompress-Not-Touched", str(len(summary.not_touched))))
    return fields


def display_path(rel_path: str) -> str:
    """A source path as text: bytes that are not UTF-8 shown as ``\\xNN`` (see ``source_path_hex``)."""
    return os.fsencode(rel_path).decode("utf-8", "backslashreplace")


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


#: separators that make the C encoder write a flat object as ``json.dumps(indent=2)`` writes it two
#: levels deep (a JSON string never holds a raw line break, so the separator cannot occur inside one)
_RECORD_SEPARATORS = (",\n      ", ": ")
_record_encoder = json.JSONEncoder(ensure_ascii=False, separators=_RECORD_SEPARATORS)
_SCALARS = (str, int, float, bool, type(None))


def _nested(value: Any, level: int) -> str:
    """``value`` as ``json.dumps(indent=2)`` writes it ``level`` levels deep."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    return text.replace("\n", "\n" + "  " * level)


def _record_text(record: dict[str, Any]) -> str:
    """One ``files`` item, exactly as ``json.dumps(document, indent=2)`` writes it in the list."""
    if record and all(isinstance(value, _SCALARS) for value in record.values()):
        flat = _record_encoder.encode(record)
        return "    {\n      " + flat[1:-1] + "\n    }"
    return "    " + _nested(record, 2)


def report_json_chunks(
    head: dict[str, Any], records: Iterable[dict[str, Any]], tail: dict[str, Any]
) -> Iterator[str]:
    """The text of report.json, piece by piece: ``{**head, "files": [*records], **tail}`` as
    ``json.dumps(indent=2, ensure_ascii=False)`` writes it, with a line break at the end."""
    head_text = json.dumps({**head, "files": []}, indent=2, ensure_ascii=False)
    yield _utf8(head_text[: head_text.rindex("]")])  # ... "files": [
    separator = "\n"
    for record in records:
        yield separator
        yield _utf8(_record_text(record))
        separator = ",\n"
    yield "]" if separator == "\n" else "\n  ]"
    for key, value in tail.items():
        yield _utf8(f",\n  {json.dumps(key, ensure_ascii=False)}: {_nested(value, 1)}")
    yield "\n}\n"


_WRITE_CHUNK_CHARACTERS = 1 << 18


def write_text_chunks_atomically(path: Path, chunks: Iterable[str]) -> None:
    """Write text given in pieces (never all of it in memory) through a temporary name: the file
    appears under ``path`` complete, or not at all."""
    with temporary_output(path) as temporary:
        with open(temporary, "x", encoding="utf-8", newline="\n") as handle:
            pending: list[str] = []
            n_pending = 0
            for chunk in chunks:
                pending.append(chunk)
                n_pending += len(chunk)
                if n_pending >= _WRITE_CHUNK_CHARACTERS:
                    handle.write("".join(pending))
                    pending, n_pending = [], 0
            handle.write("".join(pending))
        commit_output(temporary, path)


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


def file_list_lines(entries: Iterable[JournalEntry], generated: Iterable[GeneratedEntry]) -> Iterator[str]:
    """The bag's verified files relative to DEST, one at a time: tag files first, then the payload
    (sorted; the payload paths are the rows' own strings, prefixed only as each line is given)."""
    tag_files = [*BAG_DECLARATION_FILES, "bag-info.txt", *REPORT_FILES]
    payload = [entry.output_rel_path for entry in entries if entry.state == STATE_DONE]
    payload += [entry.output_rel_path for entry in generated if entry.state == STATE_DONE]
    payload.sort()
    yield from sorted(tag_files)
    # payload names are portable (empcompress.pipeline.layout): never a line break, always UTF-8
    for path in payload:
        yield f"{PAYLOAD_DIRNAME}/{path}"


def _utf8(text: str) -> str:
    """Text that encodes as UTF-8 (messages may quote names that are not)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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


def write_reports(
    dest: str | Path,
    *,
    summary: CompressSummary,
    entries: Sequence[JournalEntry],
    generated: Sequence[GeneratedEntry],
) -> tuple[str, ...]:
    """Write report.json, report.md, report.html, empiar-deposition.json and ascp-file-list.txt into
    DEST; returns their names (the bag's tag files).

    Memory does not grow with the number of files beyond ``entries`` themselves (which the caller
    holds): report.json's file records are made and written one at a time (read again for the
    deposition, which keeps only movies, gain references and sidecars), report.md lists at most
    :data:`MAX_LISTED_FILES` per list, and the page's pictures are drawn from aggregates.
    """
    from .deposition import write_for_compress
    from .report_html import write_report_page

    dest = Path(dest)
    head = report_head(summary, generated)
    deposition = write_for_compress(dest, report=head, files=lambda: file_records(summary, entries))
    page = write_report_page(dest, name=REPORT_HTML, summary=summary, entries=entries, deposition=deposition)
    tail = {"empiar_deposition": deposition.status()}
    write_text_chunks_atomically(
        dest / REPORT_JSON, report_json_chunks(head, file_records(summary, entries), tail)
    )
    markdown = render_markdown(summary, entries) + _hand_off_markdown(deposition, page.pictures)
    write_text_atomically(dest / REPORT_MARKDOWN, _utf8(markdown))
    write_text_chunks_atomically(
        dest / FILE_LIST, (line + "\n" for line in file_list_lines(entries, generated))
    )
    return REPORT_FILES
