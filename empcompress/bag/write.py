"""Writing a bag in two steps: :func:`write_bag` (everything but bagit.txt), then :func:`seal_bag`.

Between the two the writer runs :func:`empcompress.bag.audit_bag` with
``sealed=False``; only a bag that passed gets its ``bagit.txt``, so a DEST with a
``bagit.txt`` is one whose files can all be recovered. The tag manifests cover
``bagit.txt`` already: its text is fixed (:data:`BAGIT_TEXT`).

Checksums of the payload are never recomputed here: they come from the journal
(computed in the conversion's or copy's own read pass).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from .. import __version__
from ..errors import PipelineError
from ..files import (
    commit_output,
    file_digests,
    fsync_directory,
    open_regular,
    temporary_output,
    write_bytes_atomically,
)
from .manifest import (
    BAG_DECLARATION_FILES,
    BAG_INFO_TXT,
    BAGIT_TEXT,
    BAGIT_TXT,
    MANIFEST_ALGORITHMS,
    PAYLOAD_DIRNAME,
    PayloadFile,
    bag_info_text,
    manifest_algorithm,
    manifest_name,
    manifest_text,
    normalise_bag_path,
    read_manifest,
    show_path,
    tag_manifest_name,
)

__all__ = ["write_text_atomically", "write_bag", "seal_bag", "remove_bag_declaration", "rewrite_tag_file"]


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small UTF-8 text file through a temporary name (never half-written)."""
    with temporary_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="\n")
        commit_output(temporary, path)


def remove_bag_declaration(dest: str | os.PathLike[str]) -> None:
    """Remove bagit.txt (first) and the manifests, so that an unfinished DEST is not taken for a bag."""
    for name in BAG_DECLARATION_FILES:
        with contextlib.suppress(FileNotFoundError):
            (Path(dest) / name).unlink()
    fsync_directory(dest)


def _unseal(dest: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (dest / BAGIT_TXT).unlink()
        fsync_directory(dest)


def _payload_entries(payload: Sequence[PayloadFile]) -> list[str]:
    """The bag-relative paths of ``payload`` (raises PipelineError for one we must not write)."""
    paths: list[str] = []
    seen: set[str] = set()
    for entry in payload:
        normalised, unsafe = normalise_bag_path(entry.rel_path)
        if unsafe or normalised != entry.rel_path:
            reason = unsafe or "is not a normalised path"
            raise PipelineError(
                f"payload file {show_path(entry.rel_path)!r} {reason}; not written to a manifest"
            )
        path = f"{PAYLOAD_DIRNAME}/{normalised}"
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            raise PipelineError(f"payload file {show_path(path)!r} is not valid UTF-8; not written") from None
        if path in seen:
            raise PipelineError(f"payload file {show_path(path)!r} is given twice; not written to a manifest")
        seen.add(path)
        paths.append(path)
    return paths


def _tag_entries(tag_files: Sequence[str]) -> list[str]:
    """bagit.txt, bag-info.txt, the manifests, then ``tag_files`` (once each; declaration files skipped)."""
    tagged = [BAGIT_TXT, BAG_INFO_TXT, *(manifest_name(algorithm) for algorithm in MANIFEST_ALGORITHMS)]
    for name in tag_files:
        normalised, unsafe = normalise_bag_path(name)
        if unsafe or normalised.split("/")[0] == PAYLOAD_DIRNAME:
            reason = unsafe or "is in the payload folder"
            raise PipelineError(f"tag file {show_path(name)!r} {reason}; not written to a tag manifest")
        found = manifest_algorithm(normalised)
        if found is not None and found[0]:
            continue  # a tag manifest does not list tag manifests
        if normalised not in tagged:
            tagged.append(normalised)
    return tagged


def write_bag(
    dest: str | os.PathLike[str],
    *,
    payload: Sequence[PayloadFile],
    bag_info: Sequence[tuple[str, str]],
    tag_files: Sequence[str] = (),
) -> None:
    """Write the manifests, bag-info.txt and the tag manifests of ``dest``, but not bagit.txt.

    ``bagit.txt`` is removed first (a DEST being rewritten is not a bag), and is
    written by :func:`seal_bag` once :func:`~empcompress.bag.audit_bag` has passed.
    ``payload`` must list every file under ``data/`` with the checksums computed
    when it was written; ``tag_files`` are extra tag files already in ``dest``
    (reports) to cover in the tag manifests. Payload-Oxum, Bagging-Date and
    Bag-Software-Agent are added to ``bag_info``. Raises PipelineError when
    ``dest`` has no ``data/`` folder or a name cannot be written.
    """
    dest = Path(dest)
    _unseal(dest)
    try:
        is_folder = stat.S_ISDIR((dest / PAYLOAD_DIRNAME).lstat().st_mode)
    except OSError:
        is_folder = False
    if not is_folder:
        raise PipelineError(f"{dest}: has no {PAYLOAD_DIRNAME}/ folder; it is not a bag being written")
    paths = _payload_entries(payload)
    tagged = _tag_entries(tag_files)
    total_bytes = sum(entry.size_bytes for entry in payload)
    info = [
        ("Bagging-Date", datetime.date.today().isoformat()),
        ("Bag-Software-Agent", f"empcompress {__version__}"),
        ("Payload-Oxum", f"{total_bytes}.{len(payload)}"),
        *bag_info,
    ]
    for algorithm in MANIFEST_ALGORITHMS:
        entries = [(path, getattr(entry, algorithm)) for path, entry in zip(paths, payload, strict=True)]
        write_text_atomically(dest / manifest_name(algorithm), manifest_text(entries))
    write_text_atomically(dest / BAG_INFO_TXT, bag_info_text(info))
    _write_tag_manifests(dest, tagged)


def _write_tag_manifests(dest: Path, tagged: Sequence[str]) -> None:
    """The tag manifests of ``tagged`` (bagit.txt first: its fixed text is hashed, not the file)."""
    digests: dict[str, dict[str, str]] = {
        BAGIT_TXT: {a: hashlib.new(a, BAGIT_TEXT.encode()).hexdigest() for a in MANIFEST_ALGORITHMS}
    }
    for name in tagged[1:]:
        try:
            with open_regular(dest / name) as handle:
                digests[name] = file_digests(dest / name, algorithms=MANIFEST_ALGORITHMS, handle=handle)
        except OSError as error:
            raise PipelineError(f"{dest / name}: tag file cannot be read ({error.strerror})") from None
    for algorithm in MANIFEST_ALGORITHMS:
        entries = [(name, digests[name][algorithm]) for name in tagged]
        write_text_atomically(dest / tag_manifest_name(algorithm), manifest_text(entries))


def rewrite_tag_file(dest: str | os.PathLike[str], name: str, data: bytes) -> bool:
    """Replace (or add) the tag file ``name`` of our bag ``dest`` and its lines in the tag manifests.

    The bag is unsealed first (bagit.txt removed), the file written atomically, and the
    tag manifests written again from the files they list (plus ``name``). Returns whether
    the bag was sealed before: the caller audits it and seals it again
    (:func:`~empcompress.bag.audit_bag` with ``sealed=False``, then :func:`seal_bag`). The
    payload and its manifests are not touched.
    """
    dest = Path(dest)
    listed = read_manifest(dest / tag_manifest_name(MANIFEST_ALGORITHMS[0]))
    tagged = _tag_entries([*(path for path in listed if path != BAGIT_TXT), name])
    was_sealed = (dest / BAGIT_TXT).is_file()
    _unseal(dest)
    write_bytes_atomically(dest / name, data)
    _write_tag_manifests(dest, tagged)
    return was_sealed


def seal_bag(dest: str | os.PathLike[str]) -> None:
    """Write bagit.txt (atomically), last: from then on ``dest`` is a bag."""
    write_text_atomically(Path(dest) / BAGIT_TXT, BAGIT_TEXT)
