"""The manifests: read (payload and tag manifests by algorithm), their lines' paths made safe,
every payload file on disk listed exactly once in every payload manifest, and, with
``expected``, the payload the writer wrote and no other."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from pathlib import Path

from ...files import TEMP_MARKER
from ..manifest import (
    MANIFEST_ALGORITHMS,
    PAYLOAD_DIRNAME,
    BagProblem,
    ManifestLine,
    ParsedManifest,
    PayloadFile,
    manifest_algorithm,
    manifest_name,
    normalise_bag_path,
    parse_manifest,
    show_path,
    tag_manifest_name,
)
from .disk import _read_tag_text, inspect_path


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


def _list_once(
    key: str,
    line: ManifestLine,
    manifest: ParsedManifest,
    algorithm: str,
    *,
    first_line: dict[str, int],
    listed: dict[str, dict[str, str]],
    problems: list[BagProblem],
) -> None:
    """Record ``line``'s digest for ``key`` unless this manifest listed ``key`` before (a problem)."""
    if key in first_line:
        problems.append(
            BagProblem(
                show_path(key),
                f"listed twice in {manifest.name} (lines {first_line[key]} and {line.line_number})",
            )
        )
        return
    first_line[key] = line.line_number
    listed.setdefault(key, {})[algorithm] = line.digest


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
            _list_once(
                key, line, manifest, algorithm, first_line=first_line, listed=listed, problems=problems
            )
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
