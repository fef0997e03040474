"""Describe a file: an MRC movie's header, or one of our TIFF stacks' record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .mrc import read_header
from .reconstruct import CompressedMovie, open_input_file

__all__ = ["describe_file"]

_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def describe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A flat, ordered description of an MRC file or an empcompress TIFF."""
    path = Path(path)
    with open_input_file(path) as handle:  # a regular file only: never blocks on a FIFO
        magic = handle.read(4)
    if magic in _TIFF_MAGIC:
        return _describe_tiff(path)
    return _describe_mrc(path)


def _describe_mrc(path: Path) -> dict[str, Any]:
    header = read_header(path)
    return {
        "file": str(path),
        "kind": "MRC",
        "size_bytes": header.file_size_bytes,
        "mode": header.mode,
        "value_type": header.value_dtype.name,
        "byte_order": "little" if header.byte_order == "<" else "big",
        "frame_width": header.nx,
        "frame_height": header.ny,
        "n_frames": header.nz,
        "pixel_size_angstrom": round(header.pixel_size_angstrom, 6),
        "space_group": header.ispg,
        "extended_header_bytes": header.extended_header_size_bytes,
        "extended_header_type": header.exttyp or "-",
        "labels": list(header.labels),
    }


def _describe_tiff(path: Path) -> dict[str, Any]:
    """Our TIFF's record (validated: a damaged one raises RecordError naming the field)."""
    with CompressedMovie(path) as movie:
        record = movie.record
        storage, source = record.storage, record.source
        return {
            "file": str(path),
            "kind": "empcompress TIFF stack",
            "size_bytes": path.stat().st_size,
            "written_by": f"empcompress {record.tool_version}",
            "n_frames": movie.n_pages,
            "frame_width": source.nx,
            "frame_height": source.ny,
            "stored_type": storage.stored_dtype,
            "storage_decision": storage.reason,
            "codec": storage.codec + (" (huffman-only)" if storage.huffman_only else ""),
            "row_convention": record.row_convention,
            "source_name": source.name,
            "source_size_bytes": source.size_bytes,
            "source_sha256": source.sha256,
            "source_mode": source.mode,
            "source_extended_header_bytes": len(source.extended_header_bytes),
            "ratio": round(source.size_bytes / max(1, path.stat().st_size), 3),
        }
