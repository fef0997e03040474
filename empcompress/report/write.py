"""Writing the five report files into DEST (report.json streamed, the others atomically):
:func:`write_reports`, which the compress run calls once the bag is audited."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..journal import GeneratedEntry, JournalEntry
from ..manifest import write_text_atomically
from .display import _utf8
from .document import file_records, report_head
from .file_list import file_list_lines
from .json_stream import report_json_chunks, write_text_chunks_atomically
from .markdown import _hand_off_markdown, render_markdown
from .names import FILE_LIST, REPORT_FILES, REPORT_HTML, REPORT_JSON, REPORT_MARKDOWN
from .summary import CompressSummary

__all__ = ["write_reports"]


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
    from ..deposition import write_for_compress
    from ..report_html import write_report_page

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
