"""report.json as text, piece by piece: exactly what ``json.dumps(indent=2, ensure_ascii=False)``
writes for the whole document, made and written without holding every file record at once."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..files import commit_output, temporary_output
from .display import _utf8

__all__ = ["report_json_chunks", "write_text_chunks_atomically"]


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
