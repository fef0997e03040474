"""The destination as a BagIt bag (RFC 8493): writing its tag files, and verifying it.

Layout of a finished DEST::

    bagit.txt                 BagIt-Version 1.0, UTF-8
    bag-info.txt              source, tool version, totals, storage decisions, Payload-Oxum
    manifest-sha256.txt       "<sha256>  data/<path>" for every payload file (sha256sum -c works)
    manifest-md5.txt          the same with md5
    report.json, report.md    what the compress job did (tag files, see empcompress.report)
    ascp-file-list.txt        every verified file of the bag, one per line (ascp --file-list)
    tagmanifest-sha256.txt    checksums of the tag files above
    tagmanifest-md5.txt
    data/...                  the payload: SRC's tree, movies as TIFF stacks
    .empcompress/             the journal and lock (state of the compress job; not part of the bag)

Paths in manifests are written as the ``bagit`` package writes them: only CR and LF
are percent-encoded. A literal ``%`` is left as it is (RFC 8493 asks for ``%25``,
which neither ``bagit`` nor ``sha256sum -c`` decode), so such names are read back
correctly by both tools.

Checksums are never recomputed here when the bag is written: they come from the
journal (computed in the conversion's or copy's own read pass). Verification reads
every payload file once, computing sha256 and md5 together, and with ``full``
also decodes every TIFF stack we wrote and checks that it rebuilds its source.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .errors import EmpCompressError, NotOurTiffError, PipelineError
from .files import TEMP_MARKER, commit_output, file_digests, temporary_output

__all__ = [
    "BAGIT_VERSION",
    "PAYLOAD_DIRNAME",
    "MANIFEST_ALGORITHMS",
    "BAG_DECLARATION_FILES",
    "PayloadFile",
    "BagProblem",
    "BagVerifyResult",
    "encode_manifest_path",
    "decode_manifest_path",
    "write_text_atomically",
    "write_bag",
    "remove_bag_declaration",
    "read_manifest",
    "read_bag_info",
    "verify_bag",
]

BAGIT_VERSION = "1.0"
PAYLOAD_DIRNAME = "data"
MANIFEST_ALGORITHMS: tuple[str, ...] = ("sha256", "md5")
BAG_DECLARATION_FILES: tuple[str, ...] = (
    "bagit.txt",
    *(f"manifest-{algorithm}.txt" for algorithm in MANIFEST_ALGORITHMS),
    *(f"tagmanifest-{algorithm}.txt" for algorithm in MANIFEST_ALGORITHMS),
)
HASH_CHUNK_BYTES = 8 << 20

ProgressCallback = Callable[[str, int], None]


@dataclass(frozen=True)
class PayloadFile:
    """One payload file with its checksums; ``rel_path`` is relative to ``data/`` (POSIX)."""

    rel_path: str
    size_bytes: int
    sha256: str
    md5: str


@dataclass(frozen=True)
class BagProblem:
    """Something wrong with one file of a bag (path relative to the bag's top)."""

    rel_path: str
    problem: str


@dataclass(frozen=True)
class BagVerifyResult:
    """What :func:`verify_bag` checked and found."""

    dest: str
    n_payload_files: int
    payload_size_bytes: int
    n_tag_files: int
    n_tiffs_decoded: int
    full: bool
    problems: tuple[BagProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------- paths in manifests


def encode_manifest_path(path: str) -> str:
    """A bag-relative path as written in a manifest (CR and LF percent-encoded)."""
    return path.replace("\r", "%0D").replace("\n", "%0A")


def decode_manifest_path(text: str) -> str:
    return text.replace("%0D", "\r").replace("%0d", "\r").replace("%0A", "\n").replace("%0a", "\n")


# ---------------------------------------------------------------- writing


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small UTF-8 text file through a temporary name (never half-written)."""
    with temporary_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8", newline="\n")
        commit_output(temporary, path)


def _manifest_text(entries: Iterable[tuple[str, str]]) -> str:
    return "".join(f"{digest}  {encode_manifest_path(path)}\n" for path, digest in sorted(entries))


def _bag_info_text(fields: Sequence[tuple[str, str]]) -> str:
    lines = []
    for label, value in fields:
        one_line = " ".join(str(value).split())
        lines.append(f"{label}: {one_line}\n")
    return "".join(lines)


def remove_bag_declaration(dest: str | os.PathLike[str]) -> None:
    """Remove bagit.txt and the manifests, so that an unfinished DEST is not taken for a bag."""
    for name in BAG_DECLARATION_FILES:
        with contextlib.suppress(FileNotFoundError):
            (Path(dest) / name).unlink()


def write_bag(
    dest: str | os.PathLike[str],
    *,
    payload: Sequence[PayloadFile],
    bag_info: Sequence[tuple[str, str]],
    tag_files: Sequence[str] = (),
) -> None:
    """Write the manifests, bagit.txt, bag-info.txt and the tag manifests of ``dest``.

    ``payload`` must list every file under ``data/`` with the checksums computed
    when it was written; ``tag_files`` are extra tag files already in ``dest``
    (reports) to cover in the tag manifests. Payload-Oxum, Bagging-Date and
    Bag-Software-Agent are added to ``bag_info``.
    """
    dest = Path(dest)
    if not (dest / PAYLOAD_DIRNAME).is_dir():
        raise PipelineError(f"{dest}: has no {PAYLOAD_DIRNAME}/ folder; it is not a bag being written")
    bagit_text = f"BagIt-Version: {BAGIT_VERSION}\nTag-File-Character-Encoding: UTF-8\n"
    total_bytes = sum(entry.size_bytes for entry in payload)
    info = [
        ("Bagging-Date", datetime.date.today().isoformat()),
        ("Bag-Software-Agent", f"empcompress {__version__}"),
        ("Payload-Oxum", f"{total_bytes}.{len(payload)}"),
        *bag_info,
    ]
    for algorithm in MANIFEST_ALGORITHMS:
        entries = [(f"{PAYLOAD_DIRNAME}/{entry.rel_path}", getattr(entry, algorithm)) for entry in payload]
        write_text_atomically(dest / f"manifest-{algorithm}.txt", _manifest_text(entries))
    write_text_atomically(dest / "bag-info.txt", _bag_info_text(info))
    write_text_atomically(dest / "bagit.txt", bagit_text)
    tagged = ["bagit.txt", "bag-info.txt", *(f"manifest-{a}.txt" for a in MANIFEST_ALGORITHMS), *tag_files]
    digests = {name: file_digests(dest / name, algorithms=MANIFEST_ALGORITHMS) for name in tagged}
    for algorithm in MANIFEST_ALGORITHMS:
        entries = [(name, digests[name][algorithm]) for name in tagged]
        write_text_atomically(dest / f"tagmanifest-{algorithm}.txt", _manifest_text(entries))


# ---------------------------------------------------------------- reading


def read_manifest(path: Path) -> dict[str, str]:
    """``{bag-relative path: digest}`` from a (tag) manifest file."""
    entries: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                raise PipelineError(f"{path}: line {number} is not '<checksum>  <path>'")
            digest, name = parts
            entries[decode_manifest_path(name.lstrip("*"))] = digest.lower()
    return entries


def read_bag_info(path: Path) -> list[tuple[str, str]]:
    """The (label, value) pairs of a bag-info.txt, continuation lines joined."""
    fields: list[tuple[str, str]] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\n")
            if line[:1] in (" ", "\t") and fields:
                label, value = fields[-1]
                fields[-1] = (label, f"{value} {line.strip()}")
            elif ":" in line:
                label, value = line.split(":", 1)
                fields.append((label.strip(), value.strip()))
    return fields


# ---------------------------------------------------------------- verifying


def _payload_on_disk(dest: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for directory, _, names in os.walk(dest / PAYLOAD_DIRNAME):
        for name in names:
            path = Path(directory) / name
            found[path.relative_to(dest).as_posix()] = path.lstat().st_size
    return found


def _check_file(
    dest: Path,
    rel_path: str,
    expected: dict[str, str],
    *,
    full: bool,
    threads: int,
    progress: ProgressCallback | None,
) -> tuple[list[BagProblem], bool]:
    """Checksums of one file (one read pass), and with ``full`` a decode of our TIFFs."""
    path = dest / rel_path
    problems: list[BagProblem] = []
    hashers = {algorithm: hashlib.new(algorithm) for algorithm in expected}
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK_BYTES):
                for hasher in hashers.values():
                    hasher.update(chunk)
                if progress is not None:
                    progress("checksums", len(chunk))
    except OSError as error:
        return [BagProblem(rel_path, f"cannot be read ({error.strerror})")], False
    for algorithm, digest in expected.items():
        actual = hashers[algorithm].hexdigest()
        if actual != digest:
            problems.append(BagProblem(rel_path, f"{algorithm} is {actual}, the manifest says {digest}"))
    decoded = False
    if full and not problems and path.suffix.lower() in (".tif", ".tiff"):
        decoded = _decode_tiff(path, rel_path, problems, threads=threads)
    return problems, decoded


def _decode_tiff(path: Path, rel_path: str, problems: list[BagProblem], *, threads: int) -> bool:
    from .reconstruct import read_record
    from .verify import verify_tiff

    try:
        read_record(path)
    except NotOurTiffError:
        return False  # a TIFF copied from the source (its checksums were checked)
    except EmpCompressError:
        pass  # ours, but it needs more than the TIFF alone: let verify_tiff say what
    try:
        verify_tiff(path, threads=threads)
    except EmpCompressError as error:
        problems.append(BagProblem(rel_path, f"does not rebuild its source: {error}"))
    return True


def verify_bag(
    dest: str | os.PathLike[str],
    *,
    full: bool = False,
    threads: int = 1,
    progress: ProgressCallback | None = None,
) -> BagVerifyResult:
    """Re-check a bag: structure, Payload-Oxum, every checksum; with ``full`` decode every TIFF we wrote.

    Problems are collected, not raised; ``result.ok`` says whether there were none.
    Raises :class:`PipelineError` only when ``dest`` is not a bag at all.
    """
    dest = Path(dest)
    if not (dest / "bagit.txt").is_file():
        raise PipelineError(
            f"{dest}: not a finished bag (no bagit.txt); if a compress job was interrupted, "
            f"run the same command again to finish it"
        )
    problems: list[BagProblem] = []
    manifests: dict[str, dict[str, str]] = {}
    for algorithm in MANIFEST_ALGORITHMS:
        path = dest / f"manifest-{algorithm}.txt"
        if path.is_file():
            manifests[algorithm] = read_manifest(path)
        else:
            problems.append(BagProblem(path.name, "missing"))
    tag_manifests: dict[str, dict[str, str]] = {}
    for algorithm in MANIFEST_ALGORITHMS:
        path = dest / f"tagmanifest-{algorithm}.txt"
        if path.is_file():
            tag_manifests[algorithm] = read_manifest(path)
    listed: dict[str, dict[str, str]] = {}
    for algorithm, entries in manifests.items():
        for name, digest in entries.items():
            listed.setdefault(name, {})[algorithm] = digest
    on_disk = _payload_on_disk(dest)
    for name in sorted(set(on_disk) - set(listed)):
        reason = (
            "a temporary file left by an interrupted run" if TEMP_MARKER in name else "not in the manifests"
        )
        problems.append(BagProblem(name, reason))
    for name in sorted(set(listed) - set(on_disk)):
        problems.append(BagProblem(name, "listed in the manifests but missing"))
    for name, digests in sorted(listed.items()):
        missing = [algorithm for algorithm in manifests if algorithm not in digests]
        if missing:
            problems.append(BagProblem(name, f"not in manifest-{missing[0]}.txt"))
    _check_oxum(dest, on_disk, problems)
    tag_listed: dict[str, dict[str, str]] = {}
    for algorithm, entries in tag_manifests.items():
        for name, digest in entries.items():
            tag_listed.setdefault(name, {})[algorithm] = digest
    jobs = [(name, digests) for name, digests in sorted(listed.items()) if name in on_disk]
    jobs += [(name, digests) for name, digests in sorted(tag_listed.items())]
    n_decoded = 0
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = [
            pool.submit(_check_file, dest, name, digests, full=full, threads=1, progress=progress)
            for name, digests in jobs
        ]
        for future in futures:
            file_problems, decoded = future.result()
            problems.extend(file_problems)
            n_decoded += decoded
    return BagVerifyResult(
        dest=str(dest),
        n_payload_files=len(listed),
        payload_size_bytes=sum(on_disk.get(name, 0) for name in listed),
        n_tag_files=len(tag_listed),
        n_tiffs_decoded=n_decoded,
        full=full,
        problems=tuple(problems),
    )


def _check_oxum(dest: Path, on_disk: dict[str, int], problems: list[BagProblem]) -> None:
    info_path = dest / "bag-info.txt"
    if not info_path.is_file():
        return
    for label, value in read_bag_info(info_path):
        if label.lower() == "payload-oxum":
            expected = f"{sum(on_disk.values())}.{len(on_disk)}"
            if value != expected:
                problems.append(
                    BagProblem("bag-info.txt", f"Payload-Oxum is {value} but the payload holds {expected}")
                )
            return
