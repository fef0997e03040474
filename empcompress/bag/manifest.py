"""The text formats of a bag: names, manifest lines, path encoding, bag-info.txt.

Nothing here touches the file system except :func:`read_manifest` and
:func:`read_bag_info`, which open one file with :func:`~empcompress.files.open_regular`.

Paths in manifests (RFC 8493, section 2.1.3)
--------------------------------------------

A path is written with ``%`` as ``%25``, CR as ``%0D`` and LF as ``%0A`` (only those
three), and read back by decoding exactly those three escapes (hex digits in either
case, one pass, so ``%250A`` is the literal ``%0A``).

The installed ``bagit`` package (1.9) encodes only CR and LF and decodes only
``%0D``/``%0A``: for a name with a literal ``%`` its manifests and ours differ. Our
decision:

- we write what the RFC says (``%25``); the lead's layout module never gives a
  payload file a name with CR, LF or ``%``, so for every bag ``compress`` writes, our
  manifests are byte for byte what ``bagit`` would write, and ``bagit`` and
  ``sha256sum -c`` validate them;
- we read what the RFC says, and, for bags written by ``bagit`` (which leaves ``%``
  as it is), when the RFC-decoded path is not in the bag but the path as ``bagit``
  decodes it is, we take that one (:func:`decode_manifest_path_as_bagit`). So a
  ``bagit`` bag holding ``data/50%25.txt`` validates with us as it does with ``bagit``.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import PipelineError
from ..files import open_regular

__all__ = [
    "BAGIT_VERSION",
    "PAYLOAD_DIRNAME",
    "BAGIT_TXT",
    "BAG_INFO_TXT",
    "BAGIT_TEXT",
    "MANIFEST_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "BAG_DECLARATION_FILES",
    "PayloadFile",
    "BagProblem",
    "ManifestLine",
    "ParsedManifest",
    "manifest_name",
    "tag_manifest_name",
    "manifest_algorithm",
    "encode_manifest_path",
    "decode_manifest_path",
    "decode_manifest_path_as_bagit",
    "normalise_bag_path",
    "show_path",
    "manifest_text",
    "bag_info_text",
    "parse_manifest",
    "parse_bag_info",
    "read_manifest",
    "read_bag_info",
]

BAGIT_VERSION = "1.0"
PAYLOAD_DIRNAME = "data"
BAGIT_TXT = "bagit.txt"
BAG_INFO_TXT = "bag-info.txt"
#: The whole of every bagit.txt we write (fixed, so the tag manifests can cover it before it exists).
BAGIT_TEXT = f"BagIt-Version: {BAGIT_VERSION}\nTag-File-Character-Encoding: UTF-8\n"
#: The payload and tag manifests every bag of ours has.
MANIFEST_ALGORITHMS: tuple[str, ...] = ("sha256", "md5")
#: Algorithms whose manifests we read (as bagit: hashlib's guaranteed ones, fixed-length digests).
SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(
    sorted(name for name in hashlib.algorithms_guaranteed if not name.startswith("shake_"))
)
BAG_DECLARATION_FILES: tuple[str, ...] = (
    BAGIT_TXT,
    *(f"manifest-{algorithm}.txt" for algorithm in MANIFEST_ALGORITHMS),
    *(f"tagmanifest-{algorithm}.txt" for algorithm in MANIFEST_ALGORITHMS),
)
#: Manifests and bag-info.txt larger than this are not read (a manifest line is < 5 KiB).
MAX_TAG_TEXT_BYTES = 1 << 30


@dataclass(frozen=True)
class PayloadFile:
    """One payload file with its checksums; ``rel_path`` is relative to ``data/`` (POSIX)."""

    rel_path: str
    size_bytes: int
    sha256: str
    md5: str


@dataclass(frozen=True)
class BagProblem:
    """Something wrong with one file of a bag.

    ``rel_path`` is relative to the bag's top, with control characters escaped
    (:func:`show_path`); for a bad manifest line it names the manifest and
    ``problem`` says which line.
    """

    rel_path: str
    problem: str


class ManifestLine(NamedTuple):
    """One entry of a (tag) manifest (a named tuple: a manifest of 100,000 files makes 100,000)."""

    line_number: int
    digest: str  # lower-case hex
    path: str  # decoded as RFC 8493 says, not normalised
    bagit_path: str  # decoded as bagit-python <= 1.9 does (CR and LF only)


@dataclass(frozen=True)
class ParsedManifest:
    """A (tag) manifest's entries and the lines that could not be read."""

    name: str  # bag-relative name of the manifest file
    algorithm: str
    lines: tuple[ManifestLine, ...]
    problems: tuple[BagProblem, ...]


# ---------------------------------------------------------------- names


def manifest_name(algorithm: str) -> str:
    return f"manifest-{algorithm}.txt"


def tag_manifest_name(algorithm: str) -> str:
    return f"tagmanifest-{algorithm}.txt"


_MANIFEST_NAME = re.compile(r"(tag)?manifest-([A-Za-z0-9_]+)\.txt")


def manifest_algorithm(name: str) -> tuple[bool, str] | None:
    """``(is_tag_manifest, algorithm)`` for a top-level (tag) manifest name we read, else None."""
    match = _MANIFEST_NAME.fullmatch(name)
    if match is None or match.group(2) not in SUPPORTED_ALGORITHMS:
        return None
    return match.group(1) is not None, match.group(2)


# ---------------------------------------------------------------- paths in manifests


def encode_manifest_path(path: str) -> str:
    """A bag-relative path as written in a manifest: ``%``, CR and LF percent-encoded (RFC 8493)."""
    return path.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


_RFC_ESCAPE = re.compile(r"%(0[dDaA]|25)")
_BAGIT_ESCAPE = re.compile(r"%(0[dDaA])")
_UNESCAPED = {"0d": "\r", "0a": "\n", "25": "%"}


def decode_manifest_path(text: str) -> str:
    """The path a manifest line names (RFC 8493: ``%25``, ``%0D``, ``%0A`` decoded, in one pass)."""
    return _RFC_ESCAPE.sub(lambda match: _UNESCAPED[match.group(1).lower()], text)


def decode_manifest_path_as_bagit(text: str) -> str:
    """The path as bagit-python (<= 1.9) reads it: only ``%0D`` and ``%0A`` decoded."""
    return _BAGIT_ESCAPE.sub(lambda match: _UNESCAPED[match.group(1).lower()], text)


def normalise_bag_path(path: str) -> tuple[str, str]:
    """``(normalised path, "")`` for a safe bag-relative path, or ``("", why it is unsafe)``.

    Empty and ``.`` components are dropped (as bagit's ``normpath``); an absolute
    path, any ``..`` component (even one that stays inside) and a NUL are refused.
    Nothing is looked up on disk.
    """
    if "\x00" in path:
        return "", "contains a NUL character"
    if path.startswith("/"):
        return "", "is an absolute path"
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        return "", "contains '..'"
    if not parts:
        return "", "is empty"
    return "/".join(parts), ""


_CONTROL = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def show_path(path: str) -> str:
    """``path`` for a message: control characters (and undecodable bytes) escaped."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()) & 0xFF:02x}", path)


# ---------------------------------------------------------------- writing


def manifest_text(entries: Sequence[tuple[str, str]]) -> str:
    """``"<digest>  <encoded path>\\n"`` lines for ``(path, digest)`` entries, sorted by path."""
    return "".join(f"{digest}  {encode_manifest_path(path)}\n" for path, digest in sorted(entries))


def bag_info_text(fields: Sequence[tuple[str, str]]) -> str:
    """bag-info.txt: one ``Label: value`` line per field, whitespace runs (line breaks) made one space."""
    lines = []
    for label, value in fields:
        one_line = " ".join(str(value).split())
        lines.append(f"{label}: {one_line}\n")
    return "".join(lines)


# ---------------------------------------------------------------- reading


_LINE_BREAK = re.compile(r"\r\n|[\r\n]")
_LINE = re.compile(r"[ \t]*([^ \t]+)[ \t]+(.*)", re.DOTALL)
_HEX = re.compile(r"[0-9A-Fa-f]+")


def _hex_length(algorithm: str) -> int | None:
    try:
        return hashlib.new(algorithm).digest_size * 2
    except ValueError:
        return None


def parse_manifest(data: bytes, *, name: str, algorithm: str, encoding: str = "utf-8") -> ParsedManifest:
    """The entries of a (tag) manifest's bytes; a line that cannot be read is a problem, never an error.

    Lines end with LF, CR or CRLF; blank lines and ``#`` comments are skipped; a
    UTF-8 byte-order mark at the start is tolerated (as bagit does). A line is
    ``<hex checksum><spaces or tabs><path>``, the path optionally after one ``*``
    (``sha256sum`` binary mode) and taken to the end of the line.
    """
    problems: list[BagProblem] = []
    lines: list[ManifestLine] = []
    shown = show_path(name)
    if data.startswith(codecs.BOM_UTF8) and codecs.lookup(encoding).name == "utf-8":
        data = data[len(codecs.BOM_UTF8) :]
    hex_length = _hex_length(algorithm)
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError as error:
            problems.append(
                BagProblem(
                    shown, f"line {number} is not valid {encoding} (byte {error.start + 1} of the line)"
                )
            )
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            problems.append(BagProblem(shown, f"line {number} is not '<checksum>  <path>'"))
            continue
        digest, text = match.group(1), match.group(2)
        if text.startswith("*"):
            text = text[1:]
        if not _HEX.fullmatch(digest) or (hex_length is not None and len(digest) != hex_length):
            expected = f"{hex_length} hexadecimal digits" if hex_length else "hexadecimal"
            problems.append(BagProblem(shown, f"line {number}: the {algorithm} checksum is not {expected}"))
            continue
        if not text:
            problems.append(BagProblem(shown, f"line {number} names no file"))
            continue
        if "%" in text:
            path, bagit_path = decode_manifest_path(text), decode_manifest_path_as_bagit(text)
        else:  # nothing to decode (every path of the bags we write): one string for both readings
            path = bagit_path = text
        lines.append(ManifestLine(number, digest.lower(), path, bagit_path))
    return ParsedManifest(name, algorithm, tuple(lines), tuple(problems))


def parse_bag_info(text: str) -> tuple[list[tuple[str, str]], list[int]]:
    """``(fields, numbers of lines that are not "Label: value")`` of bag-info.txt's text.

    Continuation lines (starting with a space or tab) are joined with one space.
    """
    fields: list[tuple[str, str]] = []
    bad: list[int] = []
    for number, line in enumerate(_LINE_BREAK.split(text), start=1):
        if not line.strip():
            continue
        if line[:1] in (" ", "\t") and fields:
            label, value = fields[-1]
            fields[-1] = (label, f"{value} {line.strip()}")
        elif ":" in line:
            label, value = line.split(":", 1)
            fields.append((label.strip(), value.strip()))
        else:
            bad.append(number)
    return fields, bad


def _read_small(path: Path) -> bytes:
    with open_regular(path) as handle:
        data = handle.read(MAX_TAG_TEXT_BYTES + 1)
    if len(data) > MAX_TAG_TEXT_BYTES:
        raise PipelineError(f"{path}: larger than {MAX_TAG_TEXT_BYTES} bytes; not read")
    return data


def read_manifest(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{bag-relative path: digest}`` from a (tag) manifest file (raises PipelineError if unreadable).

    Paths are decoded (RFC 8493) but not checked: :func:`empcompress.bag.audit_bag`
    is what judges a received bag.
    """
    path = Path(path)
    found = manifest_algorithm(path.name)
    algorithm = found[1] if found else ""
    try:
        data = _read_small(path)
    except OSError as error:
        raise PipelineError(f"{path}: cannot be read ({error.strerror})") from None
    parsed = parse_manifest(data, name=path.name, algorithm=algorithm)
    if parsed.problems:
        raise PipelineError(f"{path}: {parsed.problems[0].problem}")
    return {line.path: line.digest for line in parsed.lines}


def read_bag_info(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """The (label, value) pairs of a bag-info.txt, continuation lines joined (raises PipelineError)."""
    path = Path(path)
    try:
        text = _read_small(path).decode("utf-8-sig")
    except OSError as error:
        raise PipelineError(f"{path}: cannot be read ({error.strerror})") from None
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: is not valid UTF-8") from None
    return parse_bag_info(text)[0]
