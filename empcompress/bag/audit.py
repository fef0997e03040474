"""The fast audit of a bag: structure, completeness and the dependencies of our TIFFs, no payload hashed.

:func:`audit_bag` checks, collecting every problem:

- ``bagit.txt`` (unless ``sealed=False``: the writer audits before sealing), and
  ``bag-info.txt``'s Payload-Oxum against the payload on disk;
- every payload file on disk is listed exactly once in every payload manifest and
  every manifest entry is a regular file inside ``data/`` (with ``expected``: of
  the expected size, with the expected checksums, and no more, no fewer files);
- every tag manifest entry is a regular file inside the bag whose checksums match
  (tag files are small, so they are hashed here);
- every TIFF of ours (one :func:`empcompress.reconstruct.read_record` reads) whose
  record names a gain reference: the reference is inside ``data/``, listed in
  ``manifest-sha256.txt`` with exactly the recorded sha256, and present.

A received bag is not trusted (the model is bagit-python's validation, which
never follows a path out of the bag):

- the payload walk never follows a symbolic link; symbolic links, FIFOs, devices
  and sockets in ``data/`` are problems, never opened;
- a (tag) manifest path that is absolute, has a ``..`` component, passes through a
  symbolic link or is not a regular file is a problem and is never opened (every
  component is ``lstat``-ed, then the file is opened with
  :func:`~empcompress.files.open_regular`: no link followed, never blocks);
- a manifest line that is not valid text or not ``<checksum> <path>`` is a problem
  naming the manifest and the line;
- messages name paths (control characters escaped) and checksums of files in the
  bag only: nothing outside the bag is ever read.

Which bags are ours, and tag manifests
--------------------------------------

A bag is *ours* when ``expected`` is given or its bag-info.txt says so
(``Bag-Software-Agent: empcompress ...`` or any ``Empcompress-*`` field). Ours must
have ``manifest-{sha256,md5}.txt``, ``tagmanifest-{sha256,md5}.txt``, a bag-info.txt
with Payload-Oxum, and every top-level file (bagit.txt, bag-info.txt, manifests,
reports) listed in every tag manifest: deleting a tag manifest, or a line of one,
is a problem. A foreign bag is checked as ``bagit`` checks it: at least one payload
manifest, of any algorithm hashlib guarantees (sha512, sha1, ...); tag manifests are
optional, and when present every entry is checked but unlisted tag files are
accepted; Payload-Oxum is checked when present.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
import stat
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EmpCompressError, NotOurTiffError, PipelineError
from ..files import TEMP_MARKER, file_digests, open_regular
from .manifest import (
    BAG_INFO_TXT,
    BAGIT_TEXT,
    BAGIT_TXT,
    MANIFEST_ALGORITHMS,
    MAX_TAG_TEXT_BYTES,
    PAYLOAD_DIRNAME,
    BagProblem,
    ManifestLine,
    ParsedManifest,
    PayloadFile,
    manifest_algorithm,
    manifest_name,
    normalise_bag_path,
    parse_bag_info,
    parse_manifest,
    show_path,
    tag_manifest_name,
)

__all__ = ["BagAudit", "audit_bag", "inspect_bag", "is_our_bag_info", "payload_bytes_on_disk"]

#: Our journal and lock live here (beside the bag, not part of it).
STATE_DIRNAME = ".empcompress"
TIFF_SUFFIXES = (".tif", ".tiff")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_OXUM = re.compile(r"([0-9]+)\.([0-9]+)")


@dataclass(frozen=True)
class BagAudit:
    """What :func:`inspect_bag` found (what :func:`~empcompress.bag.verify_bag` goes on from)."""

    problems: tuple[BagProblem, ...]
    ours: bool
    algorithms: tuple[str, ...]  # of the payload manifests
    #: payload files listed in the manifests and present as regular files: {path: {algorithm: digest}}
    payload: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    payload_sizes_bytes: Mapping[str, int] = field(default_factory=dict)
    n_listed: int = 0  # distinct payload paths in the manifests
    n_tag_files: int = 0  # distinct paths in the tag manifests
    #: TIFFs of ours whose dependencies are in order: {path: its gain reference's path, or None}
    our_tiffs: Mapping[str, str | None] = field(default_factory=dict)


def audit_bag(
    dest: str | os.PathLike[str],
    *,
    expected: Sequence[PayloadFile] | None = None,
    sealed: bool = True,
) -> tuple[BagProblem, ...]:
    """Every problem the fast audit finds in ``dest`` (empty: none); decodes nothing, hashes no payload.

    ``expected``: the payload the writer wrote (sizes, checksums, exactly that set
    of paths). ``sealed=False``: bagit.txt is not required yet (the writer audits
    between :func:`~empcompress.bag.write_bag` and :func:`~empcompress.bag.seal_bag`).
    Raises :class:`PipelineError` only when ``dest`` is not a folder.
    """
    return inspect_bag(dest, expected=expected, sealed=sealed).problems


def is_our_bag_info(fields: Sequence[tuple[str, str]]) -> bool:
    """Whether bag-info.txt's fields say empcompress wrote the bag."""
    for label, value in fields:
        name = label.lower()
        if name == "bag-software-agent" and value.lower().startswith("empcompress"):
            return True
        if name.startswith("empcompress-"):
            return True
    return False


# ---------------------------------------------------------------- looking without opening


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


# ---------------------------------------------------------------- bagit.txt, bag-info.txt


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


# ---------------------------------------------------------------- manifests


def _manifests(
    dest: Path, top: dict[str, str], encoding: str, *, ours: bool, problems: list[BagProblem]
) -> tuple[dict[str, ParsedManifest], dict[str, ParsedManifest]]:
    """``(payload manifests, tag manifests)`` by algorithm."""
    payload: dict[str, ParsedManifest] = {}
    tags: dict[str, ParsedManifest] = {}
    for name in sorted(top):
        found = manifest_algorithm(name)
        if found is None:
            continue
        is_tag, algorithm = found
        data = _read_tag_text(dest, name, top[name], problems)
        if data is None:
            continue
        parsed = parse_manifest(data, name=name, algorithm=algorithm, encoding=encoding)
        problems.extend(parsed.problems)
        (tags if is_tag else payload)[algorithm] = parsed
    if ours:
        for algorithm in MANIFEST_ALGORITHMS:
            for name in (manifest_name(algorithm), tag_manifest_name(algorithm)):
                if name not in top:
                    problems.append(BagProblem(name, "missing (every bag empcompress writes has it)"))
    if not any(found is not None and not found[0] for found in map(manifest_algorithm, top)):
        problems.append(BagProblem("manifest-<algorithm>.txt", "missing: the bag has no payload manifest"))
    return payload, tags


def _line_path(manifest: ParsedManifest, line: ManifestLine, problems: list[BagProblem]) -> str:
    """The normalised path of a manifest line, or "" (a problem said why it is never opened)."""
    path, unsafe = normalise_bag_path(line.path)
    if unsafe:
        problems.append(
            BagProblem(
                manifest.name, f"line {line.line_number}: {show_path(line.path)!r} {unsafe}; never opened"
            )
        )
    return path


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


def _on_disk(path: str, line: ManifestLine, files: dict[str, int], nfc: dict[str, str]) -> str:
    """The file a manifest path names: as RFC 8493 decodes it, as bagit does, or by NFC (as bagit)."""
    if path in files:
        return path
    as_bagit, unsafe = normalise_bag_path(line.bagit_path)
    if not unsafe and as_bagit in files:
        return as_bagit
    return nfc.get(unicodedata.normalize("NFC", path), path)


def _payload_listed(
    dest: Path,
    manifests: dict[str, ParsedManifest],
    files: dict[str, int],
    special: dict[str, str],
    problems: list[BagProblem],
) -> dict[str, dict[str, str]]:
    """``{path: {algorithm: digest}}`` of the safe payload entries; each problem said once."""
    nfc: dict[str, str] = {}
    for name in files:
        nfc.setdefault(unicodedata.normalize("NFC", name), name)
    listed: dict[str, dict[str, str]] = {}
    for algorithm, manifest in sorted(manifests.items()):
        first_line: dict[str, int] = {}
        for line in manifest.lines:
            path = _line_path(manifest, line, problems)
            if not path:
                continue
            if path.split("/")[0] != PAYLOAD_DIRNAME or "/" not in path:
                problems.append(
                    BagProblem(
                        manifest.name,
                        f"line {line.line_number}: {show_path(path)!r} is not in {PAYLOAD_DIRNAME}/; "
                        "never opened",
                    )
                )
                continue
            key = _on_disk(path, line, files, nfc)
            if key in first_line:
                problems.append(
                    BagProblem(
                        show_path(key),
                        f"listed twice in {manifest.name} (lines {first_line[key]} and {line.line_number})",
                    )
                )
                continue
            first_line[key] = line.line_number
            listed.setdefault(key, {})[algorithm] = line.digest
    for key in sorted(set(listed) - set(files)):
        if key in special:
            continue  # the walk said what it is
        reason = inspect_path(dest, key)
        if reason == "is missing":
            problems.append(BagProblem(show_path(key), "listed in the manifests but missing"))
        else:
            problems.append(BagProblem(show_path(key), f"listed in the manifests but {reason}; never opened"))
    for key in sorted(files):
        if key not in listed:
            name = key.rsplit("/", 1)[-1]
            reason = (
                "a temporary file left by an interrupted run"
                if TEMP_MARKER in name
                else "not in the manifests"
            )
            problems.append(BagProblem(show_path(key), reason))
            continue
        for algorithm in sorted(manifests):
            if algorithm not in listed[key]:
                problems.append(BagProblem(show_path(key), f"not in {manifest_name(algorithm)}"))
    return listed


def _check_expected(
    expected: Sequence[PayloadFile],
    listed: dict[str, dict[str, str]],
    files: dict[str, int],
    problems: list[BagProblem],
) -> None:
    wanted: dict[str, PayloadFile] = {}
    for entry in expected:
        wanted[f"{PAYLOAD_DIRNAME}/{entry.rel_path}"] = entry
    for key in sorted(set(listed) - set(wanted)):
        problems.append(BagProblem(show_path(key), "is in the manifests but is not one of the files written"))
    for key in sorted(set(wanted) - set(listed)):
        problems.append(BagProblem(show_path(key), "was written but is not in the manifests"))
    for key in sorted(set(wanted) & set(listed)):
        entry = wanted[key]
        if key in files and files[key] != entry.size_bytes:
            problems.append(
                BagProblem(show_path(key), f"is {files[key]} bytes, {entry.size_bytes} were written")
            )
        for algorithm, digest in sorted(listed[key].items()):
            if algorithm in MANIFEST_ALGORITHMS and digest != str(getattr(entry, algorithm)).lower():
                problems.append(
                    BagProblem(
                        show_path(key),
                        f"{manifest_name(algorithm)} does not give the {algorithm} it was written with",
                    )
                )


# ---------------------------------------------------------------- tag files


def _check_tag_files(
    dest: Path,
    top: dict[str, str],
    tag_manifests: dict[str, ParsedManifest],
    *,
    unsealed_declaration: bytes | None,
    ours: bool,
    problems: list[BagProblem],
) -> int:
    """Check every tag manifest entry (hashing the small tag files); returns how many paths they list."""
    listed: dict[str, dict[str, str]] = {}
    for algorithm, manifest in sorted(tag_manifests.items()):
        first_line: dict[str, int] = {}
        for line in manifest.lines:
            path = _line_path(manifest, line, problems)
            if not path:
                continue
            if inspect_path(dest, path) == "is missing":
                as_bagit, unsafe = normalise_bag_path(line.bagit_path)
                if not unsafe and as_bagit != path and not inspect_path(dest, as_bagit):
                    path = as_bagit
            if path in first_line:
                problems.append(
                    BagProblem(
                        show_path(path),
                        f"listed twice in {manifest.name} (lines {first_line[path]} and {line.line_number})",
                    )
                )
                continue
            first_line[path] = line.line_number
            listed.setdefault(path, {})[algorithm] = line.digest
    for path, digests in sorted(listed.items()):
        if path == BAGIT_TXT and unsealed_declaration is not None:
            actual = {a: hashlib.new(a, unsealed_declaration).hexdigest() for a in digests}
        else:
            reason = inspect_path(dest, path)
            if reason:
                problems.append(
                    BagProblem(show_path(path), f"listed in the tag manifests but {reason}; never opened")
                )
                continue
            try:
                with open_regular(dest / path) as handle:
                    actual = file_digests(dest / path, algorithms=sorted(digests), handle=handle)
            except OSError as error:
                problems.append(BagProblem(show_path(path), f"cannot be read ({error.strerror})"))
                continue
        for algorithm, digest in sorted(digests.items()):
            if actual[algorithm] != digest:
                problems.append(
                    BagProblem(
                        show_path(path),
                        f"{algorithm} is {actual[algorithm]}, {tag_manifest_name(algorithm)} says {digest}",
                    )
                )
    for name in sorted(top):
        if TEMP_MARKER in name:
            problems.append(BagProblem(show_path(name), "a temporary file left by an interrupted run"))
    if ours:
        _check_our_tag_coverage(
            top, tag_manifests, listed, unsealed=unsealed_declaration is not None, problems=problems
        )
    return len(listed)


def _check_our_tag_coverage(
    top: dict[str, str],
    tag_manifests: dict[str, ParsedManifest],
    listed: dict[str, dict[str, str]],
    *,
    unsealed: bool,
    problems: list[BagProblem],
) -> None:
    """In our bags every top-level file is listed in every tag manifest (and nothing else is there)."""
    required = {BAGIT_TXT, BAG_INFO_TXT} if unsealed else {BAG_INFO_TXT}
    for name, kind in top.items():
        if name in (PAYLOAD_DIRNAME, STATE_DIRNAME) or TEMP_MARKER in name:
            continue
        found = manifest_algorithm(name)
        if found is not None and found[0]:
            continue
        if kind != "regular file":
            if kind != "folder":
                problems.append(BagProblem(show_path(name), f"{_not_regular(kind)}; not part of the bag"))
            continue
        required.add(name)
    for algorithm in sorted(tag_manifests):
        for name in sorted(set(listed) | required):
            if algorithm not in listed.get(name, {}):
                problems.append(BagProblem(show_path(name), f"not in {tag_manifest_name(algorithm)}"))


# ---------------------------------------------------------------- our TIFFs and their gain references


def _gain_target(tiff: str, gain: Any) -> tuple[str, str, str]:
    """``(path of the gain reference in the bag, recorded sha256, "")`` or ``("", "", problem)``."""
    if not isinstance(gain, dict):
        return "", "", "its record's gain entry is not an object"
    reference = gain.get("reference")
    digest = gain.get("reference_sha256")
    if not isinstance(reference, str) or not reference:
        return "", "", "its record names no gain reference file"
    if not isinstance(digest, str) or _SHA256_HEX.fullmatch(digest) is None:
        return "", "", "its record gives no valid sha256 for its gain reference"
    if "\x00" in reference or reference.startswith("/"):
        return (
            "",
            "",
            f"its record names its gain reference {show_path(reference)!r} outside {PAYLOAD_DIRNAME}/",
        )
    parts = tiff.split("/")[:-1]
    for part in reference.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            parts.append(part)
        elif len(parts) > 1:
            parts.pop()
        else:
            parts = []
            break
    if len(parts) < 2:
        return (
            "",
            "",
            f"its record names its gain reference {show_path(reference)!r} outside {PAYLOAD_DIRNAME}/",
        )
    return "/".join(parts), digest.lower(), ""


def _check_tiffs(
    dest: Path,
    listed: dict[str, dict[str, str]],
    files: dict[str, int],
    special: dict[str, str],
    *,
    has_sha256_manifest: bool,
    problems: list[BagProblem],
) -> dict[str, str | None]:
    """Read the record of every listed TIFF; returns ours whose dependencies are in order."""
    from ..reconstruct import read_record

    ours: dict[str, str | None] = {}
    for key in sorted(listed):
        if key not in files or not key.lower().endswith(TIFF_SUFFIXES):
            continue
        shown = show_path(key)
        try:
            record = read_record(dest / key)
        except NotOurTiffError:
            continue  # a TIFF copied from the source: its checksums are all there is to check
        except EmpCompressError as error:
            problems.append(BagProblem(shown, f"its empcompress record cannot be used: {error}"))
            continue
        except Exception as error:  # a hostile file must not stop the audit
            problems.append(BagProblem(shown, f"cannot be read as a TIFF ({type(error).__name__}: {error})"))
            continue
        gain = record.storage.gain
        if gain is None:
            ours[key] = None
            continue
        target, recorded, problem = _gain_target(key, gain)
        if not problem:
            needs = f"needs its gain reference {show_path(target)} (sha256 {recorded})"
            listed_digest = listed.get(target, {}).get("sha256")
            if not has_sha256_manifest:
                problem = f"{needs}, which cannot be checked: the bag has no {manifest_name('sha256')}"
            elif listed_digest is None:
                problem = f"{needs}, which is not in {manifest_name('sha256')}"
            elif listed_digest != recorded:
                problem = f"{needs}, but {manifest_name('sha256')} lists it with sha256 {listed_digest}"
            elif target not in files:
                reason = _not_regular(special[target]) if target in special else inspect_path(dest, target)
                problem = f"{needs}, which {reason}"
        if problem:
            problems.append(BagProblem(shown, problem))
        else:
            ours[key] = target
    return ours


# ---------------------------------------------------------------- the audit


def inspect_bag(
    dest: str | os.PathLike[str],
    *,
    expected: Sequence[PayloadFile] | None = None,
    sealed: bool = True,
) -> BagAudit:
    """The audit of :func:`audit_bag` with what it found (for :func:`~empcompress.bag.verify_bag`)."""
    dest = Path(dest)
    if not dest.is_dir():
        raise PipelineError(f"{dest}: no such folder; not a bag")
    problems: list[BagProblem] = []
    top = _top_level(dest, problems)
    encoding, declaration = _declaration(dest, top, sealed=sealed, problems=problems)
    info = _bag_info(dest, top, encoding, problems)
    ours = expected is not None or is_our_bag_info(info or ())
    if ours and info is None and BAG_INFO_TXT not in top:
        problems.append(BagProblem(BAG_INFO_TXT, "missing (every bag empcompress writes has it)"))
    manifests, tag_manifests = _manifests(dest, top, encoding, ours=ours, problems=problems)
    files, special = _walk_payload(dest, problems)
    listed = _payload_listed(dest, manifests, files, special, problems)
    _check_oxum(info, files, ours=ours, expected=expected, problems=problems)
    if expected is not None:
        _check_expected(expected, listed, files, problems)
    n_tag_files = _check_tag_files(
        dest,
        top,
        tag_manifests,
        unsealed_declaration=declaration if BAGIT_TXT not in top else None,
        ours=ours,
        problems=problems,
    )
    our_tiffs = _check_tiffs(
        dest, listed, files, special, has_sha256_manifest="sha256" in manifests, problems=problems
    )
    return BagAudit(
        problems=tuple(problems),
        ours=ours,
        algorithms=tuple(sorted(manifests)),
        payload={key: digests for key, digests in listed.items() if key in files},
        payload_sizes_bytes={key: files[key] for key in listed if key in files},
        n_listed=len(listed),
        n_tag_files=n_tag_files,
        our_tiffs=our_tiffs,
    )
