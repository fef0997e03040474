"""EMPIAR imagesets from the bag's images: one per group sharing what an imageset states.

Movies (and single micrographs) group by category, format, frame size, frames per
image, voxel type, pixel size and how they came into the bag (converted by us or as
deposited): a drive with two sessions at different pixel sizes gives two imagesets.
Gain references form imagesets of their own, one per format, size and voxel type.

Coded values are written as EMPIAR's deposition schema wants them: ``"('T2', '')"``,
``"('OT', 'TEXT')"`` for "other".
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from .movies import FORMAT_DM3, FORMAT_DM4, FORMAT_EER, FORMAT_MRC, FORMAT_MRCS, FORMAT_TIFF, BagImage
from .sidecars import AcquisitionMetadata
from .sidecars.epu import EpuSession

__all__ = [
    "CATEGORY_MULTIFRAME",
    "CATEGORY_SINGLE_FRAME",
    "CATEGORY_GAIN",
    "VOXEL_CODES",
    "ResolvedMovie",
    "GainInfo",
    "ImagesetGroup",
    "coded",
    "voxel_code",
    "group_movies",
    "group_gains",
]


def coded(code: str, text: str = "") -> str:
    """EMPIAR's coded value: ``('T2', '')``, or ``('OT', 'TEXT')`` for other."""
    return f"('{code}', '{text}')"


CATEGORY_MULTIFRAME = coded("T2")  # micrographs - multiframe
CATEGORY_SINGLE_FRAME = coded("T1")  # micrographs - single frame
CATEGORY_GAIN = coded("OT", "gain references")
_FORMAT_CODES = {
    FORMAT_MRC: coded("T1"),
    FORMAT_MRCS: coded("T2"),
    FORMAT_TIFF: coded("T3"),
    FORMAT_DM3: coded("T5"),
    FORMAT_DM4: coded("T6"),
    FORMAT_EER: coded("T9"),
}
#: numpy-style voxel names -> EMPIAR voxel_type codes
VOXEL_CODES = {
    "uint8": coded("T1"),
    "int8": coded("T2"),
    "uint16": coded("T3"),
    "int16": coded("T4"),
    "uint32": coded("T5"),
    "int32": coded("T6"),
    "float32": coded("T7"),
    "uint4": coded("T9"),
    "float16": coded("OT", "16 BIT FLOAT"),
    "eer": coded("OT", "EER ELECTRON EVENTS"),
}
_VOXEL_WORDS = {
    "uint8": "8-bit unsigned",
    "int8": "8-bit signed",
    "uint16": "16-bit unsigned",
    "int16": "16-bit signed",
    "uint32": "32-bit unsigned",
    "int32": "32-bit signed",
    "float32": "32-bit float",
    "float16": "16-bit float",
    "uint4": "packed 4-bit",
    "eer": "EER electron events",
}
#: pixel sizes are stated (and grouped) to this many decimals of an angstrom (sidecars print ~5-6 digits)
_PIXEL_DECIMALS = 4


def voxel_code(voxel: str) -> str:
    return VOXEL_CODES.get(voxel) or coded("OT", voxel.upper().replace("-", " ")[:40] or "UNKNOWN")


@dataclass(frozen=True)
class ResolvedMovie:
    """A movie with the pixel size the deposition states for it, and where that came from."""

    image: BagImage
    pixel_size_angstrom: float | None
    pixel_size_from: str  # "the MRC header", "EPU FoilHole_..xml", or why it is unknown
    acquisition: AcquisitionMetadata | None = None


@dataclass(frozen=True)
class GainInfo:
    """A gain reference in the bag and what is known of its orientation relative to the movies."""

    image: BagImage
    origin: str  # "estimated" (by empcompress, from the movies) | "depositor"
    orientation: str  # RELION terms, or why it is not known
    n_movies: int  # movies whose TIFF record names it


@dataclass(frozen=True)
class ImagesetGroup:
    """One imageset: its JSON and its members (payload paths)."""

    imageset: dict[str, Any]
    members: tuple[str, ...]
    unknown_pixel_size: tuple[str, ...] = ()


#: the schema's limit on ``directory`` (and ``name``)
MAX_FIELD_CHARS = 200


def _directory(outputs: Sequence[str]) -> str:
    """The folder holding every output (``data/...``), moved up until it fits the schema's length."""
    folders = [str(PurePosixPath(output).parent) for output in outputs]
    common = PurePosixPath(os.path.commonpath(folders) if folders else "data")
    while len(str(common)) > MAX_FIELD_CHARS and len(common.parts) > 1:
        common = common.parent
    return str(common) if common.parts[:1] == ("data",) else "data"


def _pixel_text(value: float | None) -> str:
    return f"{value:.4g} A/pixel" if value is not None else "pixel size unknown"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, _PIXEL_DECIMALS)


def _conversion_text(movies: Sequence[ResolvedMovie], tool_version: str) -> str:
    first = movies[0].image
    if first.outcome == "converted":
        sources = sorted({m.image.source_voxel or "?" for m in movies})
        codecs = sorted({m.image.codec for m in movies if m.image.codec})
        return (
            f"Converted losslessly from MRC ({', '.join(sources)}) to multi-page TIFF with empcompress "
            f"{tool_version}: values stored as {_VOXEL_WORDS.get(first.voxel, first.voxel)} integers"
            f"{' (electron counts)' if first.voxel in ('uint8', 'uint16') else ''}"
            f"{', compression ' + '/'.join(codecs) if codecs else ''}; rows in the RELION/IMOD convention "
            f"(TIFF row 0 is MRC row ny-1). Every TIFF was verified bit for bit by decoding it back from "
            f"disk and comparing it with its source, and each original MRC file can be restored byte for "
            f"byte from its TIFF alone (`empcompress restore`; the TIFF's record keeps the complete "
            f"original header and the source's sha256)."
            if first.voxel != first.source_voxel
            else f"Stored losslessly as multi-page TIFF by empcompress {tool_version} ("
            f"{_VOXEL_WORDS.get(first.voxel, first.voxel)} values kept as they were); verified bit for "
            f"bit against the source and restorable byte for byte to the original MRC file "
            f"(`empcompress restore`)."
        )
    if first.outcome == "kept-as-is":
        return (
            "Could not be converted (see the bag's report.json for why); copied byte for byte as "
            "deposited, sha256 in the bag's manifest."
        )
    return f"As deposited: copied byte for byte by empcompress {tool_version}, sha256 in the bag's manifest."


def _acquisition_text(movies: Sequence[ResolvedMovie]) -> str:
    found = [m.acquisition for m in movies if m.acquisition is not None]
    if not found:
        return ""
    parts = []
    software = sorted({a.software + (f" {a.software_version}" if a.software_version else "") for a in found})
    detectors = sorted({a.detector for a in found if a.detector})
    voltages = sorted({a.voltage_kv for a in found if a.voltage_kv})
    doses = [a.dose_e_per_angstrom2 for a in found if a.dose_e_per_angstrom2 is not None]
    fractions = sorted({a.n_fractions for a in found if a.n_fractions})
    if detectors:
        parts.append("detector " + ", ".join(detectors))
    if voltages:
        parts.append(", ".join(f"{v:g}" for v in voltages) + " kV")
    if doses:
        low, high = min(doses), max(doses)
        dose = f"{low:.3g}" if abs(high - low) < 0.01 * max(abs(high), 1e-9) else f"{low:.3g}-{high:.3g}"
        parts.append(f"exposure {dose} e-/A^2")
    if fractions:
        parts.append("recorded as " + "/".join(str(n) for n in fractions) + " fractions")
    super_resolution = sorted({a.super_resolution_factor for a in found if a.super_resolution_factor})
    if super_resolution:
        parts.append("super-resolution factor " + "/".join(str(n) for n in super_resolution))
    gains = sorted({a.gain_reference_name for a in found if a.gain_reference_name})
    if gains:
        parts.append("SerialEM gain reference " + ", ".join(gains[:3]) + (" ..." if len(gains) > 3 else ""))
    return (
        f"Acquisition ({', '.join(software)} sidecars of {len(found)} of {len(movies)} movies): "
        + "; ".join(parts)
        + "."
    )


def _files(n: int) -> str:
    return f"{n} file{'s' if n != 1 else ''}"


def _pixel_source_text(movies: Sequence[ResolvedMovie]) -> str:
    known = [m for m in movies if m.pixel_size_angstrom is not None]
    if not known:
        reasons = sorted({m.pixel_size_from for m in movies})
        return "Pixel size: unknown (" + "; ".join(reasons[:2]) + ")."
    from_header = sum(m.pixel_size_from == "the MRC header" for m in known)
    from_sidecar = len(known) - from_header
    parts = []
    if from_header:
        parts.append(f"the MRC headers of {_files(from_header)}")
    if from_sidecar:
        example = next(m.pixel_size_from for m in known if m.pixel_size_from != "the MRC header")
        sidecars = f"the acquisition sidecars of {_files(from_sidecar)} (their MRC headers said none)"
        parts.append(f"{sidecars}, e.g. {example}")
    return f"Pixel size from {' and '.join(parts)}."


def _gain_text(movies: Sequence[ResolvedMovie], gains: dict[str, GainInfo]) -> str:
    used = sorted({m.image.gain_reference for m in movies if m.image.gain_reference})
    if not used:
        return ""
    lines = []
    for reference in used:
        info = gains.get(reference)
        users = [m for m in movies if m.image.gain_reference == reference]
        orientations = sorted({m.image.gain_relion for m in users if m.image.gain_relion is not None})
        if orientations:
            orientation = "; ".join(
                f"RELION --gain_rot {rot} --gain_flip {flip}"
                + (" (as it is)" if (rot, flip) == (0, 0) else "")
                for rot, flip in orientations
            )
        elif info is not None:
            orientation = info.orientation
        else:
            orientation = "orientation relative to the movies not determined"
        stored = (
            "the movies are stored as counts: multiply by the gain to get the original values"
            if any(m.image.gain_kind == "gain-normalised" for m in users)
            else "to be applied to the counts when processing"
        )
        lines.append(f"{reference} for {len(users)} movies ({stored}); orientation: {orientation}")
    return "Gain reference: " + " | ".join(lines) + "."


def _sessions_text(movies: Sequence[ResolvedMovie], sessions: Sequence[EpuSession]) -> str:
    """The EPU sessions (``EpuSession.dm``) whose folder holds some of these movies."""
    found = []
    for session in sessions:
        folder = str(PurePosixPath(session.sidecar).parent)
        if folder == "." or any(m.image.source.startswith(folder + "/") for m in movies):
            found.append(
                f"{session.name or session.sidecar}"
                + (f" (started {session.start_time[:19]})" if session.start_time else "")
            )
    return f"EPU session {', '.join(found[:4])}." if found else ""


def group_movies(
    movies: Sequence[ResolvedMovie],
    *,
    gains: dict[str, GainInfo],
    tool_version: str,
    sessions: Sequence[EpuSession] = (),
) -> list[ImagesetGroup]:
    """One imageset per group of movies that share what an imageset states."""
    groups: defaultdict[tuple[Any, ...], list[ResolvedMovie]] = defaultdict(list)
    for movie in movies:
        image = movie.image
        key = (
            image.n_frames > 1,
            image.file_format,
            image.width,
            image.height,
            image.n_frames,
            image.voxel,
            _round(movie.pixel_size_angstrom),
            image.outcome == "converted",
        )
        groups[key].append(movie)
    result = []
    for key, members in sorted(groups.items(), key=lambda item: (-len(item[1]), str(item[0]))):
        multiframe, file_format, width, height, n_frames, voxel, pixel, _ = key
        kind = ("movie" if multiframe else "micrograph") + ("s" if len(members) != 1 else "")
        name = (
            f"{len(members)} {kind}, {width}x{height}"
            + (f", {n_frames} frames" if multiframe else "")
            + f", {_VOXEL_WORDS.get(voxel, voxel)} {file_format}, {_pixel_text(pixel)}"
        )
        details = " ".join(
            part
            for part in (
                _conversion_text(members, tool_version),
                _pixel_source_text(members),
                _acquisition_text(members),
                _sessions_text(members, sessions),
                _gain_text(members, gains),
            )
            if part
        )
        outputs = [m.image.output for m in members]
        imageset = {
            "name": name[:MAX_FIELD_CHARS],
            "directory": _directory(outputs),
            "category": CATEGORY_MULTIFRAME if multiframe else CATEGORY_SINGLE_FRAME,
            "header_format": _FORMAT_CODES.get(file_format, coded("OT", file_format or "UNKNOWN")),
            "data_format": _FORMAT_CODES.get(file_format, coded("OT", file_format or "UNKNOWN")),
            "num_images_or_tilt_series": len(members),
            "frames_per_image": n_frames,
            "frame_range_min": 1,
            "frame_range_max": n_frames,
            "voxel_type": voxel_code(voxel),
            "pixel_width": pixel,
            "pixel_height": pixel,
            "details": details,
            "image_width": width,
            "image_height": height,
        }
        unknown = tuple(m.image.output for m in members if m.pixel_size_angstrom is None)
        result.append(ImagesetGroup(imageset, tuple(outputs), unknown))
    return result


def group_gains(gains: Sequence[GainInfo]) -> list[ImagesetGroup]:
    """The gain references as imagesets of their own (one per format, size and voxel type)."""
    groups: defaultdict[tuple[str, int, int, str], list[GainInfo]] = defaultdict(list)
    for gain in gains:
        groups[(gain.image.file_format, gain.image.width, gain.image.height, gain.image.voxel)].append(gain)
    result = []
    for (file_format, width, height, voxel), members in sorted(groups.items()):
        lines = []
        for gain in members:
            made = (
                "estimated by empcompress from the gain-normalised movies that use it"
                if gain.origin == "estimated"
                else "supplied by the depositor"
            )
            lines.append(
                f"{gain.image.output}: {made}; used by {gain.n_movies} movies; orientation relative to "
                f"the movies: {gain.orientation}"
            )
        details = (
            "Gain references in MRC row order, the convention RELION, MotionCor2 and cryoSPARC apply to "
            "TIFF movies (the movies' TIFF rows are flipped from MRC like RELION's and IMOD's converters "
            "do). " + " | ".join(lines)
        )
        outputs = [gain.image.output for gain in members]
        result.append(
            ImagesetGroup(
                {
                    "name": f"{len(members)} gain reference{'s' if len(members) > 1 else ''}, "
                    f"{width}x{height}, {_VOXEL_WORDS.get(voxel, voxel)} {file_format}",
                    "directory": _directory(outputs),
                    "category": CATEGORY_GAIN,
                    "header_format": _FORMAT_CODES.get(file_format, coded("OT", file_format or "UNKNOWN")),
                    "data_format": _FORMAT_CODES.get(file_format, coded("OT", file_format or "UNKNOWN")),
                    "num_images_or_tilt_series": len(members),
                    "frames_per_image": 1,
                    "frame_range_min": 1,
                    "frame_range_max": 1,
                    "voxel_type": voxel_code(voxel),
                    "pixel_width": None,
                    "pixel_height": None,
                    "details": details,
                    "image_width": width,
                    "image_height": height,
                },
                tuple(outputs),
            )
        )
    return result
