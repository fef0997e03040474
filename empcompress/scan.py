"""Scan a drive: walk SRC, classify every file, predict what compression will do.

The walk never follows a symbolic link (so it never leaves SRC and never loops);
links, special files and unreadable folders are listed as files it will not
touch, with the reason; an unreadable file or folder is marked so (a compress
run counts it as a failure). Every regular file is classified by its content,
names only breaking ties:

========== ==================================================================
movie      an MRC file (.mrc, .mrcs, any case) whose header holds two or more
           frames, whatever its name (``again_001.mrc`` is a movie): converted
           to a verified TIFF stack. An MRC-named file whose header cannot be
           read is a movie too: it is kept as it is (copied byte for byte) and
           reported, so nothing is lost. TIFF and EER movies are already
           compressed and are copied.
micrograph an MRC file with one frame, or a single-page TIFF: copied.
gain       a single-image MRC, or a non-MRC file, named like a gain reference
           (``*gain*``, ``CountRef*``, ``SuperRef*``, ``*.gain``): copied.
defects    a defect file by name (``*defect*``): copied.
other      everything else (STAR, mdoc, logs, volumes, empty files): copied.
========== ==================================================================

With prediction on, a few frames of a few movies of each group (same folder,
frame size and mode) are read to predict the storage decision, the codec and
the compression ratio, and from the time the trial encoding took, the time
the compress job will need. Nothing is written anywhere.
"""

from __future__ import annotations

import importlib
import inspect
import os
import stat
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt

from . import kernels
from .detect import FrameStats, decide_storage, frame_stats
from .encode import choose_codec
from .errors import EmpCompressError, InputError
from .mrc import MrcHeader, MrcMovie, read_header

__all__ = [
    "CATEGORY_MOVIE",
    "CATEGORY_MICROGRAPH",
    "CATEGORY_GAIN_REFERENCE",
    "CATEGORY_DEFECT_FILE",
    "CATEGORY_OTHER",
    "CATEGORIES",
    "ACTION_CONVERT",
    "ACTION_COPY",
    "KIND_COUNTS",
    "KIND_GAIN_NORMALISED",
    "KIND_FLOAT",
    "KIND_UNREADABLE",
    "FileEntry",
    "SkippedEntry",
    "CategoryTotals",
    "FolderTotals",
    "GroupPrediction",
    "ScanPlan",
    "walk_source",
    "classify_file",
    "predict_groups",
    "scan_drive",
    "gain_support",
    "GainApi",
    "iter_classified",
    "MRC_SUFFIXES",
]

CATEGORY_MOVIE = "movie"
CATEGORY_MICROGRAPH = "micrograph"
CATEGORY_GAIN_REFERENCE = "gain-reference"
CATEGORY_DEFECT_FILE = "defect-file"
CATEGORY_OTHER = "other"
CATEGORIES: tuple[str, ...] = (
    CATEGORY_MOVIE,
    CATEGORY_MICROGRAPH,
    CATEGORY_GAIN_REFERENCE,
    CATEGORY_DEFECT_FILE,
    CATEGORY_OTHER,
)

ACTION_CONVERT = "convert"
ACTION_COPY = "copy"

KIND_COUNTS = "counts"
KIND_GAIN_NORMALISED = "gain-normalised"
KIND_FLOAT = "float"
KIND_UNREADABLE = "unreadable"

MRC_SUFFIXES = (".mrc", ".mrcs")
TIFF_SUFFIXES = (".tif", ".tiff")

#: Rough speeds for the time estimate where nothing was measured (bytes per second).
COPY_BYTES_PER_SECOND = 400e6
#: Whole conversion (read, survey, encode, verify, hashes, classification) against the trial
#: encoding of one frame with one codec; calibrated with benchmarks/bench_pipeline.py (4096x4096
#: float32 counts, 1 worker: 1.7 predicted 9 s for a measured 22 s).
CONVERT_TIME_FACTOR = 4.0


@dataclass(frozen=True)
class FileEntry:
    """One regular file of SRC and what will happen to it. Paths are POSIX, relative to SRC."""

    rel_path: str
    size_bytes: int
    mtime_ns: int
    category: str
    action: str
    output_rel_path: str  # relative to the bag's payload directory (data/), from the layout
    ctime_ns: int = 0
    inode: int = 0
    note: str = ""
    mode: int = -1  # MRC mode, -1 when not an MRC file
    n_frames: int = 0
    frame_width: int = 0
    frame_height: int = 0
    header_error: str = ""  # why an MRC-named file cannot be read as MRC

    @property
    def folder(self) -> str:
        parent = str(PurePosixPath(self.rel_path).parent)
        return "" if parent == "." else parent


@dataclass(frozen=True)
class SkippedEntry:
    """Something in SRC that will not be archived, and why.

    ``unreadable`` entries (a file or folder the run cannot read) are failures of a
    compress run; the others (links, devices, pipes) are not archived by design.
    """

    rel_path: str
    reason: str
    unreadable: bool = False


@dataclass(frozen=True)
class CategoryTotals:
    category: str
    n_files: int
    size_bytes: int
    n_convert: int
    n_copy: int


@dataclass(frozen=True)
class FolderTotals:
    folder: str
    n_files: int
    size_bytes: int
    n_movies: int
    movie_size_bytes: int


@dataclass(frozen=True)
class GroupPrediction:
    """Predicted storage of a group of movies (one folder, one frame size, one mode)."""

    folder: str
    frame_width: int
    frame_height: int
    mode: int
    n_movies: int
    size_bytes: int
    sampled: tuple[str, ...]
    n_sampled_frames: int
    kind: str  # counts | gain-normalised | float | unreadable
    stored_dtype: str
    codec: str
    predicted_ratio: float
    predicted_output_size_bytes: int
    predicted_seconds_one_worker: float
    reason: str


@dataclass(frozen=True)
class ScanPlan:
    """What a scan found and predicts."""

    source: str
    files: tuple[FileEntry, ...]
    skipped: tuple[SkippedEntry, ...]
    empty_folders: tuple[str, ...]  # a bag holds files only: these are listed in the report
    categories: tuple[CategoryTotals, ...]
    folders: tuple[FolderTotals, ...]
    predictions: tuple[GroupPrediction, ...]
    total_size_bytes: int
    expected_output_size_bytes: int
    expected_seconds: float
    n_workers_assumed: int
    scan_seconds: float
    gain_sets_supported: bool
    #: per frame size, the gain reference predicted for the gain-normalised movies (see gain.prediction)
    gain_groups: tuple[Any, ...] = ()

    @property
    def movies(self) -> tuple[FileEntry, ...]:
        return tuple(entry for entry in self.files if entry.action == ACTION_CONVERT)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for ``empcompress scan --json``)."""
        return asdict(self)


# ---------------------------------------------------------------- gain support


@dataclass(frozen=True)
class GainApi:
    """The functions of the gain modules (issue 3) that scan and the pipeline use."""

    classify_movie: Callable[..., Any]
    gain_partial_from_movie: Callable[..., Any]
    merge_gain_partials: Callable[..., Any]
    finalize_gain: Callable[..., Any]
    write_gain_reference: Callable[..., Any]


def gain_support() -> GainApi | None:
    """The gain functions if empcompress.gain (and gainref) provide all of them and
    ``convert_movie`` takes a ``gain``; None otherwise (gain sets are then off)."""
    modules = []
    for name in ("empcompress.gain", "empcompress.gainref"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    found: dict[str, Callable[..., Any]] = {}
    for field_name in GainApi.__dataclass_fields__:
        for module in modules:
            function = getattr(module, field_name, None)
            if callable(function):
                found[field_name] = function
                break
    if len(found) != len(GainApi.__dataclass_fields__):
        return None
    from .convert import convert_movie

    if "gain" not in inspect.signature(convert_movie).parameters:
        return None
    return GainApi(**found)


# ---------------------------------------------------------------- walking


def walk_source(
    source: str | os.PathLike[str],
    *,
    empty_folders: list[str] | None = None,
) -> tuple[list[tuple[str, os.stat_result]], list[SkippedEntry]]:
    """Every regular file under ``source`` (POSIX relative path, lstat), never following links.

    Names are ``str`` as :func:`os.fsdecode` gives them (bytes that are not UTF-8
    become surrogates and are kept exactly). Folders that hold nothing are appended
    to ``empty_folders`` when given.
    """
    root = Path(source)
    files: list[tuple[str, os.stat_result]] = []
    skipped: list[SkippedEntry] = []
    real_root = os.path.realpath(root)

    def visit(directory: Path, rel: str) -> None:
        try:
            with os.scandir(directory) as iterator:
                entries = sorted(iterator, key=lambda entry: os.fsencode(entry.name))
        except OSError as error:
            reason = f"folder cannot be read ({error.strerror}); its files are not in the bag"
            skipped.append(SkippedEntry(rel or ".", reason, unreadable=True))
            return
        if not entries and rel and empty_folders is not None:
            empty_folders.append(rel)
        for entry in entries:
            rel_path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError as error:
                skipped.append(SkippedEntry(rel_path, f"cannot be read ({error.strerror})", unreadable=True))
                continue
            if stat.S_ISLNK(info.st_mode):
                skipped.append(SkippedEntry(rel_path, _link_reason(Path(entry.path), real_root)))
            elif stat.S_ISDIR(info.st_mode):
                visit(Path(entry.path), rel_path)
            elif stat.S_ISREG(info.st_mode):
                if not os.access(entry.path, os.R_OK):
                    reason = "cannot be read (permission denied); it is not in the bag"
                    skipped.append(SkippedEntry(rel_path, reason, unreadable=True))
                    continue
                files.append((rel_path, info))
            else:
                skipped.append(SkippedEntry(rel_path, "not a regular file (device, pipe or socket)"))

    if not root.is_dir():
        raise InputError(f"{root}: not a folder; give the top folder of the drive to scan")
    visit(root, "")
    return files, skipped


def _link_reason(link: Path, real_root: str) -> str:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    resolved = os.path.realpath(link)
    if not os.path.exists(resolved):
        return f"broken symbolic link (to {target}); links are not followed"
    if resolved == real_root or resolved.startswith(real_root + os.sep):
        return (
            f"symbolic link to {target} inside SRC; not followed (its target is archived under its own name)"
        )
    return f"symbolic link to {target} outside SRC; not followed, so its target is not archived"


# ---------------------------------------------------------------- classifying


def _is_gain_name(name: str) -> bool:
    lower = name.lower()
    return "gain" in lower or lower.startswith(("countref", "superref"))


def _is_volume(header: MrcHeader) -> bool:
    """A 3D map rather than a stack of frames (space group set and about as deep as wide)."""
    return 1 <= header.ispg <= 230 and header.nz >= max(2, min(header.nx, header.ny) // 2)


def _tiff_page_count(path: Path) -> int:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return len(tiff.pages)
    except Exception:
        return 0


def classify_file(path: Path, *, rel_path: str, info: os.stat_result) -> FileEntry:
    """Classify one regular file (reads at most its MRC header or TIFF directory)."""
    name = PurePosixPath(rel_path).name
    suffix = PurePosixPath(name).suffix.lower()
    base = FileEntry(
        rel_path=rel_path,
        size_bytes=info.st_size,
        mtime_ns=info.st_mtime_ns,
        ctime_ns=info.st_ctime_ns,
        inode=info.st_ino,
        category=CATEGORY_OTHER,
        action=ACTION_COPY,
        output_rel_path=rel_path,
        note="copied",
    )
    if suffix in MRC_SUFFIXES:
        return _classify_mrc(path, base, gain_name=_is_gain_name(name))
    if _is_gain_name(name):
        return replace(base, category=CATEGORY_GAIN_REFERENCE, note="gain reference: copied")
    if "defect" in name.lower():
        return replace(base, category=CATEGORY_DEFECT_FILE, note="defect file: copied")
    if suffix == ".eer":
        return replace(base, category=CATEGORY_MOVIE, note="EER movie: already compressed, copied")
    if suffix in TIFF_SUFFIXES:
        n_pages = _tiff_page_count(path)
        if n_pages > 1:
            return replace(
                base, category=CATEGORY_MOVIE, n_frames=n_pages, note="TIFF movie: already compressed, copied"
            )
        if n_pages == 1:
            return replace(base, category=CATEGORY_MICROGRAPH, n_frames=1, note="TIFF image: copied")
    return base


def _classify_mrc(path: Path, base: FileEntry, *, gain_name: bool) -> FileEntry:
    """What the header says: a stack of frames is a movie whatever its name; the name only tells a
    single image that is a gain reference from a micrograph."""
    if base.size_bytes == 0:
        return replace(base, note="empty file: copied")
    try:
        header = read_header(path)
    except OSError as error:  # an I/O error now: a movie by name; its task reads it again (and may fail)
        return replace(
            base,
            category=CATEGORY_MOVIE,
            action=ACTION_CONVERT,
            note=f"header could not be read now ({error.strerror}); the conversion reads it again",
        )
    except EmpCompressError as error:
        if gain_name:
            return replace(base, category=CATEGORY_GAIN_REFERENCE, note="gain reference: copied")
        return replace(
            base,
            category=CATEGORY_MOVIE,
            action=ACTION_CONVERT,
            header_error=str(error),
            note=f"cannot be read as MRC, will be kept as it is: {error}",
        )
    shaped = replace(
        base, mode=header.mode, n_frames=header.nz, frame_width=header.nx, frame_height=header.ny
    )
    if header.nz == 1:
        if gain_name:
            return replace(shaped, category=CATEGORY_GAIN_REFERENCE, note="gain reference: copied")
        return replace(shaped, category=CATEGORY_MICROGRAPH, note="single image: copied")
    if _is_volume(header):
        return replace(shaped, note="3D volume: copied")
    return replace(shaped, category=CATEGORY_MOVIE, action=ACTION_CONVERT, note="converted to TIFF")


def _name_outputs(entries: list[FileEntry]) -> list[FileEntry]:
    """Each entry with the payload path the bag's layout gives it (see empcompress.pipeline.layout)."""
    from .pipeline.layout import KIND_CONVERTED, KIND_COPIED, PayloadLayout, PlannedSource

    layout = PayloadLayout()
    layout.assign_sources(
        PlannedSource(entry.rel_path, KIND_CONVERTED if entry.action == ACTION_CONVERT else KIND_COPIED)
        for entry in entries
    )
    return [replace(entry, output_rel_path=layout.output_of(entry.rel_path)) for entry in entries]


# ---------------------------------------------------------------- prediction


def _sample_indices(n_frames: int, n_samples: int) -> list[int]:
    if n_frames <= n_samples:
        return list(range(n_frames))
    return sorted({round(v) for v in np.linspace(0, n_frames - 1, n_samples + 2)[1:-1]})


def _evenly(items: list[FileEntry], n: int) -> list[FileEntry]:
    if len(items) <= n:
        return items
    return [items[round(v)] for v in np.linspace(0, len(items) - 1, n)]


@dataclass(frozen=True)
class _Sample:
    kind: str
    stored_dtype: str
    codec: str
    raw_bytes: int
    encoded_bytes: int
    encode_seconds: float
    n_frames: int
    reason: str


def _sample_movie(path: Path, *, n_sample_frames: int, gain: GainApi | None) -> _Sample:
    with MrcMovie(path) as movie:
        header = movie.header
        indices = _sample_indices(header.nz, n_sample_frames)
        frames = [np.array(movie.read_frame(index)) for index in indices]
    merged: FrameStats | None = None
    for frame in frames:
        stats = frame_stats(frame)
        merged = stats if merged is None else merged.merge(stats)
    assert merged is not None
    decision = decide_storage(source_dtype=header.value_dtype, stats=merged)
    kind, reason = KIND_COUNTS if decision.is_integer else KIND_FLOAT, decision.reason
    trial = frames[len(frames) // 2]
    if decision.is_integer:
        stored: npt.NDArray[np.generic] = np.empty(header.frame_shape, dtype=decision.stored_dtype)
        kernels.flip_cast(trial, stored)
        stored_dtype = decision.stored_dtype
    else:
        if gain is not None:
            try:
                movie_class = gain.classify_movie(path, n_sample_frames=n_sample_frames)
                kind = str(getattr(movie_class, "kind", kind))
                reason = str(getattr(movie_class, "reason", reason))
            except EmpCompressError:
                pass
        if kind == KIND_GAIN_NORMALISED:
            positive = trial[trial > 0]
            unit = float(positive.min()) if positive.size else 1.0
            stored = np.clip(np.rint(np.asarray(trial, dtype=np.float64) / unit), 0, 255).astype(np.uint8)[
                ::-1
            ]
            stored_dtype = "uint8 (counts, predicted)"
        else:
            stored = np.ascontiguousarray(np.asarray(trial).astype(trial.dtype.newbyteorder("="))[::-1])
            stored_dtype = decision.stored_dtype
    started = time.perf_counter()
    codec, sizes = choose_codec(
        [np.ascontiguousarray(stored)], is_integer=stored.dtype.kind in "iu", level=None
    )
    encode_seconds = time.perf_counter() - started
    encoded = sizes[codec.label]
    # choose_codec encodes with every candidate; the job encodes once
    encode_seconds /= max(1, len(sizes))
    return _Sample(
        kind,
        stored_dtype,
        codec.label,
        header.frame_size_bytes,
        encoded,
        encode_seconds,
        len(indices),
        reason,
    )


def predict_groups(
    source: Path,
    movies: list[FileEntry],
    *,
    n_sample_movies: int,
    n_sample_frames: int,
) -> tuple[GroupPrediction, ...]:
    """Predict each group's storage from a few frames of a few of its movies."""
    gain = gain_support()
    groups: dict[tuple[str, int, int, int], list[FileEntry]] = defaultdict(list)
    for entry in movies:
        groups[(entry.folder, entry.frame_width, entry.frame_height, entry.mode)].append(entry)
    predictions = []
    for (folder, width, height, mode), members in sorted(groups.items()):
        size_bytes = sum(entry.size_bytes for entry in members)
        readable = [entry for entry in members if not entry.header_error]
        samples: list[_Sample] = []
        sampled: list[str] = []
        for entry in _evenly(readable, n_sample_movies):
            try:
                samples.append(
                    _sample_movie(source / entry.rel_path, n_sample_frames=n_sample_frames, gain=gain)
                )
                sampled.append(entry.rel_path)
            except (EmpCompressError, OSError):
                continue
        if not samples:
            predictions.append(
                GroupPrediction(
                    folder,
                    width,
                    height,
                    mode,
                    len(members),
                    size_bytes,
                    (),
                    0,
                    KIND_UNREADABLE if not readable else "unknown",
                    "",
                    "",
                    1.0,
                    size_bytes,
                    size_bytes / COPY_BYTES_PER_SECOND,
                    "cannot be read as MRC: kept as is" if not readable else "not sampled",
                )
            )
            continue
        raw = sum(sample.raw_bytes for sample in samples)
        encoded = max(1, sum(sample.encoded_bytes for sample in samples))
        ratio = raw / encoded
        seconds_per_byte = CONVERT_TIME_FACTOR * sum(sample.encode_seconds for sample in samples) / raw
        first = samples[0]
        kinds = sorted({sample.kind for sample in samples})
        predictions.append(
            GroupPrediction(
                folder=folder,
                frame_width=width,
                frame_height=height,
                mode=mode,
                n_movies=len(members),
                size_bytes=size_bytes,
                sampled=tuple(sampled),
                n_sampled_frames=sum(sample.n_frames for sample in samples),
                kind="/".join(kinds),
                stored_dtype=first.stored_dtype,
                codec=first.codec,
                predicted_ratio=ratio,
                predicted_output_size_bytes=int(size_bytes / ratio),
                predicted_seconds_one_worker=size_bytes * seconds_per_byte,
                reason=first.reason,
            )
        )
    return tuple(predictions)


# ---------------------------------------------------------------- the whole scan


def _totals(files: list[FileEntry]) -> tuple[tuple[CategoryTotals, ...], tuple[FolderTotals, ...]]:
    categories = []
    for category in CATEGORIES:
        members = [entry for entry in files if entry.category == category]
        categories.append(
            CategoryTotals(
                category=category,
                n_files=len(members),
                size_bytes=sum(entry.size_bytes for entry in members),
                n_convert=sum(entry.action == ACTION_CONVERT for entry in members),
                n_copy=sum(entry.action == ACTION_COPY for entry in members),
            )
        )
    by_folder: dict[str, list[FileEntry]] = defaultdict(list)
    for entry in files:
        by_folder[entry.folder].append(entry)
    folders = tuple(
        FolderTotals(
            folder=folder or ".",
            n_files=len(members),
            size_bytes=sum(entry.size_bytes for entry in members),
            n_movies=sum(entry.action == ACTION_CONVERT for entry in members),
            movie_size_bytes=sum(entry.size_bytes for entry in members if entry.action == ACTION_CONVERT),
        )
        for folder, members in sorted(by_folder.items())
    )
    return tuple(categories), folders


def iter_classified(source: Path, listing: list[tuple[str, os.stat_result]]) -> Iterator[FileEntry]:
    for rel_path, info in listing:
        yield classify_file(source / rel_path, rel_path=rel_path, info=info)


def scan_drive(
    source: str | os.PathLike[str],
    *,
    predict: bool = True,
    n_sample_movies: int = 2,
    n_sample_frames: int = 2,
    n_workers: int = 1,
) -> ScanPlan:
    """Walk and classify ``source``; with ``predict``, sample movies to predict the outcome.

    ``n_workers`` is used for the time estimate only. Only reads; never writes.
    """
    started = time.perf_counter()
    root = Path(source).resolve()
    empty_folders: list[str] = []
    listing, skipped = walk_source(root, empty_folders=empty_folders)
    files = _name_outputs(list(iter_classified(root, listing)))
    movies = [entry for entry in files if entry.action == ACTION_CONVERT]
    predictions: tuple[GroupPrediction, ...] = ()
    if predict and n_sample_movies > 0:
        predictions = predict_groups(
            root, movies, n_sample_movies=n_sample_movies, n_sample_frames=n_sample_frames
        )
    gain_groups = _predict_gain_groups(root, files, predictions)
    copy_bytes = sum(entry.size_bytes for entry in files if entry.action == ACTION_COPY)
    if predictions:
        movie_out = sum(prediction.predicted_output_size_bytes for prediction in predictions)
        movie_seconds = sum(prediction.predicted_seconds_one_worker for prediction in predictions)
    else:
        movie_bytes = sum(entry.size_bytes for entry in movies)
        movie_out, movie_seconds = movie_bytes, movie_bytes / COPY_BYTES_PER_SECOND
    categories, folders = _totals(files)
    workers = max(1, n_workers)
    return ScanPlan(
        source=str(root),
        files=tuple(files),
        skipped=tuple(skipped),
        empty_folders=tuple(empty_folders),
        categories=categories,
        folders=folders,
        predictions=predictions,
        total_size_bytes=sum(entry.size_bytes for entry in files),
        expected_output_size_bytes=copy_bytes + movie_out,
        expected_seconds=movie_seconds / workers + copy_bytes / COPY_BYTES_PER_SECOND,
        n_workers_assumed=workers,
        scan_seconds=time.perf_counter() - started,
        gain_sets_supported=gain_support() is not None,
        gain_groups=gain_groups,
    )


def _predict_gain_groups(
    root: Path, files: list[FileEntry], predictions: tuple[GroupPrediction, ...]
) -> tuple[Any, ...]:
    """The sampled gain-normalised movies, by frame size, fitted to the drive's gain references."""
    if gain_support() is None:
        return ()
    from .gain.prediction import predict_gain_groups

    sampled: dict[tuple[int, int], list[str]] = defaultdict(list)
    n_movies: dict[tuple[int, int], int] = defaultdict(int)
    for prediction in predictions:
        if KIND_GAIN_NORMALISED in prediction.kind.split("/"):
            shape = (prediction.frame_height, prediction.frame_width)
            sampled[shape] += list(prediction.sampled)
            n_movies[shape] += prediction.n_movies
    references = [
        entry.rel_path
        for entry in files
        if entry.category == CATEGORY_GAIN_REFERENCE and entry.mode == 2 and entry.n_frames == 1
    ]
    return predict_gain_groups(
        root, sampled_movies=dict(sampled), n_movies=dict(n_movies), references=references
    )
