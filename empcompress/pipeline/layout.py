"""DEST's layout: the one owner of every payload path (``data/...``) a compress run writes.

Before any work is submitted, :class:`PayloadLayout` decides the payload path of
every output: converted movies, copied files, and every file the tool generates
(gain references). Workers write only the paths they were given. The rules:

- **Unique across all kinds**, also case-insensitively and after Unicode
  normalisation (bags are unpacked on macOS and Windows): the key of a path is
  ``unicodedata.normalize("NFC", path).casefold()``; a file path also never equals
  a folder path of another file.
- **Stable from run to run**: paths recorded in the journal are claimed first, so
  a file keeps its name; a source file that appears later and would take a name
  already in use (say a depositor's ``gain-reference.mrc`` where we generated one)
  gets another name. Nothing we wrote is overwritten by a copy, or the reverse.
- **Never the path of a different source file** in a first run: copies claim their
  own paths before converted movies and generated files choose theirs.
- **Portable names**: a name that is not valid UTF-8, holds a control character
  (CR, LF, ...) or ``%``, or starts like our temporary files is escaped
  deterministically (each offending byte becomes ``~XX``, hex); the original bytes
  are kept in the journal and in ``report.json`` (``source_path_hex``), so the
  original tree can be rebuilt. Every name stays within 255 bytes (a long name is
  shortened and given a ``~<hash>`` tail). Manifests, ``sha256sum -c`` and the
  upload list then work on every payload path.

Movies become ``stem.tif`` (``x.mrc`` -> ``x.tif``); when that is taken, ``x.mrc.tif``;
when that is taken too, ``x.mrc~<hash>.tif``.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from ..errors import PipelineError
from ..files import TEMP_MARKER

__all__ = [
    "OUTPUT_SUFFIX",
    "MAX_NAME_BYTES",
    "KIND_CONVERTED",
    "KIND_COPIED",
    "KIND_GENERATED",
    "PlannedSource",
    "PayloadLayout",
    "path_key",
    "portable_path",
    "source_path_bytes",
    "is_portable_path",
]

OUTPUT_SUFFIX = ".tif"
MAX_NAME_BYTES = 255
KIND_CONVERTED = "converted"
KIND_COPIED = "copied"
KIND_GENERATED = "generated"
_MOVIE_SUFFIXES = (".mrc", ".mrcs")


def source_path_bytes(rel_path: str) -> bytes:
    """The bytes of a source path as the file system holds them (undoes ``surrogateescape``)."""
    return os.fsencode(rel_path)


def path_key(rel_path: str) -> str:
    """Two payload paths that one of macOS, Windows or Linux would take for the same file."""
    return unicodedata.normalize("NFC", rel_path).casefold()


def _needs_escape(byte: int) -> bool:
    return byte < 0x20 or byte == 0x7F or byte == ord("%")


def _portable_name(name: str) -> str:
    if name.isascii() and name.isprintable() and "%" not in name and not name.startswith(TEMP_MARKER):
        return name  # the common case, without looking at each byte (printable: no control character)
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    if valid and not any(_needs_escape(byte) for byte in raw) and not name.startswith(TEMP_MARKER):
        return name
    parts: list[str] = []
    text = raw.decode("utf-8", "surrogateescape")
    for character in text:
        code = ord(character)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that is not UTF-8
            parts.append(f"~{code - 0xDC00:02X}")
        elif code < 0x80 and _needs_escape(code):
            parts.append(f"~{code:02X}")
        else:
            parts.append(character)
    escaped = "".join(parts)
    if escaped.startswith(TEMP_MARKER):
        escaped = "~" + escaped
    return escaped


def _fit_name(name: str, *, original: str) -> str:
    """``name`` within MAX_NAME_BYTES, shortened with a ``~<hash>`` tail that keeps its suffix."""
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(os.fsencode(original)).hexdigest()[:12]
    suffix = PurePosixPath(name).suffix
    if len(suffix.encode("utf-8")) > 16:
        suffix = ""
    tail = f"~{digest}{suffix}"
    budget = MAX_NAME_BYTES - len(tail.encode("utf-8"))
    stem = name.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return stem + tail


def portable_path(rel_path: str) -> str:
    """The payload path of a source path: every component portable and within 255 bytes."""
    path = "/".join(_fit_name(_portable_name(part), original=part) for part in rel_path.split("/"))
    return rel_path if path == rel_path else path  # the same string: held once for most files


def is_portable_path(rel_path: str) -> bool:
    return portable_path(rel_path) == rel_path


@dataclass(frozen=True)
class PlannedSource:
    """A source file the layout names: its path in SRC, what it becomes, its previous payload path."""

    rel_path: str
    kind: str  # converted | copied
    previous_output_rel_path: str = ""  # from the journal, if this source already had one


class PayloadLayout:
    """The payload paths of one run: claimed once, unique by :func:`path_key`, never reused."""

    def __init__(self) -> None:
        self._owner_of: dict[str, str] = {}  # path key -> owner ("source:<rel>" or "generated:<rel>")
        self._path_of: dict[str, str] = {}  # owner -> payload path
        self._folder_keys: set[str] = set()

    # ------------------------------------------------------------ queries

    def output_of(self, rel_path: str) -> str:
        """The payload path assigned to the source ``rel_path``."""
        return self._path_of[f"source:{rel_path}"]

    def kept_output_of(self, rel_path: str) -> str:
        """Where a movie that cannot be converted is copied as it is (its own name, not ``.tif``)."""
        return self._path_of.get(f"kept:{rel_path}") or self.output_of(rel_path)

    def owner(self, payload_rel_path: str) -> str | None:
        return self._owner_of.get(path_key(payload_rel_path))

    def is_free(self, payload_rel_path: str) -> bool:
        key = path_key(payload_rel_path)
        if key in self._owner_of or key in self._folder_keys:
            return False
        parts = key.split("/")
        # a file may not sit where another claim needs a folder, or under another file's path
        return not any("/".join(parts[:index]) in self._owner_of for index in range(1, len(parts)))

    def claimed(self) -> dict[str, str]:
        """``{owner: payload path}`` of every claim."""
        return dict(self._path_of)

    # ------------------------------------------------------------ claiming

    def _claim(self, owner: str, payload_rel_path: str) -> bool:
        if owner in self._path_of:
            return self._path_of[owner] == payload_rel_path
        if not payload_rel_path or not self.is_free(payload_rel_path):
            return False
        key = path_key(payload_rel_path)
        self._owner_of[key] = owner
        self._path_of[owner] = payload_rel_path
        parts = key.split("/")
        self._folder_keys.update("/".join(parts[:index]) for index in range(1, len(parts)))
        return True

    def reserve_kept(self, rel_path: str, output_rel_path: str) -> None:
        """Keep the path of an output whose source this run could not see (an unreadable folder):
        its row and its file stay, so no new file may take its name."""
        self._claim(f"kept:{rel_path}", output_rel_path)

    def claim_generated(self, folder: str, name: str, *, identity: str) -> str:
        """A free payload path for a file we generate in ``folder`` (``name``, else ``stem~N.ext``).

        ``identity`` names what the file is for (a gain set, one movie): asking again for the
        same identity gives the same path; two identities never share one.
        """
        owner = f"generated-for:{identity}"
        if owner in self._path_of:
            return self._path_of[owner]
        stem, suffix = os.path.splitext(name)
        for attempt in range(10_000):
            candidate_name = name if attempt == 0 else f"{stem}~{attempt}{suffix}"
            candidate_name = _fit_name(candidate_name, original=f"{identity}/{candidate_name}")
            candidate = f"{folder}/{candidate_name}" if folder else candidate_name
            if self._claim(owner, candidate):
                return candidate
        raise PipelineError(f"{folder or '.'}: no free name for {name} in the bag")

    def keep_generated(self, payload_rel_path: str) -> bool:
        """Claim a generated file's path known from the journal (False when it is taken)."""
        return self._claim(f"generated:{payload_rel_path}", payload_rel_path)

    def assign_sources(self, sources: Iterable[PlannedSource], *, generated: Iterable[str] = ()) -> list[str]:
        """Name every source's output, in the order that keeps names stable and honest.

        1. paths recorded in the journal, where the source's kind still gives that name, and
           generated files recorded in the journal (``generated``; those whose path is
           taken are returned: they must be made again);
        2. copies at their own (portable) path; a movie also reserves its own path, for
           the case where it cannot be converted and is kept as it is;
        3. converted movies: ``stem.tif`` (unless two movies share that stem), then ``name.tif``;
        4. anything left: a ``~<hash>`` name.
        """
        planned = sorted(sources, key=lambda source: os.fsencode(source.rel_path))
        for source in planned:
            previous = source.previous_output_rel_path
            if previous and previous in self._candidates(source):
                self._claim(f"source:{source.rel_path}", previous)
            elif previous and source.kind == KIND_CONVERTED and previous == portable_path(source.rel_path):
                self._claim(f"kept:{source.rel_path}", previous)
        lost = [path for path in generated if not self.keep_generated(path)]
        for source in planned:
            if source.kind == KIND_COPIED:
                self._claim(f"source:{source.rel_path}", portable_path(source.rel_path))
            else:
                self._claim(f"kept:{source.rel_path}", portable_path(source.rel_path))
        wanted = Counter(
            path_key(self._candidates(source)[0]) for source in planned if source.kind == KIND_CONVERTED
        )
        for preference in range(2):
            for source in planned:
                if source.kind == KIND_CONVERTED:
                    candidates = self._candidates(source)
                    shared = preference == 0 and wanted[path_key(candidates[0])] > 1
                    if preference < len(candidates) and not shared:  # x.mrc and x.mrcs: neither is x.tif
                        self._claim(f"source:{source.rel_path}", candidates[preference])
        for source in planned:
            owner = f"source:{source.rel_path}"
            if owner not in self._path_of and not self._claim(owner, self._hashed_name(source)):
                raise PipelineError(f"{source.rel_path}: no free name for its output in the bag")
            kept = f"kept:{source.rel_path}"
            if source.kind == KIND_CONVERTED and kept not in self._path_of:
                self._claim(kept, self._hashed_name(replace(source, kind=KIND_COPIED)))
        return lost

    def _candidates(self, source: PlannedSource) -> list[str]:
        portable = portable_path(source.rel_path)
        if source.kind == KIND_COPIED:
            return [portable]
        folder, _, name = portable.rpartition("/")
        prefix = f"{folder}/" if folder else ""
        stem, suffix = os.path.splitext(name)
        names = []
        if suffix.lower() in _MOVIE_SUFFIXES and stem:
            names.append(_fit_name(stem + OUTPUT_SUFFIX, original=source.rel_path))
        names.append(_fit_name(name + OUTPUT_SUFFIX, original=source.rel_path))
        return [prefix + candidate for candidate in dict.fromkeys(names)]

    def _hashed_name(self, source: PlannedSource) -> str:
        """A name no other claim can want: the file's name with a hash of its source path; a folder on
        the way that another claim holds as a file (``A`` beside ``a/``) gets a hashed name too."""
        portable = portable_path(source.rel_path)
        folder, _, name = portable.rpartition("/")
        digest = hashlib.sha256(source_path_bytes(source.rel_path)).hexdigest()[:12]
        suffix = OUTPUT_SUFFIX if source.kind == KIND_CONVERTED else PurePosixPath(name).suffix
        candidate = _fit_name(f"{name}~{digest}{suffix}", original=source.rel_path)
        parts = folder.split("/") if folder else []
        for index in range(len(parts)):
            if path_key("/".join(parts[: index + 1])) in self._owner_of:
                original = "/".join(source.rel_path.split("/")[: index + 1])
                folder_digest = hashlib.sha256(source_path_bytes(original)).hexdigest()[:12]
                parts[index] = _fit_name(f"{parts[index]}~{folder_digest}", original=original)
        return "/".join([*parts, candidate])
