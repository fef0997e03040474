"""Integer-count detection: per-frame statistics and the storage decision for a movie.

The decision is made for the whole movie (every frame must fit) and is the
smallest type that gives every value back bit for bit: uint8, uint16, int16
(only when negatives occur), then uint32/int32; otherwise the float type of the
source is kept. Integer storage for float sources needs every value to be an
exact integer (no NaN, inf or -0.0, see :mod:`empcompress.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from . import kernels

__all__ = ["FrameStats", "StorageDecision", "frame_stats", "decide_storage", "INTEGER_STORAGE_ORDER"]

#: Candidate integer storage types, smallest and most widely read first.
INTEGER_STORAGE_ORDER: tuple[str, ...] = ("uint8", "uint16", "int16", "uint32", "int32")


@dataclass(frozen=True)
class FrameStats:
    """Summary of one frame or, merged, of many frames."""

    integral: bool
    value_min: float
    value_max: float
    n_frames: int = 1

    def merge(self, other: FrameStats) -> FrameStats:
        return FrameStats(
            integral=self.integral and other.integral,
            value_min=min(self.value_min, other.value_min),
            value_max=max(self.value_max, other.value_max),
            n_frames=self.n_frames + other.n_frames,
        )


@dataclass(frozen=True)
class StorageDecision:
    """How a movie's values are stored in the TIFF."""

    stored_dtype: str  # numpy dtype name, native byte order
    is_integer: bool  # stored as integers (counts)
    value_min: float
    value_max: float
    reason: str


def frame_stats(values: npt.NDArray[np.generic]) -> FrameStats:
    """Statistics of one frame of values (any supported dtype, either byte order)."""
    if values.dtype.kind == "f":
        integral, lo, hi = kernels.float_frame_stats(values)
        return FrameStats(integral=integral, value_min=lo, value_max=hi)
    lo_int, hi_int = kernels.int_frame_stats(values)
    return FrameStats(integral=True, value_min=float(lo_int), value_max=float(hi_int))


def _smallest_integer_type(value_min: float, value_max: float) -> str | None:
    for name in INTEGER_STORAGE_ORDER:
        info = np.iinfo(name)
        if info.min <= value_min and value_max <= info.max:
            return name
    return None


def decide_storage(*, source_dtype: np.dtype, stats: FrameStats) -> StorageDecision:
    """Choose the smallest lossless storage type for a movie from its merged stats."""
    source_name = np.dtype(source_dtype).newbyteorder("=").name
    lo, hi = stats.value_min, stats.value_max
    if source_dtype.kind in "iu":
        stored = _smallest_integer_type(lo, hi)
        assert stored is not None  # every source integer type fits one of them
        reason = f"{source_name} values {lo:g}..{hi:g} fit {stored}"
        return StorageDecision(stored, True, lo, hi, reason)
    if not stats.integral:
        return StorageDecision(
            source_name,
            False,
            lo,
            hi,
            f"{source_name} values are not all exact integers; kept as {source_name}",
        )
    stored = _smallest_integer_type(lo, hi)
    if stored is None:
        return StorageDecision(
            source_name,
            False,
            lo,
            hi,
            f"{source_name} values are integers but {lo:g}..{hi:g} fits no integer type; "
            f"kept as {source_name}",
        )
    return StorageDecision(
        stored, True, lo, hi, f"{source_name} values are exact integers {lo:g}..{hi:g}; stored as {stored}"
    )
