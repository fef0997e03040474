"""``report.html``: the compress report as one self-contained page people look at.

Parts: :mod:`.samples` (what the plots show, read from the bag and the journal: counts
of a sample page per movie and their entropy floor, when each file was done),
:mod:`.figures` (matplotlib, Agg, as PNG bytes), :mod:`.page` (the HTML, pictures
embedded as base64 PNG, written atomically).
"""

from .page import REPORT_PICTURES, PageResult, write_report_page

__all__ = ["REPORT_PICTURES", "PageResult", "write_report_page"]
