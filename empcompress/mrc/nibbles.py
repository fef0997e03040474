"""Mode 101: packed 4-bit values, two per byte, low nibble first, each row padded to a whole byte."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..frame_buffers import frame_buffer


def unpack_4bit(packed: npt.NDArray[np.uint8], *, nx: int) -> npt.NDArray[np.uint8]:
    """Unpack mode-101 rows (low nibble first, each row padded to a byte) to uint8."""
    ny = packed.shape[0]
    out = frame_buffer((ny, 2 * packed.shape[1]), np.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out[:, :nx]


def pack_4bit(
    values: npt.NDArray[np.uint8], *, pad_nibbles: npt.NDArray[np.uint8] | None = None
) -> npt.NDArray[np.uint8]:
    """Pack uint8 values 0-15 two per byte, low nibble first (inverse of :func:`unpack_4bit`).

    For odd widths each row ends in a half-used byte whose high nibble is taken
    from ``pad_nibbles`` (one per row, default 0).
    """
    ny, nx = values.shape
    width = (nx + 1) // 2
    padded = np.zeros((ny, 2 * width), dtype=np.uint8)
    padded[:, :nx] = values
    if nx % 2 and pad_nibbles is not None:
        padded[:, nx] = pad_nibbles
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)
