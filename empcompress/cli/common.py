"""What every command shares: exit statuses, progress bars, sizes for people, argument types."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .. import interrupts

if TYPE_CHECKING:
    pass


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # SIGINT; every stop signal exits with 128 + its number

#: The --codec choices (the same as empcompress.encode.CODEC_NAMES, without importing the encoders).
CODEC_NAMES: tuple[str, ...] = ("auto", "lzw", "deflate", "zstd", "none")

ProgressCallback = Callable[[str, int], None]


@contextmanager
def _byte_progress(total_bytes: int, *, description: str, quiet: bool) -> Iterator[ProgressCallback]:
    """A tqdm bar over bytes (hidden when not on a terminal or when quiet)."""
    from tqdm import tqdm

    bar = tqdm(
        total=total_bytes,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=True if quiet else None,
        leave=False,
        file=sys.stderr,
    )

    def advance(stage: str, n_bytes: int) -> None:
        interrupts.checkpoint()  # a stop signal is acted on within a frame's work (see its docstring)
        bar.set_postfix_str(stage, refresh=False)
        bar.update(n_bytes)

    try:
        yield advance
    finally:
        bar.close()


def human_bytes(n_bytes: float) -> str:
    """``1.50 GiB`` and so on (imported when first needed: the report module is not light)."""
    from ..report import human_bytes as format_bytes

    return format_bytes(n_bytes)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _printable(text: str) -> str:
    """Text any terminal encoding can print (names that are not UTF-8 shown as escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
