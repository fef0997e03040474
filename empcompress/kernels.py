"""Numba kernels for the per-pixel hot loops, each with a NumPy twin.

The kernels take native-byte-order 2-D arrays. Each ``*_numpy`` twin computes the
same result with plain NumPy; the tests check that the two agree (property tests
with hypothesis), and the twins document what the kernels mean.

Bit-exactness rules for "integer-valued" floats: NaN, +-inf and -0.0 are not
integers (an integer type cannot give them back), every other value must equal
its floor.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
import numpy.typing as npt

__all__ = [
    "float_frame_stats",
    "float_frame_stats_numpy",
    "int_frame_stats",
    "int_frame_stats_numpy",
    "flip_cast",
    "flip_cast_numpy",
]

_JIT: dict[str, Any] = {"nogil": True, "cache": True}


@numba.njit(parallel=True, **_JIT)
def _float_frame_stats(frame: Any, bits: Any, negative_zero: Any) -> tuple[bool, float, float]:
    # Branch-free inner loop so that it vectorises: v - floor(v) != 0 catches
    # fractions and NaN, v - v != 0 catches +-inf, the bit pattern catches -0.0.
    ny, nx = frame.shape
    row_bad = np.zeros(ny, dtype=np.int64)
    row_min = np.empty(ny, dtype=np.float64)
    row_max = np.empty(ny, dtype=np.float64)
    for i in numba.prange(ny):
        bad = 0
        lo = frame[i, 0]
        hi = frame[i, 0]
        for j in range(nx):
            v = frame[i, j]
            bad |= (v != np.floor(v)) | (v - v != 0) | (bits[i, j] == negative_zero)
            lo = min(lo, v)
            hi = max(hi, v)
        row_bad[i] = bad
        row_min[i] = lo
        row_max[i] = hi
    return row_bad.sum() == 0, row_min.min(), row_max.max()


def float_frame_stats(frame: npt.NDArray[Any]) -> tuple[bool, float, float]:
    """(all values are exact integers, min, max) of a float frame.

    min and max are only meaningful when the frame is integral (NaN may or may not
    propagate into them otherwise).
    """
    if frame.dtype.itemsize == 2:  # float16 -> float32 is exact, -0.0 and NaN included
        frame = frame.astype(np.float32)
    frame = _native(frame)
    bits_dtype = np.uint32 if frame.dtype.itemsize == 4 else np.uint64
    negative_zero = bits_dtype(1 << (8 * frame.dtype.itemsize - 1))
    integral, lo, hi = _float_frame_stats(frame, frame.view(bits_dtype), negative_zero)
    return bool(integral), float(lo), float(hi)


def float_frame_stats_numpy(frame: npt.NDArray[np.floating]) -> tuple[bool, float, float]:
    """NumPy twin of :func:`float_frame_stats`."""
    values = _native(frame)
    with np.errstate(invalid="ignore"):
        integral = bool(
            np.all(np.isfinite(values))
            and np.all(values == np.floor(values))
            and not np.any((values == 0) & np.signbit(values))
        )
    finite_or_inf = values[~np.isnan(values)]
    if finite_or_inf.size == 0:
        return integral, float("inf"), float("-inf")
    return integral, float(finite_or_inf.min()), float(finite_or_inf.max())


@numba.njit(parallel=True, **_JIT)
def _int_frame_stats(frame: Any) -> tuple[int, int]:
    ny, nx = frame.shape
    row_min = np.empty(ny, dtype=np.int64)
    row_max = np.empty(ny, dtype=np.int64)
    for i in numba.prange(ny):
        lo = np.int64(frame[i, 0])
        hi = lo
        for j in range(nx):
            v = np.int64(frame[i, j])
            if v < lo:
                lo = v
            if v > hi:
                hi = v
        row_min[i] = lo
        row_max[i] = hi
    return int(row_min.min()), int(row_max.max())


def int_frame_stats(frame: npt.NDArray[Any]) -> tuple[int, int]:
    """(min, max) of an integer frame."""
    return _int_frame_stats(_native(frame))


def int_frame_stats_numpy(frame: npt.NDArray[np.integer]) -> tuple[int, int]:
    """NumPy twin of :func:`int_frame_stats`."""
    return int(frame.min()), int(frame.max())


@numba.njit(parallel=True, **_JIT)
def _flip_cast(source: Any, out: Any) -> None:
    ny, nx = source.shape
    for i in numba.prange(ny):
        k = ny - 1 - i
        for j in range(nx):
            out[k, j] = source[i, j]


def flip_cast(source: npt.NDArray[Any], out: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Write ``source`` upside down (row i -> row ny-1-i) into ``out``, casting values.

    The caller guarantees the cast is exact (the storage decision checked it).
    Flipping is its own inverse, so the same kernel restores the MRC row order.
    float16 on either side goes through NumPy (Numba has no float16 arithmetic).
    """
    if source.shape != out.shape:
        raise ValueError(f"shape mismatch: {source.shape} vs {out.shape}")
    if (source.dtype.kind, source.dtype.itemsize) == ("f", 2) or (out.dtype.kind, out.dtype.itemsize) == (
        "f",
        2,
    ):
        return flip_cast_numpy(source, out)
    if not out.dtype.isnative:
        raise ValueError("flip_cast needs a native-byte-order output array")
    _flip_cast(_native(source), out)
    return out


def flip_cast_numpy(source: npt.NDArray[Any], out: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """NumPy twin of :func:`flip_cast`."""
    out[...] = source[::-1]
    return out


def _native(frame: npt.NDArray[Any]) -> npt.NDArray[Any]:
    if frame.dtype.isnative:
        return frame
    return frame.astype(frame.dtype.newbyteorder("="))
