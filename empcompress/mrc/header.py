"""The MRC header: its layout, parsing and validation against the file's size, value dtypes per mode.

``open_mrc`` opens a movie safely (a regular file only) and ``read_header`` reads and checks its header.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import HeaderMismatchError, NotMrcError, TruncatedFileError, UnsupportedModeError
from ..files import NotRegularFileError, open_regular

HEADER_SIZE_BYTES = 1024
IMOD_STAMP = 1146047817
IMOD_FLAG_SIGNED_BYTES = 1

#: Numpy value type of each supported mode (byte order added per file).
MODE_DTYPES: dict[int, str] = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2", 101: "u1"}

_HEADER_FIELDS: list[tuple[str, str] | tuple[str, str, int]] = [
    ("nx", "i4"),
    ("ny", "i4"),
    ("nz", "i4"),
    ("mode", "i4"),
    ("nxstart", "i4"),
    ("nystart", "i4"),
    ("nzstart", "i4"),
    ("mx", "i4"),
    ("my", "i4"),
    ("mz", "i4"),
    ("cella", "f4", 3),
    ("cellb", "f4", 3),
    ("mapc", "i4"),
    ("mapr", "i4"),
    ("maps", "i4"),
    ("dmin", "f4"),
    ("dmax", "f4"),
    ("dmean", "f4"),
    ("ispg", "i4"),
    ("nsymbt", "i4"),
    ("extra1", "V8"),
    ("exttyp", "S4"),
    ("nversion", "i4"),
    ("extra2", "V40"),
    ("imod_stamp", "i4"),  # byte 152 (IMOD's mrc_format.txt)
    ("imod_flags", "i4"),  # byte 156; bit 0 set: mode-0 bytes are signed
    ("extra3", "V36"),
    ("origin", "f4", 3),
    ("map", "S4"),
    ("machst", "u1", 4),
    ("rms", "f4"),
    ("nlabl", "i4"),
    ("label", "S80", 10),
]


def _header_dtype(byte_order: str) -> np.dtype:
    fields: list[tuple[str, str] | tuple[str, str, int]] = []
    for field in _HEADER_FIELDS:
        name, code = field[0], field[1]
        if code[0] in "if":
            code = byte_order + code
        fields.append((name, code, field[2]) if len(field) == 3 else (name, code))
    dtype = np.dtype(fields)
    assert dtype.itemsize == HEADER_SIZE_BYTES
    return dtype


def value_dtype_for(*, mode: int, byte_order: str, bytes_are_signed: bool) -> np.dtype:
    """Numpy dtype of an MRC mode's values in the given byte order (uint8 for mode 101)."""
    code = MODE_DTYPES[mode]
    if mode == 0 and not bytes_are_signed:
        code = "u1"
    return np.dtype(code) if code[1] == "1" else np.dtype(byte_order + code)


@dataclass(frozen=True)
class MrcHeader:
    """What we need from an MRC header, plus its raw bytes for a byte-exact restore."""

    path_name: str
    nx: int
    ny: int
    nz: int
    mode: int
    byte_order: str  # "<" or ">"
    extended_header_size_bytes: int
    exttyp: str
    ispg: int
    voxel_size_angstrom: tuple[float, float, float]
    labels: tuple[str, ...]
    bytes_are_signed: bool  # mode 0 only: MRC2014 says signed unless IMOD says otherwise
    file_size_bytes: int

    @property
    def value_dtype(self) -> np.dtype:
        """Numpy dtype of the values, in the file's byte order (uint8 for mode 101)."""
        return value_dtype_for(
            mode=self.mode, byte_order=self.byte_order, bytes_are_signed=self.bytes_are_signed
        )

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def n_frames(self) -> int:
        return self.nz

    @property
    def data_offset_bytes(self) -> int:
        return HEADER_SIZE_BYTES + self.extended_header_size_bytes

    @property
    def frame_size_bytes(self) -> int:
        if self.mode == 101:
            return ((self.nx + 1) // 2) * self.ny
        return self.nx * self.ny * self.value_dtype.itemsize

    @property
    def data_size_bytes(self) -> int:
        return self.frame_size_bytes * self.nz

    @property
    def expected_file_size_bytes(self) -> int:
        return self.data_offset_bytes + self.data_size_bytes

    @property
    def pixel_size_angstrom(self) -> float:
        return self.voxel_size_angstrom[0]


def _byte_order_from_machst(machst: bytes) -> str | None:
    if machst[0] in (0x44, 0x41):
        return "<"
    if machst[0] == 0x11:
        return ">"
    return None


def _plausible(record: np.void) -> bool:
    return (
        int(record["mode"]) in MODE_DTYPES
        and 0 < int(record["nx"]) < 1 << 20
        and 0 < int(record["ny"]) < 1 << 20
        and 0 <= int(record["nz"]) < 1 << 24
        and 0 <= int(record["nsymbt"]) < 1 << 31
    )


def parse_header(raw_header: bytes, *, path_name: str, file_size_bytes: int) -> MrcHeader:
    """Parse and validate a 1024-byte MRC header against the file's size.

    Raises a subclass of :class:`InputError` naming ``path_name`` when the header
    is not MRC, uses an unsupported mode, or disagrees with the file's size.
    """
    if file_size_bytes == 0:
        raise NotMrcError(f"{path_name}: the file is empty, not an MRC movie")
    if len(raw_header) < HEADER_SIZE_BYTES:
        raise NotMrcError(
            f"{path_name}: {file_size_bytes} bytes is shorter than an MRC header "
            f"({HEADER_SIZE_BYTES} bytes); this is not an MRC file or it is truncated"
        )
    machst = raw_header[212:216]
    byte_order = _byte_order_from_machst(machst)
    if byte_order is None:
        # No machine stamp: take the byte order in which the header makes sense.
        plausible = [
            order
            for order in ("<", ">")
            if _plausible(np.frombuffer(raw_header, dtype=_header_dtype(order), count=1)[0])
        ]
        byte_order = plausible[0] if plausible else "<"
    record = np.frombuffer(raw_header, dtype=_header_dtype(byte_order), count=1)[0]
    has_map_word = bytes(record["map"]) == b"MAP "
    mode = int(record["mode"])
    nx, ny, nz = int(record["nx"]), int(record["ny"]), int(record["nz"])
    if not has_map_word and not _plausible(record):
        raise NotMrcError(
            f"{path_name}: not an MRC file (no 'MAP ' identifier and the header values "
            f"are not plausible: nx={nx}, ny={ny}, nz={nz}, mode={mode})"
        )
    if mode not in MODE_DTYPES:
        raise UnsupportedModeError(
            f"{path_name}: MRC mode {mode} is not supported "
            f"(supported modes: {', '.join(str(m) for m in MODE_DTYPES)})"
        )
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise HeaderMismatchError(f"{path_name}: the header gives an empty image (nx={nx}, ny={ny}, nz={nz})")
    nsymbt = int(record["nsymbt"])
    if nsymbt < 0:
        raise HeaderMismatchError(f"{path_name}: negative extended header size {nsymbt}")
    imod_stamp = int(record["imod_stamp"])
    imod_flags = int(record["imod_flags"])
    bytes_are_signed = not (imod_stamp == IMOD_STAMP and not imod_flags & IMOD_FLAG_SIGNED_BYTES)
    nlabl = max(0, min(10, int(record["nlabl"])))
    labels = tuple(bytes(record["label"][i]).rstrip(b"\0 ").decode("ascii", "replace") for i in range(nlabl))
    mx = int(record["mx"]) or nx
    my = int(record["my"]) or ny
    mz = int(record["mz"]) or 1
    cella = [float(v) for v in record["cella"]]
    voxel = (
        cella[0] / mx if mx else 0.0,
        cella[1] / my if my else 0.0,
        cella[2] / mz if mz else 0.0,
    )
    header = MrcHeader(
        path_name=path_name,
        nx=nx,
        ny=ny,
        nz=nz,
        mode=mode,
        byte_order=byte_order,
        extended_header_size_bytes=nsymbt,
        exttyp=bytes(record["exttyp"]).decode("ascii", "replace").strip("\0"),
        ispg=int(record["ispg"]),
        voxel_size_angstrom=voxel,
        labels=labels,
        bytes_are_signed=bytes_are_signed,
        file_size_bytes=file_size_bytes,
    )
    expected = header.expected_file_size_bytes
    if file_size_bytes < expected:
        raise TruncatedFileError(
            f"{path_name}: truncated: the header ({nx}x{ny}x{nz}, mode {mode}, "
            f"{nsymbt}-byte extended header) needs {expected} bytes but the file has "
            f"{file_size_bytes}; copy it again from the source"
        )
    if file_size_bytes > expected:
        raise HeaderMismatchError(
            f"{path_name}: the file has {file_size_bytes - expected} bytes more than its "
            f"header describes ({expected} bytes for {nx}x{ny}x{nz}, mode {mode}); "
            f"refusing to convert a file whose header does not match its size"
        )
    return header


def open_mrc(path: str | os.PathLike[str]) -> BinaryIO:
    """Open an MRC file for reading: links followed, but only to a regular file (never blocks).

    Raises :class:`NotMrcError` naming the file for a folder, a FIFO, a device, a
    missing file or one we may not read; other I/O errors stay ``OSError`` (naming the
    file): they are failures to retry, not properties of the data.
    """
    path = Path(path)
    try:
        return open_regular(os.path.realpath(path))
    except FileNotFoundError:
        raise NotMrcError(f"{path}: no such file") from None
    except PermissionError:
        raise NotMrcError(f"{path}: permission denied") from None
    except NotRegularFileError:
        if path.is_dir():
            raise NotMrcError(f"{path}: is a directory, not an MRC file") from None
        raise NotMrcError(
            f"{path}: is not a regular file (a FIFO, device or socket), not an MRC file"
        ) from None
    except OSError as error:
        # an I/O error (a flaky drive, too many open files) says nothing about the data: not NotMrcError
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None


def read_header(path: str | os.PathLike[str]) -> MrcHeader:
    """Read and validate the header of the MRC file at ``path``."""
    path = Path(path)
    with open_mrc(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        raw = handle.read(HEADER_SIZE_BYTES)
    return parse_header(raw, path_name=str(path), file_size_bytes=size)
