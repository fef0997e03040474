"""Re-checking a bag: the audit, every checksum, and with ``full`` a decode of every TIFF of ours.

Verification reads every payload file once (all its manifests' algorithms
together), only files the audit found to be regular files inside ``data/``
listed in the manifests, each opened with :func:`~empcompress.files.open_regular`.
With ``full``, every TIFF of ours whose checksums match and whose gain reference
the audit found in order is decoded and must rebuild its source (with that gain
reference, never one found elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..errors import EmpCompressError, PipelineError
from ..files import file_digests, open_regular
from .audit import inspect_bag
from .manifest import BAGIT_TXT, BagProblem, manifest_name, show_path

__all__ = ["ProgressCallback", "BagVerifyResult", "verify_bag"]

ProgressCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class BagVerifyResult:
    """What :func:`verify_bag` checked and found."""

    dest: str
    n_payload_files: int  # distinct payload paths in the manifests
    payload_size_bytes: int  # of those present
    n_tag_files: int  # distinct paths in the tag manifests
    n_tiffs_decoded: int
    full: bool
    problems: tuple[BagProblem, ...]
    algorithms: tuple[str, ...] = ()  # of the payload manifests
    ours: bool = False  # written by empcompress (bag-info.txt says so)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_payload_file(
    dest: Path,
    rel_path: str,
    expected: Mapping[str, str],
    *,
    decode: bool,
    gain_rel_path: str | None,
    progress: ProgressCallback | None,
) -> tuple[list[BagProblem], bool]:
    """Checksums of one payload file (one read pass), then with ``decode`` a decode of our TIFF."""
    path = dest / rel_path
    shown = show_path(rel_path)
    try:
        with open_regular(path) as handle:
            actual = file_digests(path, algorithms=sorted(expected), progress=progress, handle=handle)
    except OSError as error:
        return [BagProblem(shown, f"cannot be read ({error.strerror})")], False
    problems = [
        BagProblem(shown, f"{algorithm} is {actual[algorithm]}, {manifest_name(algorithm)} says {digest}")
        for algorithm, digest in sorted(expected.items())
        if actual[algorithm] != digest
    ]
    if not decode or problems:
        return problems, False
    from ..verify import verify_tiff

    gain_path = dest / gain_rel_path if gain_rel_path is not None else None
    try:
        verify_tiff(path, threads=1, gain_path=gain_path)
    except EmpCompressError as error:
        problems.append(BagProblem(shown, f"does not rebuild its source: {error}"))
    except Exception as error:  # a damaged file must not stop the verification
        problems.append(BagProblem(shown, f"cannot be decoded ({type(error).__name__}: {error})"))
    return problems, True


def verify_bag(
    dest: str | os.PathLike[str],
    *,
    full: bool = False,
    threads: int = 1,
    progress: ProgressCallback | None = None,
) -> BagVerifyResult:
    """Re-check a bag: the audit, every payload and tag checksum; with ``full`` decode every TIFF of ours.

    Problems are collected, never raised, however damaged or hostile the bag;
    ``result.ok`` says whether there were none. Bags written by the ``bagit``
    package (any algorithm hashlib guarantees) are checked as ``bagit`` checks
    them. Raises :class:`PipelineError` only when ``dest`` is not a bag at all
    (not a folder, or no bagit.txt).
    """
    dest = Path(dest)
    if not dest.is_dir() or not os.path.lexists(dest / BAGIT_TXT):
        raise PipelineError(
            f"{dest}: not a finished bag (no {BAGIT_TXT}); if a compress job was interrupted, "
            f"run the same command again to finish it"
        )
    audit = inspect_bag(dest, sealed=True)
    problems = list(audit.problems)
    n_decoded = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = [
            pool.submit(
                _check_payload_file,
                dest,
                rel_path,
                digests,
                decode=full and rel_path in audit.our_tiffs,
                gain_rel_path=audit.our_tiffs.get(rel_path),
                progress=progress,
            )
            for rel_path, digests in sorted(audit.payload.items())
        ]
        for future in futures:
            file_problems, decoded = future.result()
            problems.extend(file_problems)
            n_decoded += decoded
    return BagVerifyResult(
        dest=str(dest),
        n_payload_files=audit.n_listed,
        payload_size_bytes=sum(audit.payload_sizes_bytes.values()),
        n_tag_files=audit.n_tag_files,
        n_tiffs_decoded=n_decoded,
        full=full,
        problems=tuple(problems),
        algorithms=audit.algorithms,
        ours=audit.ours,
    )
