"""Classify one file by its content (names only break ties) and name its output in the bag."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path, PurePosixPath

from ..errors import EmpCompressError
from ..mrc import MrcHeader, read_header
from .entries import (
    ACTION_CONVERT,
    ACTION_COPY,
    CATEGORY_DEFECT_FILE,
    CATEGORY_GAIN_REFERENCE,
    CATEGORY_MICROGRAPH,
    CATEGORY_MOVIE,
    CATEGORY_OTHER,
    MRC_SUFFIXES,
    TIFF_SUFFIXES,
    FileEntry,
)


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
    from ..pipeline.layout import KIND_CONVERTED, KIND_COPIED, PayloadLayout, PlannedSource

    layout = PayloadLayout()
    layout.assign_sources(
        PlannedSource(entry.rel_path, KIND_CONVERTED if entry.action == ACTION_CONVERT else KIND_COPIED)
        for entry in entries
    )
    return [replace(entry, output_rel_path=layout.output_of(entry.rel_path)) for entry in entries]


def iter_classified(source: Path, listing: list[tuple[str, os.stat_result]]) -> Iterator[FileEntry]:
    for rel_path, info in listing:
        yield classify_file(source / rel_path, rel_path=rel_path, info=info)
