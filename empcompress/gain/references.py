"""Find and load the gain reference a TIFF's record names, never outside the place it may be."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import GainError
from ..journal import STATE_DIRNAME

if TYPE_CHECKING:
    from .plan import GainRecord


def reference_root_for(tiff_path: str | os.PathLike[str]) -> Path:
    """Where a TIFF's gain reference may be by default: its own folder, or its bag's whole payload.

    A TIFF inside a BagIt bag's ``data/`` (or a bag that ``compress`` is writing)
    may name a reference anywhere in that payload, so that one reference serves a
    group of movies in many folders. Anywhere else, only the TIFF's own folder.
    """
    import stat

    from ..bag.manifest import BAGIT_TXT  # (here: the bag package is much more than this name)

    # what marks a folder ``data/`` as a bag's payload: BagIt's declaration, or our run's state folder
    markers = (BAGIT_TXT, STATE_DIRNAME)
    folder = Path(os.path.abspath(tiff_path)).parent
    root = folder
    for ancestor in (folder, *folder.parents):  # the outermost: a bag may hold a depositor's bag
        if ancestor.name != "data":
            continue
        for marker in markers:
            try:
                mode = os.lstat(ancestor.parent / marker).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
                root = ancestor
                break
    return root


def resolve_reference(
    record: GainRecord,
    tiff_path: Path,
    gain_path: str | os.PathLike[str] | None,
    *,
    root: str | os.PathLike[str] | None = None,
) -> Path:
    """Where the gain reference of a TIFF is; never a file outside ``root``.

    ``gain_path`` (the user's explicit ``--gain FILE``) is taken as given. Otherwise
    the record's relative reference is looked up from the TIFF's folder, then a
    file of the same name beside the TIFF. A candidate is used only when its path
    and its real path (every symbolic link resolved) both lie inside ``root``
    (default: :func:`reference_root_for`: the TIFF's own folder, or the payload
    ``data/`` of the bag it lies in) and it is a regular file. ``..`` may appear in the reference as long
    as the result stays inside ``root``. Returns the real path to open.
    """
    import stat

    if gain_path is not None:
        explicit = Path(os.path.realpath(gain_path))
        try:
            is_regular = stat.S_ISREG(os.stat(explicit).st_mode)
        except OSError:
            is_regular = False
        if not is_regular:
            raise GainError(f"{gain_path}: no such gain reference file (or not a regular file)")
        return explicit
    tiff_dir = Path(os.path.abspath(tiff_path)).parent
    top = Path(os.path.abspath(root)) if root is not None else reference_root_for(tiff_path)
    top_real = Path(os.path.realpath(top))
    outside: list[str] = []
    for relative in dict.fromkeys((record.reference, Path(record.reference).name)):
        lexical = Path(os.path.normpath(tiff_dir / relative))
        real = Path(os.path.realpath(lexical))
        if not (lexical.is_relative_to(top) and real.is_relative_to(top_real)):
            outside.append(relative)
            continue
        try:
            if stat.S_ISREG(os.lstat(real).st_mode):
                return real
        except OSError:
            continue
    if record.reference in outside:
        raise GainError(
            f"{tiff_path}: its record names the gain reference {record.reference!r}, which lies outside "
            f"{top}; refusing to read it. If you trust this file, pass the reference with --gain FILE"
        )
    raise GainError(
        f"{tiff_path}: needs its gain reference {record.reference} "
        f"(sha256 {record.reference_sha256[:16]}...), which is not next to it; pass it with --gain FILE"
    )


def load_reference_for(
    record: GainRecord,
    tiff_path: Path,
    gain_path: str | os.PathLike[str] | None,
    *,
    root: str | os.PathLike[str] | None = None,
    frame_shape: tuple[int, int] | None = None,
) -> Any:
    """The float32 gain (MRC row order) of a gain-normalised TIFF, its sha256 checked.

    Found by :func:`resolve_reference` (``root`` limits where); opened once, as a
    regular file only (never a FIFO or a device); it must be a single-section
    float32 MRC of ``frame_shape`` (checked from its header before it is hashed
    or read).
    """
    from ..files import NotRegularFileError, file_digests, open_regular
    from ..mrc import HEADER_SIZE_BYTES, parse_header

    path = resolve_reference(record, tiff_path, gain_path, root=root)
    try:
        handle = open_regular(path)
    except NotRegularFileError:
        raise GainError(f"{path}: the gain reference of {tiff_path.name} is not a regular file") from None
    except OSError as error:
        raise GainError(
            f"{path}: cannot read the gain reference of {tiff_path.name} ({error.strerror or error})"
        ) from None
    with handle:
        size_bytes = os.fstat(handle.fileno()).st_size
        try:
            header = parse_header(
                handle.read(HEADER_SIZE_BYTES), path_name=str(path), file_size_bytes=size_bytes
            )
        except GainError:
            raise
        except Exception as error:
            raise GainError(
                f"{path}: is not a usable gain reference for {tiff_path.name} ({error})"
            ) from None
        if header.mode != 2 or header.nz != 1:
            raise GainError(
                f"{path}: is not a gain reference (mode {header.mode}, {header.nz} sections; "
                "a gain reference is one float32 section)"
            )
        expected_shape = record.transform.file_shape(frame_shape) if frame_shape is not None else None
        if expected_shape is not None and header.frame_shape != expected_shape:
            raise GainError(
                f"{path}: the gain reference is {header.frame_shape}, the frames of {tiff_path.name} "
                f"({frame_shape}) need one of {expected_shape}"
            )
        handle.seek(0)
        digest = file_digests(path, algorithms=("sha256",), handle=handle)["sha256"]
        if digest != record.reference_sha256:
            raise GainError(
                f"{path}: is not the gain reference {tiff_path.name} was converted with (sha256 "
                f"{digest[:16]}... != recorded {record.reference_sha256[:16]}...); find the right "
                f"{Path(record.reference).name}"
            )
        handle.seek(header.data_offset_bytes)
        raw = np.empty(header.frame_size_bytes, dtype=np.uint8)
        if handle.readinto(raw.data) != raw.size:  # type: ignore[attr-defined]
            raise GainError(f"{path}: the gain reference changed while it was read")
    stored = np.ascontiguousarray(raw.view(header.value_dtype).reshape(header.frame_shape), dtype=np.float32)
    return stored if record.transform.is_identity else record.transform.apply(stored)
