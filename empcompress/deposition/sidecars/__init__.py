"""Acquisition metadata from the files microscope software leaves beside the movies.

- :mod:`.epu`: Thermo Fisher EPU's per-movie ``FoilHole_*_Data_*.xml`` and ``EpuSession.dm``
  (standard library XML parser; no DTD or entity is accepted);
- :mod:`.serialem`: SerialEM's ``.mdoc`` (the maintained ``mdocfile`` package).

Sidecars are hostile input: :func:`read_sidecar_bytes` reads one only if it is a
regular file inside the drive (links resolved, they must not leave it), no larger
than :data:`MAX_SIDECAR_BYTES`; every problem is a :class:`~empcompress.errors.SidecarError`
naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ...errors import SidecarError
from ...files import NotRegularFileError, open_regular

__all__ = ["MAX_SIDECAR_BYTES", "AcquisitionMetadata", "read_sidecar_bytes"]

#: The largest sidecar read: EPU's per-movie XML is ~16 KB, EpuSession.dm ~0.2 MB, a long tilt
#: series' .mdoc well under 1 MB.
MAX_SIDECAR_BYTES = 8 << 20

SOFTWARE_EPU = "EPU"
SOFTWARE_SERIALEM = "SerialEM"


@dataclass(frozen=True)
class AcquisitionMetadata:
    """What one sidecar says about one movie (or image). ``None``: the sidecar does not say.

    ``pixel_size_angstrom`` is the pixel size of the image the sidecar describes; when
    ``image_width``/``image_height`` are given it applies to an image of that size (EPU's
    integrated image, a tilt series' image), and to frames of another size only through the
    same field of view (see :func:`empcompress.deposition.movies.pixel_size_for_frames`).
    Without them it applies to the saved frames themselves (a SerialEM frame set).
    """

    software: str
    sidecar: str  # the sidecar's path (bag- or drive-relative), for messages and details
    pixel_size_angstrom: float | None = None
    image_width: int | None = None
    image_height: int | None = None
    dose_e_per_angstrom2: float | None = None
    n_fractions: int | None = None
    detector: str | None = None
    super_resolution_factor: int | None = None
    binning: float | None = None
    voltage_kv: float | None = None
    exposure_time_seconds: float | None = None
    gain_reference_name: str | None = None
    counts_per_electron: float | None = None
    divided_by_2: bool | None = None
    software_version: str | None = None
    frames_name: str | None = None  # the frame file a section names (SerialEM SubFramePath's name)


def read_sidecar_bytes(path: str | os.PathLike[str], *, root: str | os.PathLike[str]) -> bytes:
    """The bytes of the sidecar at ``path``, only if it is a regular file inside ``root``.

    Links are resolved and must stay inside ``root``; the file is opened with
    :func:`~empcompress.files.open_regular` (never blocks on a FIFO or a device) and read up to
    :data:`MAX_SIDECAR_BYTES` (a larger one is refused, not truncated).
    """
    path = Path(path)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise SidecarError(f"{path}: leads outside {root}; a sidecar is read only inside the drive")
    try:
        with open_regular(real) as handle:
            size_bytes = os.fstat(handle.fileno()).st_size
            if size_bytes > MAX_SIDECAR_BYTES:
                raise SidecarError(
                    f"{path}: {size_bytes} bytes, larger than any acquisition sidecar "
                    f"({MAX_SIDECAR_BYTES} at most); not read"
                )
            data = handle.read(MAX_SIDECAR_BYTES + 1)
    except NotRegularFileError:
        raise SidecarError(f"{path}: is not a regular file; not read as a sidecar") from None
    except OSError as error:
        raise SidecarError(f"{path}: cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_SIDECAR_BYTES:
        raise SidecarError(f"{path}: grew past {MAX_SIDECAR_BYTES} bytes while read; not read")
    return data
