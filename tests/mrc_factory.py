"""Write MRC files byte by byte for the tests.

Independent of :mod:`empcompress.mrc` (which is what the tests check): the
1024-byte MRC2014 header is packed field by field with :mod:`struct` at the
offsets the standard gives, so a bug in the package's header layout cannot hide
in a shared definition.

``mrc_bytes`` builds a whole file from a ``(nz, ny, nx)`` array of values (for
mode 101: values 0-15, packed two per byte, low nibble first, rows padded to a
whole byte). ``header_overrides`` replaces any header word after the fact, and
``data`` replaces the data block, so damaged and odd files are easy to make.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["MODE_DTYPES", "IMOD_STAMP", "mrc_bytes", "write_mrc", "pack_nibbles", "source_values_dtype"]

HEADER_SIZE_BYTES = 1024
IMOD_STAMP = 1146047817
#: value dtype of each mode (mode 101: unpacked values as uint8)
MODE_DTYPES: dict[int, str] = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2", 101: "u1"}

# (offset, struct code) of each header word we may set; MRC2014 layout
_FIELDS: dict[str, tuple[int, str]] = {
    "nx": (0, "i"),
    "ny": (4, "i"),
    "nz": (8, "i"),
    "mode": (12, "i"),
    "nxstart": (16, "i"),
    "nystart": (20, "i"),
    "nzstart": (24, "i"),
    "mx": (28, "i"),
    "my": (32, "i"),
    "mz": (36, "i"),
    "cella_x": (40, "f"),
    "cella_y": (44, "f"),
    "cella_z": (48, "f"),
    "cellb_alpha": (52, "f"),
    "cellb_beta": (56, "f"),
    "cellb_gamma": (60, "f"),
    "mapc": (64, "i"),
    "mapr": (68, "i"),
    "maps": (72, "i"),
    "dmin": (76, "f"),
    "dmax": (80, "f"),
    "dmean": (84, "f"),
    "ispg": (88, "i"),
    "nsymbt": (92, "i"),
    "nversion": (108, "i"),
    "imod_stamp": (152, "i"),
    "imod_flags": (156, "i"),
    "origin_x": (196, "f"),
    "origin_y": (200, "f"),
    "origin_z": (204, "f"),
    "rms": (216, "f"),
    "nlabl": (220, "i"),
}


def source_values_dtype(mode: int, byte_order: str = "<", *, unsigned_bytes: bool = False) -> np.dtype:
    """The dtype of a mode's values in a file of the given byte order."""
    code = MODE_DTYPES[mode]
    if mode == 0 and unsigned_bytes:
        code = "u1"
    return np.dtype(code) if code[1] == "1" else np.dtype(byte_order + code)


def pack_nibbles(values: npt.NDArray[np.integer], *, pad_nibble: int = 0) -> bytes:
    """Pack (ny, nx) values 0-15 low nibble first; an odd row ends with ``pad_nibble`` high."""
    values = np.asarray(values, dtype=np.uint8)
    ny, nx = values.shape
    out = bytearray()
    for row in values:
        for start in range(0, nx, 2):
            low = int(row[start]) & 0x0F
            high = int(row[start + 1]) & 0x0F if start + 1 < nx else pad_nibble & 0x0F
            out.append(low | (high << 4))
    assert len(out) == ny * ((nx + 1) // 2)
    return bytes(out)


def mrc_bytes(
    values: npt.NDArray[np.generic],
    *,
    mode: int,
    byte_order: str = "<",
    extended_header: bytes = b"",
    exttyp: bytes = b"",
    labels: Sequence[str] = (),
    imod_flags: int | None = None,
    machst: bool = True,
    map_word: bool = True,
    pixel_size_angstrom: float = 1.0,
    ispg: int = 0,
    pad_nibble: int = 0,
    header_overrides: Mapping[str, int | float] | None = None,
    data: bytes | None = None,
    trailing: bytes = b"",
) -> bytes:
    """The bytes of an MRC file holding ``values`` (shape (nz, ny, nx)).

    ``imod_flags`` set: write IMOD's stamp and these flags (bit 0 = bytes are
    signed; so ``imod_flags=0`` marks mode-0 data as unsigned). ``machst=False``
    zeroes the machine stamp. ``data`` replaces the encoded values; ``trailing``
    is appended after them (for size-mismatch tests).
    """
    values = np.asarray(values)
    assert values.ndim == 3, values.shape
    nz, ny, nx = values.shape
    assert byte_order in "<>"
    fields: dict[str, int | float] = {
        "nx": nx,
        "ny": ny,
        "nz": nz,
        "mode": mode,
        "mx": nx,
        "my": ny,
        "mz": 1 if ispg == 0 else nz,
        "cella_x": pixel_size_angstrom * nx,
        "cella_y": pixel_size_angstrom * ny,
        "cella_z": pixel_size_angstrom * (1 if ispg == 0 else nz),
        "cellb_alpha": 90.0,
        "cellb_beta": 90.0,
        "cellb_gamma": 90.0,
        "mapc": 1,
        "mapr": 2,
        "maps": 3,
        "ispg": ispg,
        "nsymbt": len(extended_header),
        "nversion": 20140,
        "nlabl": len(labels),
    }
    if values.size and mode != 101:
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        if finite.size:
            fields["dmin"] = float(finite.min())
            fields["dmax"] = float(finite.max())
            fields["dmean"] = float(finite.astype(np.float64).mean())
    if imod_flags is not None:
        fields["imod_stamp"] = IMOD_STAMP
        fields["imod_flags"] = imod_flags
    if header_overrides:
        fields.update(header_overrides)

    header = bytearray(HEADER_SIZE_BYTES)
    for name, value in fields.items():
        offset, code = _FIELDS[name]
        struct.pack_into(byte_order + code, header, offset, value)
    header[104:108] = exttyp.ljust(4, b"\0")[:4]
    if map_word:
        header[208:212] = b"MAP "
    if machst:
        header[212:216] = b"\x44\x44\x00\x00" if byte_order == "<" else b"\x11\x11\x00\x00"
    assert len(labels) <= 10
    for index, label in enumerate(labels):
        encoded = label.encode("ascii")[:80]
        header[224 + 80 * index : 224 + 80 * index + len(encoded)] = encoded
        header[224 + 80 * index + len(encoded) : 224 + 80 * (index + 1)] = b" " * (80 - len(encoded))

    if data is None:
        if mode == 101:
            data = b"".join(pack_nibbles(frame, pad_nibble=pad_nibble) for frame in values)
        else:
            dtype = np.dtype(MODE_DTYPES[mode]).newbyteorder(byte_order)
            if mode == 0 and values.dtype == np.uint8:
                dtype = np.dtype("u1")
            data = np.ascontiguousarray(values.astype(dtype)).tobytes()
    return bytes(header) + extended_header + data + trailing


def write_mrc(path: str | Path, values: npt.NDArray[np.generic], **options: object) -> Path:
    """Write :func:`mrc_bytes` to ``path`` and return the path."""
    path = Path(path)
    path.write_bytes(mrc_bytes(values, **options))  # type: ignore[arg-type]
    return path
