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

import os
import time
from collections import defaultdict
from pathlib import Path

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
from .classify import _name_outputs, classify_file, iter_classified
from .entries import (
    ACTION_CONVERT,
    ACTION_COPY,
    CATEGORIES,
    CATEGORY_DEFECT_FILE,
    CATEGORY_GAIN_REFERENCE,
    CATEGORY_MICROGRAPH,
    CATEGORY_MOVIE,
    CATEGORY_OTHER,
    COPY_BYTES_PER_SECOND,
    KIND_COUNTS,
    KIND_FLOAT,
    KIND_GAIN_NORMALISED,
    KIND_UNREADABLE,
    MRC_SUFFIXES,
    CategoryTotals,
    FileEntry,
    FolderTotals,
    GroupPrediction,
    ScanPlan,
    SkippedEntry,
)
from .gain_api import GainApi, gain_support
from .predict import _predict_gain_groups, predict_groups
from .walk import walk_source

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
