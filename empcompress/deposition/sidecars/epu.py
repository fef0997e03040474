"""EPU's sidecars: the per-movie ``FoilHole_*_Data_*.xml`` and the session's ``EpuSession.dm``.

Both are .NET DataContract XML. They are parsed with the standard library's expat
parser into an :class:`xml.etree.ElementTree.Element` tree whose tags are local names
(namespaces dropped); a document type declaration or an entity declaration is refused
(no entity expansion, no external resource), and so is anything that is not
well-formed.

From a movie's XML (units as EPU writes them):

- ``SpatialScale/pixelSize/x/numericValue``: pixel size in metres, of the image of
  ``camera/ReadoutArea`` (width x height) that EPU saved;
- ``CustomData``: ``Dose`` (e-/m^2, the exposure), ``DoseOnCamera`` (e- per pixel),
  ``DetectorCommercialName``;
- ``camera/CameraSpecificInput``: ``SuperResolutionFactor``, ``FractionationSettings/
  NumberOffractions``; ``camera/Binning``, ``camera/ExposureTime``;
- ``gun/AccelerationVoltage`` (V); ``core/ApplicationSoftwareVersion``.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from xml.parsers import expat

from ...errors import SidecarError
from . import SOFTWARE_EPU, AcquisitionMetadata

__all__ = [
    "EpuSession",
    "parse_xml",
    "parse_epu_movie_xml",
    "parse_epu_session",
    "is_epu_movie_name",
    "epu_sidecar_name",
]

_MOVIE_NAME = re.compile(r"FoilHole_\d+_Data_\d+_\d+_\d{8}_\d{6}", re.IGNORECASE)
_MOVIE_SUFFIXES = ("_fractions", "_eer")


def is_epu_movie_name(name: str) -> bool:
    """Whether a file name is EPU's ``FoilHole_<id>_Data_<id>_<n>_<date>_<time>[_Fractions].<ext>``."""
    return _MOVIE_NAME.match(name) is not None


def epu_sidecar_name(movie_name: str) -> str | None:
    """The name of the XML EPU writes beside a movie (``..._Fractions.mrc`` -> ``....xml``), or None."""
    if not is_epu_movie_name(movie_name):
        return None
    stem = PurePosixPath(movie_name).stem
    for suffix in _MOVIE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}.xml"


def _refuse_declarations(*_: Any) -> int:
    raise ValueError("document type or entity declarations are not accepted in a sidecar")


def parse_xml(data: bytes, *, name: str) -> ET.Element:
    """A well-formed XML document as a tree of local names; DTDs and entities are refused."""
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartDoctypeDeclHandler = _refuse_declarations
    parser.EntityDeclHandler = _refuse_declarations
    parser.ExternalEntityRefHandler = _refuse_declarations
    parser.StartElementHandler = lambda tag, attributes: builder.start(tag.rsplit("}", 1)[-1], attributes)
    parser.EndElementHandler = lambda tag: builder.end(tag.rsplit("}", 1)[-1])
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
        return builder.close()
    except (expat.ExpatError, ValueError, AssertionError) as error:
        raise SidecarError(f"{name}: not a readable EPU XML file ({error})") from None


def _path(element: ET.Element, *tags: str) -> ET.Element | None:
    for tag in tags:
        found = element.find(tag)
        if found is None:
            return None
        element = found
    return element


def _text(element: ET.Element | None) -> str | None:
    if element is None or element.text is None:
        return None
    return element.text.strip() or None


def _number(text: str | None, *, name: str, field: str) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise SidecarError(f"{name}: {field} is {text[:40]!r}, not a number") from None
    if not math.isfinite(value):
        raise SidecarError(f"{name}: {field} is {text[:40]!r}, not a finite number")
    return value


def _positive(value: float | None, *, name: str, field: str) -> float | None:
    if value is not None and value <= 0:
        raise SidecarError(f"{name}: {field} is {value}, not a positive number")
    return value


def _whole(value: float | None, *, name: str, field: str) -> int | None:
    if value is None:
        return None
    if value != int(value) or not 0 < value < 1 << 31:
        raise SidecarError(f"{name}: {field} is {value}, not a positive whole number")
    return int(value)


def _key_values(element: ET.Element | None) -> Iterator[tuple[str, ET.Element]]:
    """The ``KeyValueOfstringanyType`` pairs of a .NET dictionary element."""
    if element is None:
        return
    for pair in element.findall("KeyValueOfstringanyType"):
        key, value = _text(pair.find("Key")), pair.find("Value")
        if key is not None and value is not None:
            yield key, value


def parse_epu_movie_xml(data: bytes, *, name: str) -> AcquisitionMetadata:
    """The acquisition metadata of one EPU movie from its ``FoilHole_*_Data_*.xml``."""
    root = parse_xml(data, name=name)
    if root.tag != "MicroscopeImage":
        raise SidecarError(f"{name}: the root element is {root.tag[:40]!r}, not an EPU MicroscopeImage")
    custom = dict(_key_values(root.find("CustomData")))
    camera = _path(root, "microscopeData", "acquisition", "camera")
    specific = dict(_key_values(_path(camera, "CameraSpecificInput") if camera is not None else None))

    def number(element: ET.Element | None, *tags: str, field: str) -> float | None:
        found = _path(element, *tags) if element is not None else None
        return _number(_text(found), name=name, field=field)

    def whole(element: ET.Element | None, *tags: str, field: str) -> int | None:
        return _whole(number(element, *tags, field=field), name=name, field=field)

    pixel_m = _positive(
        number(root, "SpatialScale", "pixelSize", "x", "numericValue", field="pixelSize"),
        name=name,
        field="pixelSize",
    )
    dose_per_m2 = number(custom.get("Dose"), field="Dose")
    voltage_v = number(root, "microscopeData", "gun", "AccelerationVoltage", field="AccelerationVoltage")
    detector = _text(custom.get("DetectorCommercialName"))
    if detector is None:
        detector = next((_text(v) for k, v in custom.items() if k.endswith(".CommercialName")), None)
    return AcquisitionMetadata(
        software=SOFTWARE_EPU,
        sidecar=name,
        pixel_size_angstrom=pixel_m * 1e10 if pixel_m is not None else None,
        image_width=whole(camera, "ReadoutArea", "width", field="ReadoutArea width"),
        image_height=whole(camera, "ReadoutArea", "height", field="ReadoutArea height"),
        dose_e_per_angstrom2=dose_per_m2 / 1e20 if dose_per_m2 is not None else None,
        n_fractions=whole(
            specific.get("FractionationSettings"), "NumberOffractions", field="NumberOffractions"
        ),
        detector=detector,
        super_resolution_factor=whole(specific.get("SuperResolutionFactor"), field="SuperResolutionFactor"),
        binning=number(camera, "Binning", "x", field="Binning"),
        voltage_kv=voltage_v / 1000 if voltage_v is not None else None,
        exposure_time_seconds=number(camera, "ExposureTime", field="ExposureTime"),
        software_version=_text(_path(root, "microscopeData", "core", "ApplicationSoftwareVersion")),
    )


@dataclass(frozen=True)
class EpuSession:
    """What ``EpuSession.dm`` says about the whole session."""

    sidecar: str
    name: str | None
    start_time: str | None
    image_file_format: str | None
    dose_fractions_output_format: str | None


def parse_epu_session(data: bytes, *, name: str) -> EpuSession:
    """The session's name, start, and file formats from ``EpuSession.dm``."""
    root = parse_xml(data, name=name)
    if root.tag != "EpuSessionXml":
        raise SidecarError(f"{name}: the root element is {root.tag[:40]!r}, not an EPU session")
    return EpuSession(
        sidecar=name,
        name=_text(root.find("Name")),
        start_time=_text(root.find("StartDateTime")),
        image_file_format=_text(root.find("ImageFileFormat")),
        dose_fractions_output_format=_text(root.find("DoseFractionsOutputFormat")),
    )
