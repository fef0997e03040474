"""Sizes and names as the reports show them: bytes in binary units, source paths whose bytes
are not UTF-8 as ``\\xNN``, and text made safe to write as UTF-8."""

from __future__ import annotations

import os

__all__ = ["human_bytes", "display_path"]


def human_bytes(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n_bytes) < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.2f} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.2f} TiB"


def display_path(rel_path: str) -> str:
    """A source path as text: bytes that are not UTF-8 shown as ``\\xNN`` (see ``source_path_hex``)."""
    return os.fsencode(rel_path).decode("utf-8", "backslashreplace")


def _utf8(text: str) -> str:
    """Text that encodes as UTF-8 (messages may quote names that are not)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
