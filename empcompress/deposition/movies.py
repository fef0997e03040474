"""What each image file of a bag is, for the deposition: format, frames, size, voxel type, pixel size.

Read from what the run recorded rather than from the pixels: a converted movie's TIFF
record (:func:`empcompress.reconstruct.read_record`: the original MRC header, the
stored type), an MRC file's header, a TIFF's page directory. Files are read only
inside the bag's payload (``DEST/data``), as regular files.

Pixel size: the header's, when it says one (not 0, not 1, which writers put when they
know none); else the acquisition sidecar's (:mod:`.sidecars`), for frames of the size
the sidecar describes or of the same field of view; else *unknown*, never guessed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import EmpCompressError
from ..files import NotRegularFileError, open_regular
from .sidecars import AcquisitionMetadata

__all__ = [
    "FORMAT_MRC",
    "FORMAT_MRCS",
    "FORMAT_TIFF",
    "FORMAT_EER",
    "FORMAT_DM4",
    "FORMAT_DM3",
    "BagImage",
    "describe_image",
    "header_pixel_size",
    "pixel_size_for_frames",
]

FORMAT_MRC = "MRC"
FORMAT_MRCS = "MRCS"
FORMAT_TIFF = "TIFF"
FORMAT_EER = "EER"
FORMAT_DM4 = "DM4"
FORMAT_DM3 = "DM3"
_FORMAT_OF_SUFFIX = {
    ".mrc": FORMAT_MRC,
    ".mrcs": FORMAT_MRCS,
    ".tif": FORMAT_TIFF,
    ".tiff": FORMAT_TIFF,
    ".gain": FORMAT_TIFF,  # Falcon/EER gain references are TIFF files
    ".eer": FORMAT_EER,
    ".dm4": FORMAT_DM4,
    ".dm3": FORMAT_DM3,
}
#: voxel type of each MRC mode (mode 0 is signed unless IMOD's flags say unsigned)
_MODE_VOXELS = {1: "int16", 2: "float32", 6: "uint16", 12: "float16", 101: "uint4"}
#: the relative difference under which two pixel sizes are the same (sidecars print ~6 digits)
PIXEL_SIZE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class BagImage:
    """One image file of the bag as the deposition describes it."""

    output: str  # payload path, "data/..."
    source: str  # the drive's path
    category: str  # scan category: movie | micrograph | gain-reference
    outcome: str  # converted | copied | kept-as-is
    file_format: str  # FORMAT_*
    n_frames: int
    width: int
    height: int
    voxel: str  # numpy-style name: uint8, uint16, float32, uint4 (packed 4-bit), eer
    header_pixel_size_angstrom: float | None  # None when the header says none (0, 1, absent)
    source_mode: int | None = None  # MRC mode of the original (converted movies)
    source_voxel: str = ""  # the original's voxel type (converted movies)
    codec: str = ""
    gain_reference: str = ""  # payload path of the gain reference the TIFF's record names
    gain_kind: str = ""  # gain-normalised | carried-over (from the record)
    #: the gain reference's orientation relative to this movie, as RELION's (--gain_rot, --gain_flip),
    #: when the record proves it (gain-normalised storage: counts x oriented gain = the original)
    gain_relion: tuple[int, int] | None = None


def header_pixel_size(value: float | None) -> float | None:
    """A header's pixel size, or None when it says none: 0, 1 (the default of many writers), not finite."""
    if value is None or not math.isfinite(value) or value <= 0 or abs(value - 1.0) < 1e-6:
        return None
    return float(value)


def pixel_size_for_frames(
    metadata: AcquisitionMetadata, *, width: int, height: int
) -> tuple[float | None, str]:
    """The pixel size a sidecar gives frames of ``width`` x ``height``, and how (or why none).

    A sidecar that names no image size describes the frames themselves (SerialEM frame set).
    One that does (EPU's saved image, a SerialEM stack image) applies to frames of that size,
    or, for the same field of view, to frames ``k`` times larger on both axes (k = 2, 4, 8:
    frames saved less binned than the image); any other size: unknown.
    """
    if metadata.pixel_size_angstrom is None:
        return None, f"{metadata.sidecar} gives no pixel size"
    if metadata.image_width is None or metadata.image_height is None:
        return metadata.pixel_size_angstrom, f"{metadata.software} {metadata.sidecar}"
    image = (metadata.image_width, metadata.image_height)
    if (width, height) == image:
        return metadata.pixel_size_angstrom, f"{metadata.software} {metadata.sidecar}"
    for factor in (2, 4, 8):
        if (width, height) == (image[0] * factor, image[1] * factor):
            return (
                metadata.pixel_size_angstrom / factor,
                f"{metadata.software} {metadata.sidecar} ({metadata.pixel_size_angstrom:.4f} A for its "
                f"{image[0]}x{image[1]} image; the {width}x{height} frames cover the same field of view)",
            )
    return None, (
        f"{metadata.sidecar} gives {metadata.pixel_size_angstrom:.4f} A for a {image[0]}x{image[1]} image, "
        f"which is not the {width}x{height} frames nor a binning of them"
    )


def _inside(payload: Path, output: str) -> Path:
    """The file of payload path ``data/...`` under the bag, refusing anything that leaves it."""
    relative = PurePosixPath(output)
    parts = relative.parts
    if not parts or parts[0] != "data" or ".." in parts or relative.is_absolute():
        raise EmpCompressError(f"{output}: not a payload path of the bag")
    path = payload.joinpath(*parts[1:])
    real_payload = os.path.realpath(payload)
    if os.path.commonpath([real_payload, os.path.realpath(path)]) != real_payload:
        raise EmpCompressError(f"{output}: leads outside the bag's payload; not read")
    return path


def _mrc_voxel(*, mode: int, bytes_are_signed: bool) -> str:
    if mode == 0:
        return "int8" if bytes_are_signed else "uint8"
    return _MODE_VOXELS.get(mode, f"mode {mode}")


def _from_record(path: Path, base: dict[str, Any]) -> BagImage:
    from ..reconstruct import read_record

    record = read_record(path)
    source, storage = record.source, record.storage
    gain = storage.gain or {}
    transform = gain.get("transform") if isinstance(gain.get("transform"), dict) else None
    relion: tuple[int, int] | None = None
    if gain.get("kind") == "gain-normalised":  # proven: counts x gain rebuilds every value
        relion = (0, 0)
        if transform is not None:
            relion = (int(transform.get("relion_gain_rot", 0)), int(transform.get("relion_gain_flip", 0)))
    return BagImage(
        **base,
        file_format=FORMAT_TIFF,
        n_frames=source.nz,
        width=source.nx,
        height=source.ny,
        voxel=storage.stored_dtype,
        header_pixel_size_angstrom=header_pixel_size(source.pixel_size_angstrom),
        source_mode=source.mode,
        source_voxel=_mrc_voxel(mode=source.mode, bytes_are_signed=source.bytes_are_signed),
        codec=storage.codec,
        gain_kind=str(gain.get("kind", "")),
        gain_relion=relion,
    )


def _from_mrc(path: Path, base: dict[str, Any], file_format: str) -> BagImage:
    from ..mrc import read_header

    header = read_header(path)
    return BagImage(
        **base,
        file_format=file_format,
        n_frames=header.nz,
        width=header.nx,
        height=header.ny,
        voxel=_mrc_voxel(mode=header.mode, bytes_are_signed=header.bytes_are_signed),
        header_pixel_size_angstrom=header_pixel_size(header.pixel_size_angstrom),
    )


def _from_tiff(path: Path, base: dict[str, Any], file_format: str) -> BagImage:
    import tifffile

    from ..reconstruct import quiet_tifffile

    try:
        with (
            open_regular(path) as handle,
            quiet_tifffile(),
            tifffile.TiffFile(handle, name=path.name) as tiff,
        ):
            first = tiff.pages.first
            n_pages = len(tiff.pages)
            shape, dtype = first.shape, first.dtype
    except (OSError, NotRegularFileError):
        raise
    except Exception as error:
        raise EmpCompressError(f"{path}: not a readable TIFF ({type(error).__name__}: {error})") from None
    if len(shape) < 2:
        raise EmpCompressError(f"{path}: its first page is not an image (shape {shape})")
    voxel = "eer" if file_format == FORMAT_EER else str(dtype) if dtype is not None else "unknown"
    return BagImage(
        **base,
        file_format=file_format,
        n_frames=n_pages,
        width=int(shape[-1]),
        height=int(shape[-2]),
        voxel=voxel,
        header_pixel_size_angstrom=None,
    )


def _from_dm(path: Path, base: dict[str, Any], file_format: str) -> BagImage:
    """A Gatan DM3/DM4 image (gain references): its size and voxel type, read lazily by RosettaSciIO."""
    import stat

    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise EmpCompressError(f"{path}: is not a regular file; not read")
    try:
        from rsciio.digitalmicrograph import file_reader

        entries = file_reader(str(path), lazy=True)
        images = [entry["data"] for entry in entries if len(getattr(entry["data"], "shape", ())) == 2]
    except Exception as error:  # a third-party reader raises anything
        raise EmpCompressError(f"{path}: not a readable DM file ({type(error).__name__}: {error})") from None
    if len(images) != 1:
        raise EmpCompressError(f"{path}: holds {len(images)} 2-D images, not one")
    height, width = (int(side) for side in images[0].shape)
    return BagImage(
        **base,
        file_format=file_format,
        n_frames=1,
        width=width,
        height=height,
        voxel=str(images[0].dtype),
        header_pixel_size_angstrom=None,
    )


def describe_image(payload: str | os.PathLike[str], entry: dict[str, Any]) -> BagImage:
    """The :class:`BagImage` of one ``report.json`` file entry (raises EmpCompressError or OSError).

    ``payload`` is the bag's ``data/`` folder; ``entry`` a ``files`` item with ``output``,
    ``source``, ``category``, ``outcome``, ``gain_reference``.
    """
    output = str(entry.get("output") or "")
    path = _inside(Path(payload), output)
    base: dict[str, Any] = {
        "output": output,
        "source": str(entry.get("source") or output),
        "category": str(entry.get("category") or ""),
        "outcome": str(entry.get("outcome") or ""),
        "gain_reference": str(entry.get("gain_reference") or ""),
    }
    suffix = PurePosixPath(output).suffix.lower()
    if base["outcome"] == "converted":
        return _from_record(path, base)
    file_format = _FORMAT_OF_SUFFIX.get(suffix, "")
    if file_format in (FORMAT_MRC, FORMAT_MRCS):
        return _from_mrc(path, base, file_format)
    if file_format in (FORMAT_TIFF, FORMAT_EER):
        return _from_tiff(path, base, file_format)
    if file_format in (FORMAT_DM4, FORMAT_DM3):
        return _from_dm(path, base, file_format)
    raise EmpCompressError(f"{output}: a {suffix or 'nameless'} file; its size and type are not read")
