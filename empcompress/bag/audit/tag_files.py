"""The tag files: every tag manifest entry a regular file inside the bag with matching checksums
(tag files are small, so they are hashed here), and in our bags every top-level file listed in
every tag manifest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ...files import TEMP_MARKER, file_digests, open_regular
from ...journal import STATE_DIRNAME
from ..manifest import (
    BAG_INFO_TXT,
    BAGIT_TXT,
    PAYLOAD_DIRNAME,
    BagProblem,
    ParsedManifest,
    manifest_algorithm,
    normalise_bag_path,
    show_path,
    tag_manifest_name,
)
from .disk import _not_regular, inspect_path
from .manifests import _line_path, _list_once

__all__ = ["STATE_DIRNAME"]  # (the journal's: where our journal and lock live, beside the bag)


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
            _list_once(
                path, line, manifest, algorithm, first_line=first_line, listed=listed, problems=problems
            )
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
