"""Bag integrity, checked as far as possible with tools that are not ours: every source file comes back.

Acceptance tests for the redesigned ``empcompress.pipeline`` (``compress_drive`` with ``CompressOptions``,
``CompressSummary.complete`` / ``exit_code``). Each drive is compressed once and then again with the same
command; after each run the bag must be

- valid (:func:`assert_valid_bag`): ``bagit`` validates it, ``sha256sum -c`` accepts its manifest, no path
  is listed twice, no two payload paths are equal ignoring case, and ``verify_bag`` finds nothing wrong;
- recoverable (:func:`assert_recoverable`): the sha256 multiset of SRC is found again in the payload, a
  copied file by its own bytes, a converted movie by what ``restore_movie`` rebuilds from its TIFF (a
  generated gain reference named by a TIFF's record is the only extra allowed);
- faithful to SRC's names (:func:`assert_source_paths_hold_their_own_file`): a payload path that is also
  the path of a source file holds that source file's bytes, never another file's output.

Drives: colliding names, depositor files named like ours, a gain-normalised set with a flipped member,
hard links / empty files / changed sources, a bag whose gain reference was removed, an unreadable folder
(run as a non-root user) and I/O errors injected in the middle of a conversion.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bagit
import mrcfile
import numpy as np
import pytest
import tifffile
from drives import gain_normalised_movie, write_mrc

from empcompress.manifest import verify_bag
from empcompress.pipeline import CompressOptions, compress_drive
from empcompress.restore import restore_movie

pytestmark = pytest.mark.slow

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
CHUNK = 1 << 20
TAG_DECLARATIONS = ("bagit.txt", "bag-info.txt", "manifest-sha256.txt", "manifest-md5.txt")


# ================================================================ helpers: reading a bag


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_under(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` by POSIX relative path (links not followed)."""
    found: dict[str, Path] = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if stat.S_ISREG(path.lstat().st_mode):
                found[path.relative_to(root).as_posix()] = path
    return found


def payload_files(dest: Path) -> dict[str, Path]:
    """The bag's payload files by path relative to ``data/``."""
    return files_under(dest / "data")


def our_record(path: Path) -> dict[str, Any] | None:
    """The JSON record of one of our TIFFs (page 0 ImageDescription, read with tifffile), else None."""
    try:
        with open(path, "rb") as handle:
            if handle.read(4) not in TIFF_MAGIC:
                return None
        with tifffile.TiffFile(path) as tiff:
            description = tiff.pages[0].description
        document = json.loads(description)
    except Exception:
        return None
    if isinstance(document, dict) and document.get("format") == "empcompress":
        return document
    return None


def our_tiffs(dest: Path) -> dict[str, dict[str, Any]]:
    """{payload path (relative to data/): record} of every TIFF of ours in the bag, found by content."""
    found = {}
    for rel_path, path in payload_files(dest).items():
        record = our_record(path)
        if record is not None:
            found[rel_path] = record
    return found


def manifest_lines(path: Path) -> list[tuple[str, str]]:
    """(digest, path) of every line of a (tag) manifest, duplicates kept."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(None, 1)
            entries.append((digest, name))
    return entries


def is_gain_mrc(path: Path) -> bool:
    """A float32 MRC holding one 2-D image (read with mrcfile)."""
    try:
        with mrcfile.open(path, permissive=False, header_only=False) as mrc:
            data = mrc.data
            return data is not None and data.dtype == np.float32 and data.squeeze().ndim == 2
    except Exception:
        return False


def _excluded(rel_path: str, exclude: Iterable[str]) -> bool:
    return any(rel_path == item or rel_path.startswith(item.rstrip("/") + "/") for item in exclude)


# ================================================================ helpers: the checks


def assert_consistent_payload(dest: Path) -> None:
    """``sha256sum -c`` accepts the manifest, no manifest lists a path twice, no two payload paths are
    equal but for case. (What even an unsealed bag, written after a run with failures, must satisfy.)"""
    result = subprocess.run(
        ["sha256sum", "--quiet", "-c", "manifest-sha256.txt"],
        cwd=dest,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"sha256sum -c failed:\n{result.stdout}{result.stderr}"
    for manifest in sorted(dest.glob("*manifest-*.txt")):
        counts = Counter(name for _, name in manifest_lines(manifest))
        twice = sorted(name for name, count in counts.items() if count > 1)
        assert not twice, f"{manifest.name} lists these paths more than once: {twice}"
    by_lower: dict[str, list[str]] = defaultdict(list)
    for rel_path in payload_files(dest):
        by_lower[rel_path.lower()].append(rel_path)
    clashes = sorted(sorted(names) for names in by_lower.values() if len(names) > 1)
    assert not clashes, f"payload paths equal but for case: {clashes}"


def assert_valid_bag(dest: Path) -> None:
    """The bag checked by bagit, sha256sum, by hand (duplicates, case) and by our verify_bag."""
    bagit.Bag(str(dest)).validate()
    assert_consistent_payload(dest)
    verified = verify_bag(dest)
    assert verified.ok, f"verify_bag found problems: {verified.problems}"


def assert_recoverable(source: Path, dest: Path, scratch: Path, *, exclude: Iterable[str] = ()) -> None:
    """Every source file (but ``exclude``: paths or folders) is in the bag, counted as a multiset of sha256.

    Recovered items: every payload file that is not one of our TIFFs (its own bytes) and, for every TIFF
    of ours, what ``restore_movie`` rebuilds from it. Each source file needs its own recovered item (two
    identical source files need two). The only extras allowed are gain references named by a TIFF's
    record (float32 MRC images holding the recorded sha256).
    """
    exclude = tuple(exclude)
    scratch.mkdir(parents=True, exist_ok=True)
    needed: Counter[str] = Counter()
    source_names: dict[str, list[str]] = defaultdict(list)
    for rel_path, path in files_under(source).items():
        if _excluded(rel_path, exclude):
            continue
        digest = sha256_of(path)
        needed[digest] += 1
        source_names[digest].append(rel_path)

    payload = payload_files(dest)
    data = (dest / "data").resolve()
    problems: list[str] = []
    recovered: list[tuple[str, str]] = []  # (sha256, what)
    referenced: dict[Path, list[tuple[str, str]]] = defaultdict(list)  # gain file -> [(tiff, sha256)]
    plain: dict[str, Path] = {}
    for index, (rel_path, path) in enumerate(sorted(payload.items())):
        record = our_record(path)
        if record is None:
            plain[rel_path] = path
            continue
        gain = (record.get("storage") or {}).get("gain")
        if gain:
            referenced[(path.parent / gain["reference"]).resolve()].append(
                (rel_path, gain["reference_sha256"])
            )
        restored = scratch / f"restored-{index}.mrc"
        with contextlib.suppress(FileNotFoundError):
            restored.unlink()
        try:
            restore_movie(path, restored)
        except Exception as error:
            problems.append(f"data/{rel_path}: restore_movie failed ({type(error).__name__}: {error})")
            continue
        recovered.append((sha256_of(restored), f"data/{rel_path} (restored)"))
        restored.unlink()

    gain_files: list[tuple[str, str]] = []
    for reference, users in sorted(referenced.items()):
        names = ", ".join(f"data/{tiff}" for tiff, _ in users)
        if not reference.is_relative_to(data):
            problems.append(f"{reference}: gain reference of {names} lies outside the payload")
            continue
        rel_path = reference.relative_to(data).as_posix()
        if rel_path not in payload:
            problems.append(f"data/{rel_path}: gain reference of {names} is missing from the bag")
            continue
        digest = sha256_of(reference)
        wrong = [tiff for tiff, recorded in users if recorded != digest]
        if wrong:
            problems.append(f"data/{rel_path}: is not the gain reference recorded by {wrong}")
        if not is_gain_mrc(reference):
            problems.append(f"data/{rel_path}: gain reference of {names} is not a float32 MRC image")
        plain.pop(rel_path, None)
        gain_files.append((digest, f"data/{rel_path}"))

    for rel_path, path in sorted(plain.items()):
        recovered.append((sha256_of(path), f"data/{rel_path}"))
    unexpected = []
    for digest, what in recovered:
        if needed[digest] > 0:
            needed[digest] -= 1
        else:
            unexpected.append(what)
    for digest, _ in gain_files:  # a generated gain may also be the copy of an identical source file
        if needed[digest] > 0:
            needed[digest] -= 1
    missing = sorted(
        name for digest, count in needed.items() if count > 0 for name in source_names[digest][-count:]
    )
    if missing:
        problems.append(f"source files whose bytes are not recovered from the bag: {missing}")
    if unexpected:
        problems.append(f"payload items that are no source file (nor a gain reference of ours): {unexpected}")
    assert not problems, "\n".join(problems)


def assert_source_paths_hold_their_own_file(source: Path, dest: Path) -> None:
    """A payload path that is also the path of a source file holds exactly that file's bytes."""
    wrong = []
    for rel_path, path in sorted(payload_files(dest).items()):
        original = source / rel_path
        if original.is_file() and not original.is_symlink() and sha256_of(original) != sha256_of(path):
            wrong.append(rel_path)
    assert not wrong, (
        f"payload paths of source files that hold something else (another file's output or a file we "
        f"generated): {wrong}"
    )


def check_bag(source: Path, dest: Path, scratch: Path) -> None:
    """After a complete run: a valid bag from which every source file is recovered."""
    assert_valid_bag(dest)
    assert_recoverable(source, dest, scratch)
    assert_source_paths_hold_their_own_file(source, dest)


def check_partial_bag(source: Path, dest: Path, scratch: Path, *, failed: Iterable[str]) -> None:
    """After a run with failures: the bag need not be sealed, but holds everything else, consistently."""
    assert_consistent_payload(dest)
    assert_recoverable(source, dest, scratch, exclude=failed)
    assert_source_paths_hold_their_own_file(source, dest)


def payload_snapshot(dest: Path) -> dict[str, str]:
    return {rel_path: sha256_of(path) for rel_path, path in payload_files(dest).items()}


def failure_names(summary: Any) -> list[str]:
    return [problem.rel_path for problem in summary.failures]


def failure_text(summary: Any) -> str:
    return "; ".join(
        f"{problem.rel_path}: {getattr(problem, 'message', getattr(problem, 'reason', ''))}"
        for problem in summary.failures
    )


def assert_complete(summary: Any) -> None:
    assert summary.n_failed == 0 and not summary.failures, failure_text(summary)
    assert summary.bag_written
    assert summary.complete is True
    assert summary.exit_code == 0


def keep_copy(tree: Path, copy: Path) -> Path:
    """``tree`` as it is now (a bag without its journal), to check after later runs changed it."""

    def journal(directory: str, names: list[str]) -> list[str]:
        return [".empcompress"] if Path(directory) == tree and (tree / "bagit.txt").exists() else []

    shutil.copytree(tree, copy, ignore=journal, symlinks=True)
    return copy


# ================================================================ helpers: drives


def counts(rng: np.random.Generator, n_frames: int, shape: tuple[int, int], dtype: Any = np.float32) -> Any:
    return rng.poisson(1.0, size=(n_frames, *shape)).astype(dtype)


def random_gain(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.uniform(0.8, 1.25, shape).astype(np.float32)


def collisions_drive(root: Path) -> Path:
    rng = np.random.default_rng(101)
    shape = (32, 32)
    write_mrc(root / "x.mrc", counts(rng, 4, shape))
    write_mrc(root / "x.mrc.mrc", counts(rng, 4, shape, np.uint16))
    write_mrc(root / "x.mrcs", counts(rng, 3, shape, np.int8))
    write_mrc(root / "X.MRC", counts(rng, 5, shape))
    tifffile.imwrite(root / "x.tif", rng.integers(0, 4000, shape, dtype=np.uint16))
    (root / "x.mrc.tif").write_bytes(b"not a TIFF at all, just bytes named .tif\n")
    write_mrc(root / "Movie.mrc", counts(rng, 4, shape))
    write_mrc(root / "movie.mrc", counts(rng, 4, shape))
    (root / "a.TXT").write_text("upper-case extension\n", encoding="utf-8")
    (root / "a.txt").write_text("lower-case extension\n", encoding="utf-8")
    # a multi-page TIFF movie of the depositor next to an MRC movie of the same stem
    write_mrc(root / "stacks" / "y.mrc", counts(rng, 4, shape, np.uint16))
    tifffile.imwrite(
        root / "stacks" / "y.tif", rng.integers(0, 3, (3, *shape), dtype=np.uint8), photometric="minisblack"
    )
    (root / "stacks" / "y.mrc.tif").write_bytes(rng.integers(0, 256, 777, dtype=np.uint8).tobytes())
    # a count movie whose name contains "gain"
    write_mrc(root / "again_001.mrc", counts(rng, 4, shape))
    # identical content twice (a multiset needs two recovered items)
    twin = counts(rng, 4, shape)
    write_mrc(root / "twins" / "same_a.mrc", twin)
    write_mrc(root / "twins" / "same_b.mrc", twin)
    (root / "twins" / "same_a.txt").write_text("same\n", encoding="utf-8")
    (root / "twins" / "same_b.txt").write_text("same\n", encoding="utf-8")
    return root


def gain_set(folder: Path, rng: np.random.Generator, gain: np.ndarray, *, n_movies: int = 4) -> list[Path]:
    return [
        write_mrc(folder / f"gn_{index}.mrc", gain_normalised_movie(rng, gain, 6))
        for index in range(n_movies)
    ]


def depositor_names_drive(root: Path) -> Path:
    rng = np.random.default_rng(202)
    shape = (64, 64)
    gain_set(root / "gs_bytes", rng, random_gain(rng, shape))
    (root / "gs_bytes" / "gain-reference.mrc").write_bytes(
        rng.integers(0, 256, 4321, dtype=np.uint8).tobytes()
    )
    (root / "gs_bytes" / "empcompress-gain-reference.mrc").write_bytes(b"the name of our fallback\n")
    (root / "gs_bytes" / "gn_0.tif").write_bytes(b"bytes where the TIFF of gn_0.mrc would go\n")
    gain_set(root / "gs_mrc", rng, random_gain(rng, shape))
    write_mrc(root / "gs_mrc" / "gain-reference.mrc", random_gain(rng, shape), stack=False)
    gain_set(root / "gs_new", rng, random_gain(rng, shape))
    session = root / "Session"
    write_mrc(session / "movie.mrc", counts(rng, 4, (32, 32)))
    (session / ".empcompress-tmp-123-abc").write_bytes(b"a depositor's file with our temporary name\n")
    (session / ".movie.mrc.empcompress-tmp-1-a").write_bytes(b"another one\n")
    (session / "bagit.txt").write_text("BagIt-Version: 0.97\nTag-File-Character-Encoding: UTF-8\n")
    (session / "manifest-sha256.txt").write_text(f"{'0' * 64}  data/nothing.txt\n", encoding="utf-8")
    (session / "tagmanifest-md5.txt").write_text(f"{'0' * 32}  bagit.txt\n", encoding="utf-8")
    (session / "bag-info.txt").write_text("Payload-Oxum: 1.1\n", encoding="utf-8")
    (session / "report.json").write_text('{"files": []}\n', encoding="utf-8")
    (session / ".empcompress").mkdir()
    (session / ".empcompress" / "journal.sqlite").write_bytes(b"SQLite format 3\x00 (not really)")
    (session / "data").mkdir()
    (session / "data" / "x.txt").write_text("a folder named data\n", encoding="utf-8")
    return root


def appear_depositor_gain(root: Path) -> None:
    """A gain-reference.mrc of the depositor appears in a folder where we generated ours."""
    write_mrc(
        root / "gs_new" / "gain-reference.mrc",
        random_gain(np.random.default_rng(203), (64, 64)),
        stack=False,
    )


def flipped_set_drive(root: Path) -> Path:
    """Eight movies normalised with one gain and one (sorted last) with that gain upside down."""
    rng = np.random.default_rng(303)
    gain = random_gain(rng, (64, 64))
    gain_set(root / "set", rng, gain, n_movies=8)
    flipped = np.ascontiguousarray(gain[::-1])
    write_mrc(root / "set" / "gn_zz_flipped.mrc", gain_normalised_movie(rng, flipped, 6))
    (root / "set" / "notes.txt").write_text("one movie was normalised with the gain upside down\n")
    return root


# ================================================================ two runs per drive (module fixtures)


@dataclass
class TwoRuns:
    source: Path
    source_at_first: Path  # the source as the first run saw it (files may appear before the second)
    dest: Path
    after_first: Path  # a copy of the bag after the first run
    first: Any
    second: Any
    snapshot_first: dict[str, str]
    snapshot_second: dict[str, str]

    def bag(self, run: str) -> Path:
        return self.after_first if run == "first" else self.dest

    def source_of(self, run: str) -> Path:
        return self.source_at_first if run == "first" else self.source


def _two_runs(
    base: Path,
    client: Any,
    build: Callable[[Path], Path],
    between: Callable[[Path], None] | None = None,
) -> TwoRuns:
    source = build(base / "src")
    dest = base / "bag"
    first = compress_drive(source, dest, client=client)
    snapshot_first = payload_snapshot(dest)
    after_first = keep_copy(dest, base / "bag-after-first")
    source_at_first = source
    if between is not None:
        source_at_first = keep_copy(source, base / "src-at-first")
        between(source)
    second = compress_drive(source, dest, client=client)
    return TwoRuns(
        source, source_at_first, dest, after_first, first, second, snapshot_first, payload_snapshot(dest)
    )


@pytest.fixture(scope="module")
def collisions(tmp_path_factory: pytest.TempPathFactory, client: Any) -> TwoRuns:
    return _two_runs(tmp_path_factory.mktemp("collisions"), client, collisions_drive)


@pytest.fixture(scope="module")
def depositor_names(tmp_path_factory: pytest.TempPathFactory, client: Any) -> TwoRuns:
    return _two_runs(
        tmp_path_factory.mktemp("depositor"), client, depositor_names_drive, between=appear_depositor_gain
    )


@pytest.fixture(scope="module")
def flipped(tmp_path_factory: pytest.TempPathFactory, client: Any) -> TwoRuns:
    return _two_runs(tmp_path_factory.mktemp("flipped"), client, flipped_set_drive)


DRIVES = ("collisions", "depositor_names", "flipped")
STATES = [pytest.param(drive, run, id=f"{drive}-{run}") for drive in DRIVES for run in ("first", "second")]


@pytest.mark.parametrize(("drive", "run"), STATES)
def test_the_run_is_complete(drive: str, run: str, request: pytest.FixtureRequest) -> None:
    runs: TwoRuns = request.getfixturevalue(drive)
    assert_complete(runs.first if run == "first" else runs.second)


@pytest.mark.parametrize(("drive", "run"), STATES)
def test_the_bag_is_valid(drive: str, run: str, request: pytest.FixtureRequest) -> None:
    runs: TwoRuns = request.getfixturevalue(drive)
    assert_valid_bag(runs.bag(run))


@pytest.mark.parametrize(("drive", "run"), STATES)
def test_every_source_file_is_recoverable(
    drive: str, run: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    runs: TwoRuns = request.getfixturevalue(drive)
    assert_recoverable(runs.source_of(run), runs.bag(run), tmp_path / "scratch")


@pytest.mark.parametrize(("drive", "run"), STATES)
def test_source_paths_in_the_payload_hold_their_own_file(
    drive: str, run: str, request: pytest.FixtureRequest
) -> None:
    runs: TwoRuns = request.getfixturevalue(drive)
    if drive == "depositor_names" and run == "second":
        # names are stable: our gs_new/gain-reference.mrc from the first run keeps its name when a depositor
        # file of that name appears later (that file gets another name; see the test below)
        assert_source_paths_hold_their_own_file(runs.source_of("first"), runs.bag(run))
        return
    assert_source_paths_hold_their_own_file(runs.source_of(run), runs.bag(run))


@pytest.mark.parametrize("drive", ["collisions", "flipped"])
def test_a_second_run_of_the_same_command_keeps_every_path_and_byte(
    drive: str, request: pytest.FixtureRequest
) -> None:
    runs: TwoRuns = request.getfixturevalue(drive)
    assert runs.snapshot_second == runs.snapshot_first
    for name in ("manifest-sha256.txt", "manifest-md5.txt"):
        assert (runs.dest / name).read_bytes() == (runs.after_first / name).read_bytes(), name


def test_paths_of_unchanged_files_stay_when_a_depositor_gain_appears(depositor_names: TwoRuns) -> None:
    changed = {
        rel_path
        for rel_path, digest in depositor_names.snapshot_first.items()
        if not rel_path.startswith("gs_new/") and depositor_names.snapshot_second.get(rel_path) != digest
    }
    assert not changed, f"outputs outside gs_new/ moved or changed: {sorted(changed)}"


def test_a_count_movie_named_like_a_gain_reference_is_converted(collisions: TwoRuns) -> None:
    source_sha256 = sha256_of(collisions.source / "again_001.mrc")
    converted = [
        rel_path
        for rel_path, record in our_tiffs(collisions.dest).items()
        if record["source"]["name"] == "again_001.mrc" and record["source"]["sha256"] == source_sha256
    ]
    assert len(converted) == 1, f"again_001.mrc was not converted to one of our TIFFs: {converted}"
    copies = [
        rel_path
        for rel_path, path in payload_files(collisions.dest).items()
        if sha256_of(path) == source_sha256
    ]
    assert not copies, f"again_001.mrc was (also) copied: {copies}"


def test_every_movie_is_converted_whatever_its_name(collisions: TwoRuns) -> None:
    movies = {
        rel_path: sha256_of(path)
        for rel_path, path in files_under(collisions.source).items()
        if path.read_bytes()[208:212] == b"MAP "
    }
    recorded = Counter(record["source"]["sha256"] for record in our_tiffs(collisions.dest).values())
    wanted = Counter(movies.values())
    not_converted = sorted(
        rel_path for rel_path, digest in movies.items() if recorded[digest] < wanted[digest]
    )
    assert not not_converted, f"movies not converted to TIFF: {not_converted}"


def test_generated_gain_references_never_replace_a_depositors(depositor_names: TwoRuns) -> None:
    """A depositor's ``F/gain-reference.mrc`` present in the first run keeps its own path (ours takes
    another name); one that appears only before the second run, where the first run had generated ours
    under that name, gets another name (the issue's rule: names stay stable, and the TIFFs' records
    point at ours). Either way both files are in the bag, and nothing overwrote the other."""
    source, dest = depositor_names.source, depositor_names.dest
    for folder in ("gs_bytes", "gs_mrc", "gs_new"):
        depositor = sha256_of(source / folder / "gain-reference.mrc")
        holders = [p for p in (dest / "data" / folder).iterdir() if sha256_of(p) == depositor]
        assert holders, f"{folder}: the depositor's gain-reference.mrc is not in the bag"
        users = [
            (rel_path, record)
            for rel_path, record in our_tiffs(dest).items()
            if rel_path.startswith(f"{folder}/") and (record["storage"].get("gain") or {})
        ]
        assert users, f"no movie of {folder}/ was stored as counts with a gain reference"
        for _, record in users:
            assert record["storage"]["gain"]["reference_sha256"] != depositor or folder == "gs_new"
    for folder in ("gs_bytes", "gs_mrc"):
        own = sha256_of(dest / "data" / folder / "gain-reference.mrc")
        assert own == sha256_of(source / folder / "gain-reference.mrc"), folder
    first_gain = depositor_names.snapshot_first.get("gs_new/gain-reference.mrc")
    assert depositor_names.snapshot_second.get("gs_new/gain-reference.mrc") == first_gain


def test_no_gain_reference_a_tiff_needs_is_deleted(flipped: TwoRuns) -> None:
    for bag in (flipped.after_first, flipped.dest):
        payload = payload_files(bag)
        for rel_path, record in our_tiffs(bag).items():
            gain = record["storage"].get("gain")
            if not gain:
                continue
            reference = (payload[rel_path].parent / gain["reference"]).resolve()
            assert reference.is_file(), f"{bag.name}: data/{rel_path} needs {gain['reference']}, deleted"
            assert sha256_of(reference) == gain["reference_sha256"], rel_path
        result = verify_bag(bag, full=True)
        assert result.ok, result.problems


def test_one_flipped_member_does_not_keep_its_set_off_the_gain(flipped: TwoRuns) -> None:
    """The eight movies of one gain are stored as counts with a gain reference (checks above not vacuous)."""
    with_gain = sorted(
        rel_path for rel_path, record in our_tiffs(flipped.dest).items() if record["storage"].get("gain")
    )
    assert {f"set/gn_{index}.tif" for index in range(8)} <= set(with_gain), with_gain


# ================================================================ hard links, empty files, changed sources


def _replace_keeping_times(path: Path, content: bytes, *, in_place: bool) -> None:
    """New content of the same size with the old atime/mtime: in place (same inode) or by rename."""
    status = path.stat()
    assert len(content) == status.st_size
    if in_place:
        with open(path, "r+b") as handle:
            handle.write(content)
    else:
        fresh = path.with_name(path.name + ".new")
        fresh.write_bytes(content)
        os.replace(fresh, path)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_size == status.st_size and path.stat().st_mtime_ns == status.st_mtime_ns


def _same_size_movie(path: Path, rng: np.random.Generator, scratch: Path) -> bytes:
    """The bytes of ``path`` with other counts in its frames (same dtype and shape: same size)."""
    with mrcfile.open(path, permissive=True) as mrc:
        data = np.asarray(mrc.data)
    scratch.mkdir(parents=True, exist_ok=True)
    other = write_mrc(scratch / f"new-{path.name}", rng.poisson(3.0, size=data.shape).astype(data.dtype))
    content = other.read_bytes()
    other.unlink()
    assert len(content) == path.stat().st_size
    return content


def test_hard_links_empty_files_and_sources_changed_behind_size_and_mtime(
    tmp_path: Path, client: Any
) -> None:
    rng = np.random.default_rng(404)
    source = tmp_path / "src"
    shape = (32, 32)
    write_mrc(source / "movies" / "m1.mrc", counts(rng, 4, shape))
    os.link(source / "movies" / "m1.mrc", source / "movies" / "m1-hardlink.mrc")
    write_mrc(source / "movies" / "m2.mrc", counts(rng, 4, shape, np.uint16))
    write_mrc(source / "movies" / "m3.mrc", counts(rng, 4, shape))
    (source / "notes.txt").write_text("notes\n", encoding="utf-8")
    (source / "other").mkdir()
    os.link(source / "notes.txt", source / "other" / "notes-hardlink.txt")
    (source / "empty.mrc").write_bytes(b"")
    (source / "empty.txt").write_bytes(b"")
    (source / "other" / "empty.tif").write_bytes(b"")
    (source / "changed in place.txt").write_text("version 1\n", encoding="utf-8")
    (source / "replaced.txt").write_text("version 1\n", encoding="utf-8")
    dest = tmp_path / "bag"
    scratch = tmp_path / "scratch"

    first = compress_drive(source, dest, client=client)
    assert_complete(first)
    check_bag(source, dest, scratch)
    snapshot = payload_snapshot(dest)
    again = compress_drive(source, dest, client=client)
    assert_complete(again)
    check_bag(source, dest, scratch)
    assert payload_snapshot(dest) == snapshot

    # same size and mtime, but a new inode (replaced by rename) or only a new ctime (rewritten in
    # place): the default fast check notices and redoes them
    _replace_keeping_times(
        source / "movies" / "m3.mrc",
        _same_size_movie(source / "movies" / "m3.mrc", rng, scratch),
        in_place=False,
    )
    _replace_keeping_times(source / "replaced.txt", b"version 2\n", in_place=False)
    _replace_keeping_times(source / "changed in place.txt", b"version 2\n", in_place=True)
    third = compress_drive(source, dest, client=client)
    assert_complete(third)
    check_bag(source, dest, scratch)

    # rewritten in place, same size and mtime: --recheck compares sha256 with the journal and redoes it
    _replace_keeping_times(
        source / "movies" / "m2.mrc",
        _same_size_movie(source / "movies" / "m2.mrc", rng, scratch),
        in_place=True,
    )
    _replace_keeping_times(source / "changed in place.txt", b"version 3\n", in_place=True)
    fourth = compress_drive(source, dest, client=client, options=CompressOptions(recheck=True))
    assert_complete(fourth)
    check_bag(source, dest, scratch)
    snapshot = payload_snapshot(dest)
    fifth = compress_drive(source, dest, client=client, options=CompressOptions(recheck=True))
    assert_complete(fifth)
    assert payload_snapshot(dest) == snapshot
    check_bag(source, dest, scratch)


# ================================================================ a gain reference removed after the fact


def _rewrite_manifests(dest: Path) -> None:
    """Make the manifests, Payload-Oxum and tag manifests describe the payload as it now is (hashlib only)."""
    payload = payload_files(dest)
    for algorithm, digest_of in (("sha256", sha256_of), ("md5", md5_of)):
        lines = sorted(f"{digest_of(path)}  data/{rel_path}\n" for rel_path, path in payload.items())
        (dest / f"manifest-{algorithm}.txt").write_text("".join(lines), encoding="utf-8")
    oxum = f"{sum(path.stat().st_size for path in payload.values())}.{len(payload)}"
    info = dest / "bag-info.txt"
    lines = [
        f"Payload-Oxum: {oxum}" if line.startswith("Payload-Oxum:") else line
        for line in info.read_text(encoding="utf-8").splitlines()
    ]
    info.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for algorithm, digest_of in (("sha256", sha256_of), ("md5", md5_of)):
        tag_manifest = dest / f"tagmanifest-{algorithm}.txt"
        names = [name for _, name in manifest_lines(tag_manifest)] if tag_manifest.exists() else []
        names = sorted(set(names) | set(TAG_DECLARATIONS))
        tag_manifest.write_text(
            "".join(f"{digest_of(dest / name)}  {name}\n" for name in names if (dest / name).is_file()),
            encoding="utf-8",
        )


def test_verify_bag_notices_a_tiff_whose_gain_reference_is_gone(tmp_path: Path, client: Any) -> None:
    rng = np.random.default_rng(505)
    source = tmp_path / "src"
    gain_set(source / "set", rng, random_gain(rng, (64, 64)))
    dest = tmp_path / "bag"
    assert_complete(compress_drive(source, dest, client=client))
    needing = {
        rel_path: record["storage"]["gain"]
        for rel_path, record in our_tiffs(dest).items()
        if (record["storage"].get("gain") or {}).get("kind") == "gain-normalised"
    }
    assert needing, "the set was not stored as counts with a gain reference"
    tiff, gain = sorted(needing.items())[0]
    reference = (dest / "data" / tiff).parent / gain["reference"]
    reference.unlink()
    _rewrite_manifests(dest)
    bagit.Bag(str(dest)).validate()  # the bag is consistent: only a reader of our records sees the loss

    result = verify_bag(dest)
    assert not result.ok, "verify_bag (default) accepted a bag whose TIFF lost its gain reference"
    assert any(tiff in repr(problem) for problem in result.problems), result.problems


# ================================================================ unreadable files, run as a non-root user

CHILD = r"""
import importlib, json, os, pkgutil, sys
import numpy, tifffile, imagecodecs, mrcfile, sqlite3, distributed
import empcompress
for module in pkgutil.walk_packages(empcompress.__path__, "empcompress."):
    importlib.import_module(module.name)
from distributed import Client, LocalCluster
from empcompress.pipeline import compress_drive

args = json.loads(sys.argv[1])
with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp",
                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
    # the same kinds of files as root first: every lazy import and compiled kernel is then loaded
    compress_drive(args["warm_source"], args["warm_dest"], client=client)
    try:  # and the path of a task that raises
        client.submit(int, "not a number", pure=False).result()
    except ValueError:
        pass
    if args["uid"] is not None:
        os.setgroups([])
        os.setgid(args["gid"])
        os.setuid(args["uid"])
    assert not os.access(args["probe"], os.R_OK), "the unreadable folder is readable: still privileged?"
    summary = compress_drive(args["source"], args["dest"], client=client)
    result = {
        "complete": getattr(summary, "complete", None),
        "exit_code": getattr(summary, "exit_code", None),
        "n_failed": summary.n_failed,
        "bag_written": summary.bag_written,
        "failures": [[f.rel_path, getattr(f, "message", getattr(f, "reason", ""))] for f in summary.failures],
    }
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)
"""

LOCKED = ("locked", "locked_file.txt", "locked_movie.mrc")


def _unreadable_drive(root: Path) -> Path:
    rng = np.random.default_rng(606)
    shape = (32, 32)
    write_mrc(root / "ok" / "m1.mrc", counts(rng, 4, shape))
    (root / "ok" / "notes.txt").write_text("readable\n", encoding="utf-8")
    write_mrc(root / "locked" / "m2.mrc", counts(rng, 4, shape))
    (root / "locked" / "secret.txt").write_text("in a folder nobody can list\n", encoding="utf-8")
    (root / "locked_file.txt").write_text("nobody can read this file\n", encoding="utf-8")
    write_mrc(root / "locked_movie.mrc", counts(rng, 4, shape))
    return root


def _set_locked(source: Path, locked: bool) -> None:
    for name in LOCKED:
        path = source / name
        if path.is_dir():
            path.chmod(0 if locked else 0o755)
        else:
            path.chmod(0 if locked else 0o644)


def _unprivileged_ids() -> tuple[int, int] | None:
    """(uid, gid) to drop to when running as root; None when already unprivileged."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("running as root and there is no user 'nobody' to run as")
    return entry.pw_uid, entry.pw_gid


def test_unreadable_folder_and_files_fail_the_run_and_the_rest_is_bagged(tmp_path: Path, client: Any) -> None:
    ids = _unprivileged_ids()
    base = Path(tempfile.mkdtemp(prefix="empcompress-unreadable-"))  # under /tmp: reachable by 'nobody'
    try:
        base.chmod(0o755)
        source = _unreadable_drive(base / "src")
        warm_source = _unreadable_drive(base / "warm-src")
        out = base / "out"
        out.mkdir()
        temporary = base / "tmp"
        temporary.mkdir()
        temporary.chmod(0o1777)
        if ids is not None:
            os.chown(out, *ids)
        _set_locked(source, True)
        arguments = {
            "source": str(source),
            "dest": str(out / "bag"),
            "warm_source": str(warm_source),
            "warm_dest": str(base / "warm-bag"),
            "probe": str(source / "locked"),
            "uid": ids[0] if ids else None,
            "gid": ids[1] if ids else None,
        }
        process = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(arguments)],
            capture_output=True,
            text=True,
            timeout=240,
            start_new_session=True,
            env={**os.environ, "TMPDIR": str(temporary), "DASK_TEMPORARY_DIRECTORY": str(temporary)},
            check=False,
        )
        lines = [line for line in process.stdout.splitlines() if line.startswith("RESULT ")]
        assert process.returncode == 0 and lines, f"the unprivileged run failed:\n{process.stderr[-4000:]}"
        result = json.loads(lines[-1][len("RESULT ") :])
        named = [rel_path for rel_path, _ in result["failures"]]
        assert result["bag_written"] is True
        assert result["complete"] is False
        assert result["exit_code"] == 1
        assert result["n_failed"] >= 1, result["failures"]
        assert any(name == "locked" or name.startswith("locked/") for name in named), result["failures"]
        assert "locked_file.txt" in named and "locked_movie.mrc" in named, result["failures"]
        dest = out / "bag"
        check_partial_bag(source, dest, tmp_path / "scratch", failed=LOCKED)

        # readable again: the next run (here as root) completes the bag
        _set_locked(source, False)
        summary = compress_drive(source, dest, client=client)
        assert_complete(summary)
        check_bag(source, dest, tmp_path / "scratch")
    finally:
        with contextlib.suppress(OSError):
            _set_locked(base / "src", False)
        shutil.rmtree(base, ignore_errors=True)


# ================================================================ an I/O error in the middle of a conversion


def _fault_drive(root: Path) -> Path:
    rng = np.random.default_rng(707)
    shape = (32, 32)
    write_mrc(root / "movies" / "target.mrc", counts(rng, 6, shape, np.uint16))
    write_mrc(root / "movies" / "fine.mrc", counts(rng, 6, shape))
    (root / "notes.txt").write_text("notes\n", encoding="utf-8")
    return root


def _inject_write_fault(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    import empcompress.convert.write_pass

    original = empcompress.convert.write_pass.write_tiff_attempt

    def failing(path: Any, frames: Iterable[Any], **options: Any) -> Any:
        if json.loads(options["description"])["source"]["name"] != target:
            return original(path, frames, **options)

        def frames_then_error() -> Iterator[Any]:
            for index, frame in enumerate(frames):
                if index == 2:
                    raise OSError(errno.EIO, os.strerror(errno.EIO), target)
                yield frame

        return original(path, frames_then_error(), **options)

    monkeypatch.setattr(empcompress.convert.write_pass, "write_tiff_attempt", failing)


def _inject_read_fault(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    from empcompress.mrc import MrcMovie

    original = MrcMovie.read_raw_frame

    def failing(self: Any, index: int, **options: Any) -> Any:
        if Path(self.path).name == target and index == 2:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(self.path))
        return original(self, index, **options)

    monkeypatch.setattr(MrcMovie, "read_raw_frame", failing)


@pytest.mark.parametrize("where", ["write", "read"])
def test_an_io_error_during_a_conversion_fails_the_file_and_the_next_run_converts_it(
    where: str, tmp_path: Path, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _fault_drive(tmp_path / "src")
    dest = tmp_path / "bag"
    target = source / "movies" / "target.mrc"
    with monkeypatch.context() as patch:  # the fault lasts the whole first run (a retry fails again)
        (_inject_write_fault if where == "write" else _inject_read_fault)(patch, "target.mrc")
        first = compress_drive(source, dest, client=client)
    assert failure_names(first) == ["movies/target.mrc"], failure_text(first)
    assert first.n_failed == 1
    assert first.complete is False
    assert first.exit_code == 1
    assert first.bag_written
    assert not getattr(first, "kept_as_is", ()), "an I/O error is a failure, not a movie kept as it is"
    digest = sha256_of(target)
    copies = [rel for rel, path in payload_files(dest).items() if sha256_of(path) == digest]
    assert not copies, f"the failed movie was copied into the bag: {copies}"
    assert all(record["source"]["sha256"] != digest for record in our_tiffs(dest).values())
    check_partial_bag(source, dest, tmp_path / "scratch", failed=["movies/target.mrc"])

    second = compress_drive(source, dest, client=client)
    assert_complete(second)
    check_bag(source, dest, tmp_path / "scratch")
    converted = [rel for rel, record in our_tiffs(dest).items() if record["source"]["sha256"] == digest]
    assert len(converted) == 1, "the movie is converted by the next run"
