"""The audit itself: :func:`inspect_bag` runs every check in order, collecting their problems,
and returns :class:`~.result.BagAudit`; :func:`audit_bag` gives just the problems."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ...errors import PipelineError
from ..manifest import BAG_INFO_TXT, BAGIT_TXT, BagProblem, PayloadFile
from .declaration import _bag_info, _check_oxum, _declaration, is_our_bag_info
from .disk import _top_level, _walk_payload
from .manifests import _check_expected, _manifests, _payload_listed
from .result import BagAudit
from .tag_files import _check_tag_files
from .tiffs import _check_tiffs

__all__ = ["audit_bag", "inspect_bag"]


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
