"""ascp-file-list.txt: every verified file of the bag relative to DEST, one per line, for
``cd DEST && ascp --file-list=ascp-file-list.txt ...``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..journal import STATE_DONE, GeneratedEntry, JournalEntry
from ..manifest import BAG_DECLARATION_FILES, PAYLOAD_DIRNAME
from .names import REPORT_FILES

__all__ = ["file_list_lines"]


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
