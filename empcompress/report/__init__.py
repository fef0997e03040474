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

Parts: :mod:`.names` (the five files' names), :mod:`.summary` (the bag after a
run as frozen dataclasses, and its totals as bag-info.txt fields), :mod:`.document`
(report.json's content: its head and one record per file), :mod:`.json_stream`
(report.json's text piece by piece, written without holding it all), :mod:`.markdown`
(report.md), :mod:`.file_list` (ascp-file-list.txt), :mod:`.display` (sizes and
names as text), :mod:`.write` (:func:`write_reports`: all five files into DEST).
"""

from .display import display_path as display_path
from .display import human_bytes
from .document import file_records, report_document, report_head
from .file_list import file_list_lines
from .json_stream import report_json_chunks, write_text_chunks_atomically
from .markdown import MAX_LISTED_FILES, render_markdown
from .names import DEPOSITION_JSON, FILE_LIST, REPORT_FILES, REPORT_HTML, REPORT_JSON, REPORT_MARKDOWN
from .summary import (
    CategoryReport,
    CompressSummary,
    DecisionReport,
    FileProblem,
    GainMember,
    GainSetReport,
    bag_info_fields,
)
from .write import write_reports

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
