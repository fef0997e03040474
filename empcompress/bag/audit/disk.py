"""The bag on disk, looked at without following a link: the kind of an entry, why a path must not
be opened (:func:`inspect_path`), the top-level entries, the walk of ``data/`` and its size, and
the small top-level files read through :func:`~empcompress.files.open_regular`."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ...errors import PipelineError
from ...files import open_regular
from ..manifest import MAX_TAG_TEXT_BYTES, PAYLOAD_DIRNAME, BagProblem, show_path

__all__ = ["inspect_path", "payload_bytes_on_disk"]


_KINDS = (
    (stat.S_ISREG, "regular file"),
    (stat.S_ISDIR, "folder"),
    (stat.S_ISLNK, "symbolic link"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
    (stat.S_ISSOCK, "socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "special file")


def _not_regular(kind: str) -> str:
    if kind == "symbolic link":
        return "is a symbolic link (not followed)"
    return f"is a {kind}, not a regular file"


def inspect_path(dest: Path, rel_path: str) -> str:
    """Why ``dest/rel_path`` must not be opened ("" when it is a regular file reached through folders).

    ``rel_path`` must be normalised (:func:`normalise_bag_path`). Every component is
    ``lstat``-ed; nothing is opened and no link is followed.
    """
    parts = rel_path.split("/")
    current = dest
    for index, part in enumerate(parts):
        current = current / part
        last = index == len(parts) - 1
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return "is missing"
        except OSError as error:
            return f"cannot be looked at ({error.strerror})"
        if stat.S_ISLNK(mode) and not last:
            return (
                f"passes through the symbolic link {show_path('/'.join(parts[: index + 1]))} (not followed)"
            )
        if not last and not stat.S_ISDIR(mode):
            return f"passes through {show_path('/'.join(parts[: index + 1]))}, which is not a folder"
        if last and not stat.S_ISREG(mode):
            return _not_regular(_kind(mode))
    return ""


def _top_level(dest: Path, problems: list[BagProblem]) -> dict[str, str]:
    """``{name: kind}`` of the entries at the top of the bag (no link followed)."""
    found: dict[str, str] = {}
    try:
        with os.scandir(dest) as entries:
            for entry in entries:
                try:
                    found[entry.name] = _kind(entry.stat(follow_symlinks=False).st_mode)
                except OSError as error:
                    problems.append(
                        BagProblem(show_path(entry.name), f"cannot be looked at ({error.strerror})")
                    )
    except OSError as error:
        raise PipelineError(f"{dest}: cannot be listed ({error.strerror})") from None
    return found


def _read_tag_text(dest: Path, name: str, kind: str, problems: list[BagProblem]) -> bytes | None:
    """The bytes of a small top-level file, or None (a problem said why)."""
    if kind != "regular file":
        problems.append(BagProblem(name, f"{_not_regular(kind)}; not read"))
        return None
    try:
        with open_regular(dest / name) as handle:
            data = handle.read(MAX_TAG_TEXT_BYTES + 1)
    except OSError as error:
        problems.append(BagProblem(name, f"cannot be read ({error.strerror})"))
        return None
    if len(data) > MAX_TAG_TEXT_BYTES:
        problems.append(BagProblem(name, f"is larger than {MAX_TAG_TEXT_BYTES} bytes; not read"))
        return None
    return data


def _walk_payload(dest: Path, problems: list[BagProblem]) -> tuple[dict[str, int], dict[str, str]]:
    """``({path: size} of regular files, {path: kind} of anything else)`` under data/, no link followed."""
    files: dict[str, int] = {}
    special: dict[str, str] = {}
    try:
        mode = (dest / PAYLOAD_DIRNAME).lstat().st_mode
    except FileNotFoundError:
        problems.append(BagProblem(f"{PAYLOAD_DIRNAME}/", "missing: the bag has no payload folder"))
        return files, special
    except OSError as error:
        problems.append(BagProblem(f"{PAYLOAD_DIRNAME}/", f"cannot be looked at ({error.strerror})"))
        return files, special
    if not stat.S_ISDIR(mode):
        problems.append(BagProblem(f"{PAYLOAD_DIRNAME}/", f"{_not_regular(_kind(mode))}; not read"))
        return files, special
    folders = [(PAYLOAD_DIRNAME, dest / PAYLOAD_DIRNAME)]
    while folders:
        rel_folder, folder = folders.pop()
        try:
            with os.scandir(folder) as iterator:
                entries = sorted(iterator, key=lambda entry: entry.name, reverse=True)
        except OSError as error:
            problems.append(BagProblem(show_path(rel_folder), f"folder cannot be read ({error.strerror})"))
            continue
        for entry in entries:
            rel_path = f"{rel_folder}/{entry.name}"
            try:
                status = entry.stat(follow_symlinks=False)
                entry_mode, size_bytes = status.st_mode, status.st_size
            except OSError as error:
                problems.append(BagProblem(show_path(rel_path), f"cannot be looked at ({error.strerror})"))
                continue
            if stat.S_ISDIR(entry_mode):
                folders.append((rel_path, Path(entry.path)))
            elif stat.S_ISREG(entry_mode):
                files[rel_path] = size_bytes
            else:
                kind = _kind(entry_mode)
                special[rel_path] = kind
                problems.append(
                    BagProblem(
                        show_path(rel_path), f"{_not_regular(kind)}: a payload holds regular files only"
                    )
                )
    return files, special


def payload_bytes_on_disk(dest: str | os.PathLike[str]) -> int:
    """Total size of the regular files under ``dest/data`` (no link followed, nothing opened)."""
    files, _ = _walk_payload(Path(dest), [])
    return sum(files.values())
