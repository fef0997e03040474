"""bagit.txt and bag-info.txt: the declaration and the tag files' encoding, bag-info's fields,
whether they say the bag is ours, and Payload-Oxum against the payload on disk."""

from __future__ import annotations

import codecs
import re
from collections.abc import Sequence
from pathlib import Path

from ..manifest import BAG_INFO_TXT, BAGIT_TEXT, BAGIT_TXT, BagProblem, PayloadFile, parse_bag_info, show_path
from .disk import _read_tag_text

__all__ = ["is_our_bag_info"]


_OXUM = re.compile(r"([0-9]+)\.([0-9]+)")


def is_our_bag_info(fields: Sequence[tuple[str, str]]) -> bool:
    """Whether bag-info.txt's fields say empcompress wrote the bag."""
    for label, value in fields:
        name = label.lower()
        if name == "bag-software-agent" and value.lower().startswith("empcompress"):
            return True
        if name.startswith("empcompress-"):
            return True
    return False


def _declaration(
    dest: Path, top: dict[str, str], *, sealed: bool, problems: list[BagProblem]
) -> tuple[str, bytes | None]:
    """``(tag file encoding, bagit.txt's bytes)``; unsealed and absent: ours to come."""
    if BAGIT_TXT not in top:
        if sealed:
            problems.append(BagProblem(BAGIT_TXT, "missing: the bag was never sealed (not a finished bag)"))
            return "utf-8", None
        return "utf-8", BAGIT_TEXT.encode("utf-8")
    data = _read_tag_text(dest, BAGIT_TXT, top[BAGIT_TXT], problems)
    if data is None:
        return "utf-8", None
    if data.startswith(codecs.BOM_UTF8):
        problems.append(BagProblem(BAGIT_TXT, "starts with a byte-order mark (RFC 8493 forbids it)"))
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(BagProblem(BAGIT_TXT, "is not valid UTF-8"))
        return "utf-8", data
    fields, bad_lines = parse_bag_info(text)
    for number in bad_lines:
        problems.append(BagProblem(BAGIT_TXT, f"line {number} is not 'Label: value'"))
    tags = dict(reversed(fields))  # the first of repeated labels
    version = tags.get("BagIt-Version")
    encoding = tags.get("Tag-File-Character-Encoding")
    if version is None:
        problems.append(BagProblem(BAGIT_TXT, "has no BagIt-Version"))
    elif not re.fullmatch(r"[0-9]+\.[0-9]+", version) or not (
        (0, 93) <= tuple(int(part) for part in version.split(".")) < (2, 0)
    ):
        problems.append(BagProblem(BAGIT_TXT, f"BagIt-Version {show_path(version)!r} is not supported"))
    if encoding is None:
        problems.append(BagProblem(BAGIT_TXT, "has no Tag-File-Character-Encoding"))
        return "utf-8", data
    try:  # only text encodings that keep ASCII as it is (lines are split on bytes)
        name = codecs.lookup(encoding).name
        usable = b"data/\n#%:".decode(name) == "data/\n#%:" and "data/\n".encode(name) == b"data/\n"
    except (LookupError, ValueError):
        usable = False
    if not usable:
        problems.append(
            BagProblem(BAGIT_TXT, f"the encoding {show_path(encoding)!r} is not supported; read as UTF-8")
        )
        return "utf-8", data
    return name, data


def _bag_info(
    dest: Path, top: dict[str, str], encoding: str, problems: list[BagProblem]
) -> list[tuple[str, str]] | None:
    if BAG_INFO_TXT not in top:
        return None
    data = _read_tag_text(dest, BAG_INFO_TXT, top[BAG_INFO_TXT], problems)
    if data is None:
        return None
    try:
        text = data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError:
        problems.append(BagProblem(BAG_INFO_TXT, f"is not valid {encoding}"))
        return None
    fields, bad_lines = parse_bag_info(text)
    for number in bad_lines:
        problems.append(BagProblem(BAG_INFO_TXT, f"line {number} is not 'Label: value'"))
    return fields


def _check_oxum(
    info: list[tuple[str, str]] | None,
    files: dict[str, int],
    *,
    ours: bool,
    expected: Sequence[PayloadFile] | None,
    problems: list[BagProblem],
) -> None:
    values = [value for label, value in info or () if label.lower() == "payload-oxum"]
    if not values:
        if ours:
            problems.append(
                BagProblem(BAG_INFO_TXT, "has no Payload-Oxum" if info is not None else "missing")
            )
        return
    if len(set(values)) > 1:
        problems.append(BagProblem(BAG_INFO_TXT, "gives several different Payload-Oxum values"))
    value = values[0]
    if _OXUM.fullmatch(value) is None:
        problems.append(
            BagProblem(BAG_INFO_TXT, f"Payload-Oxum {show_path(value)!r} is not '<bytes>.<files>'")
        )
        return
    actual = f"{sum(files.values())}.{len(files)}"
    if value != actual:
        problems.append(BagProblem(BAG_INFO_TXT, f"Payload-Oxum is {value} but the payload holds {actual}"))
    if expected is not None:
        written = f"{sum(entry.size_bytes for entry in expected)}.{len(expected)}"
        if value != written:
            problems.append(
                BagProblem(BAG_INFO_TXT, f"Payload-Oxum is {value} but the files written total {written}")
            )
