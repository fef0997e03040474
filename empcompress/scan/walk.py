"""Walk SRC: regular files only, never through a symbolic link; what is not archived, and why."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import InputError
from .entries import SkippedEntry


def walk_source(
    source: str | os.PathLike[str],
    *,
    empty_folders: list[str] | None = None,
) -> tuple[list[tuple[str, os.stat_result]], list[SkippedEntry]]:
    """Every regular file under ``source`` (POSIX relative path, lstat), never following links.

    Names are ``str`` as :func:`os.fsdecode` gives them (bytes that are not UTF-8
    become surrogates and are kept exactly). Folders that hold nothing are appended
    to ``empty_folders`` when given.
    """
    root = Path(source)
    files: list[tuple[str, os.stat_result]] = []
    skipped: list[SkippedEntry] = []
    real_root = os.path.realpath(root)

    def visit(directory: Path, rel: str) -> None:
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=lambda entry: os.fsencode(entry.name))
        except OSError as error:
            reason = f"folder cannot be read ({error.strerror}); its files are not in the bag"
            skipped.append(SkippedEntry(rel or ".", reason, unreadable=True))
            return
        if not entries and rel and empty_folders is not None:
            empty_folders.append(rel)
        for entry in entries:
            rel_path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as error:
                skipped.append(SkippedEntry(rel_path, f"cannot be read ({error.strerror})", unreadable=True))
                continue
            if stat.S_ISLNK(info.st_mode):
                skipped.append(SkippedEntry(rel_path, _link_reason(Path(entry.path), real_root)))
            elif stat.S_ISDIR(info.st_mode):
                visit(Path(entry.path), rel_path)
            elif stat.S_ISREG(info.st_mode):
                if not os.access(entry.path, os.R_OK):
                    reason = "cannot be read (permission denied); it is not in the bag"
                    skipped.append(SkippedEntry(rel_path, reason, unreadable=True))
                    continue
                files.append((rel_path, info))
            else:
                skipped.append(SkippedEntry(rel_path, "not a regular file (device, pipe or socket)"))

    if not root.is_dir():
        raise InputError(f"{root}: not a folder; give the top folder of the drive to scan")
    visit(root, "")
    return files, skipped


def _link_reason(link: Path, real_root: str) -> str:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    resolved = os.path.realpath(link)
    if not os.path.exists(resolved):
        return f"broken symbolic link (to {target}); links are not followed"
    if resolved == real_root or resolved.startswith(real_root + os.sep):
        return (
            f"symbolic link to {target} inside SRC; not followed (its target is archived under its own name)"
        )
    return f"symbolic link to {target} outside SRC; not followed, so its target is not archived"
