"""What the audit found: :class:`BagAudit` (its problems, and the payload and TIFFs of ours that
:func:`~empcompress.bag.verify_bag` goes on from)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..manifest import BagProblem

__all__ = ["BagAudit"]


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
