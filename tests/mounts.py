"""File systems mounted for a test: a small tmpfs, an overlay. Mounting needs root (CI runs as root):
skipped elsewhere, failed in CI where it cannot be done."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from conftest import in_ci


@contextlib.contextmanager
def mounted(
    directory: Path, *, fstype: str, source: str, options: Sequence[str], what: str
) -> Iterator[Path]:
    """``mount -t fstype -o options source directory`` for the block, then unmounted."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip(f"mounting {what} needs root (CI runs as root)")
    directory.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", fstype, *(["-o", ",".join(options)] if options else []), source, str(directory)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        message = f"cannot mount {what} here ({done.stderr.strip()})"
        if in_ci():
            pytest.fail(f"{message}, but CI runs as root and must run this test")
        pytest.skip(message)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def tmpfs(directory: Path, *options: str) -> contextlib.AbstractContextManager[Path]:
    """A small tmpfs mounted at ``directory`` for the block (options such as ``size=1m``, ``ro``)."""
    return mounted(directory, fstype="tmpfs", source="tmpfs", options=options, what="a small tmpfs")


@contextlib.contextmanager
def overlay(directory: Path) -> Iterator[Path]:
    """An overlay file system (as containers' root file systems are) at ``directory/merged``, over an
    empty ``directory/lower``; what is written to it goes to ``directory/upper``."""
    layers = {name: directory / name for name in ("lower", "upper", "work")}
    for layer in layers.values():
        layer.mkdir(parents=True, exist_ok=True)
    options = [f"{name}dir={layer}" for name, layer in layers.items()]
    with mounted(
        directory / "merged",
        fstype="overlay",
        source="overlay",
        options=options,
        what="an overlay file system",
    ) as merged:
        yield merged
