"""The names of the report files, written at the top of DEST as tag files of the bag
(see :mod:`empcompress.report`)."""

from __future__ import annotations

__all__ = ["REPORT_JSON", "REPORT_MARKDOWN", "REPORT_HTML", "DEPOSITION_JSON", "FILE_LIST", "REPORT_FILES"]


REPORT_JSON = "report.json"
REPORT_MARKDOWN = "report.md"
REPORT_HTML = "report.html"
DEPOSITION_JSON = "empiar-deposition.json"
FILE_LIST = "ascp-file-list.txt"
REPORT_FILES: tuple[str, ...] = (REPORT_JSON, REPORT_MARKDOWN, REPORT_HTML, DEPOSITION_JSON, FILE_LIST)
