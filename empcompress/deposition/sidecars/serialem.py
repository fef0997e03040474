"""SerialEM's ``.mdoc`` files, read with the maintained ``mdocfile`` package.

An ``.mdoc`` has global lines (``PixelSpacing``, ``ImageFile``, ``ImageSize``,
``Voltage``) and sections: ``[FrameSet = n]`` in a frame file's own mdoc, ``[ZValue = n]``
for each image of a stack or tilt series. A section whose ``SubFramePath`` names a
frames file describes that movie: ``PixelSpacing`` (angstrom), ``ExposureDose``
(e-/A^2), ``NumSubFrames``, ``GainReference``, ``CountsPerElectron``, ``DividedBy2``,
``Binning``.

Which image ``PixelSpacing`` belongs to: in a frame set it is the saved frames' own
(``Binning = 0.5`` for super-resolution frames), so it applies to the movie as it is;
in a ``ZValue`` section it is the stack's image (``ImageSize``), which SerialEM often
bins while it saves the frames unbinned: it applies to the frames only through the same
field of view (see :func:`empcompress.deposition.movies.pixel_size_for_frames`).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any

from ...errors import SidecarError
from . import SOFTWARE_SERIALEM, AcquisitionMetadata

__all__ = ["MdocFile", "parse_mdoc"]

_WINDOWS_OR_POSIX_SEPARATOR = re.compile(r"[\\/]")


@dataclass(frozen=True)
class MdocFile:
    """One ``.mdoc``: the stack it describes (``ImageFile``), and every movie its sections name."""

    sidecar: str
    image_file: str | None
    image_width: int | None
    image_height: int | None
    pixel_size_angstrom: float | None
    movies: tuple[AcquisitionMetadata, ...]


def _finite(value: Any, *, name: str, field: str, positive: bool = False) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SidecarError(f"{name}: {field} is {str(value)[:40]!r}, not a number") from None
    if not math.isfinite(number) or (positive and number <= 0):
        raise SidecarError(f"{name}: {field} is {number}, not a {'positive ' if positive else ''}number")
    return number


def _whole(value: Any, *, name: str, field: str) -> int | None:
    number = _finite(value, name=name, field=field, positive=True)
    if number is None:
        return None
    if number != int(number) or number >= 1 << 31:
        raise SidecarError(f"{name}: {field} is {number}, not a whole number")
    return int(number)


def _base_name(path: Any) -> str | None:
    """The file name of a path written on Windows or POSIX (``X:\\a\\b.tif`` -> ``b.tif``)."""
    if path is None:
        return None
    text = str(path).strip()
    return _WINDOWS_OR_POSIX_SEPARATOR.split(text)[-1] or None


def parse_mdoc(data: bytes, *, name: str) -> MdocFile:
    """The movies (and the stack) a SerialEM ``.mdoc`` describes."""
    from mdocfile.data_models import Mdoc

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # SerialEM on Windows writes the local code page
    if "\x00" in text:
        raise SidecarError(f"{name}: holds NUL bytes; not a SerialEM .mdoc text file")
    logger = logging.getLogger("mdocfile")
    previous = logger.level
    logger.setLevel(logging.ERROR)  # "Unknown fields will be preserved" for every GainReference
    try:
        document = Mdoc.from_string(text)
    except Exception as error:  # pydantic's ValidationError, ValueError from a line without '='
        raise SidecarError(f"{name}: not a readable SerialEM .mdoc ({type(error).__name__})") from None
    finally:
        logger.setLevel(previous)
    header = document.global_data
    image_size = header.ImageSize
    image_width = _whole(image_size[0], name=name, field="ImageSize") if image_size else None
    image_height = _whole(image_size[1], name=name, field="ImageSize") if image_size else None
    voltage = _finite(header.Voltage, name=name, field="Voltage", positive=True)
    movies = []
    for section in document.section_data:
        frames_name = _base_name(section.SubFramePath)
        if frames_name is None:
            continue
        extra = section.model_extra or {}
        frame_set = section.FrameSet is not None
        section_voltage = _finite(section.Voltage, name=name, field="Voltage", positive=True)
        divided = section.DividedBy2
        movies.append(
            AcquisitionMetadata(
                software=SOFTWARE_SERIALEM,
                sidecar=name,
                pixel_size_angstrom=_finite(
                    section.PixelSpacing, name=name, field="PixelSpacing", positive=True
                ),
                image_width=None if frame_set else image_width,
                image_height=None if frame_set else image_height,
                dose_e_per_angstrom2=_finite(section.ExposureDose, name=name, field="ExposureDose"),
                n_fractions=_whole(section.NumSubFrames, name=name, field="NumSubFrames"),
                binning=_finite(section.Binning, name=name, field="Binning", positive=True),
                voltage_kv=section_voltage if section_voltage is not None else voltage,
                exposure_time_seconds=_finite(section.ExposureTime, name=name, field="ExposureTime"),
                gain_reference_name=_base_name(extra.get("GainReference")),
                counts_per_electron=_finite(
                    extra.get("CountsPerElectron"), name=name, field="CountsPerElectron", positive=True
                ),
                divided_by_2=bool(divided) if divided is not None else None,
                frames_name=frames_name,
            )
        )
    return MdocFile(
        sidecar=name,
        image_file=_base_name(header.ImageFile),
        image_width=image_width,
        image_height=image_height,
        pixel_size_angstrom=_finite(header.PixelSpacing, name=name, field="PixelSpacing", positive=True),
        movies=tuple(movies),
    )
