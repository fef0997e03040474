"""Numba kernels for the per-pixel hot loops, each with a NumPy twin.

The kernels take native-byte-order 2-D arrays. Each ``*_numpy`` twin computes the
same result with plain NumPy; the tests check that the two agree (property tests
with hypothesis), and the twins document what the kernels mean.

Bit-exactness rules for "integer-valued" floats: NaN, +-inf and -0.0 are not
integers (an integer type cannot give them back), every other value must equal
its floor.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, NamedTuple

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


# ---------------------------------------------------------------- gain-normalised movies
#
# A gain-normalised value is v = float32(n * g): an electron count n >= 0 times a
# per-pixel float32 gain g, rounded once to float32. float32(n) * g in float32
# arithmetic is exactly that (IEEE multiplication rounds the exact product once,
# and n <= 65535 is exact in float32), so the kernels work in float32: the
# conversion check, restore and downstream programs agree bit for bit. The
# count is rint(v / g) in float32, which is n whenever v = float32(n * g) (the
# two roundings move v / g by at most n * 2**-23 < 0.5); any other value fails
# the check and becomes an exception. "Exact" means the same bits: the sign of
# zero counts, NaN never equals anything.

#: Distinct positive values kept per pixel by the gain summary.
GAIN_SUMMARY_KEPT = 4
#: Gain given to pixels that never saw a positive value (their counts are 0).
NEUTRAL_GAIN = np.float32(1.0)
#: Largest count the gain kernels produce (the uint16 range).
GAIN_COUNT_LIMIT = 65535
#: Pixel status codes of :func:`gain_finalize`.
GAIN_UNHIT, GAIN_RELIABLE, GAIN_UNCONFIRMED, GAIN_EXCEPTION = 0, 1, 2, 3
#: Flag bit set in the summary when a pixel held a value no gain can give
#: (negative, -0.0, NaN, inf).
GAIN_FLAG_INVALID = 1
_GAIN_DIVISORS = (1, 2, 3, 4)
_GAIN_ULP_STEPS = (0, -1, 1, -2, 2)
_FLOAT32_INF_BITS = 0x7F800000

__all__ += [
    "GAIN_SUMMARY_KEPT",
    "gain_summary_merge_into",
    "NEUTRAL_GAIN",
    "GAIN_COUNT_LIMIT",
    "gain_summary_update",
    "gain_summary_update_numpy",
    "gain_summary_merge",
    "gain_summary_merge_numpy",
    "gain_finalize",
    "gain_finalize_numpy",
    "GainCounts",
    "gain_counts",
    "gain_counts_numpy",
    "gain_exception_count",
    "gain_exception_count_numpy",
    "gain_apply",
    "gain_apply_numpy",
]


@numba.njit(inline="always", **_JIT)
def _count_for(v: Any, g: Any, limit: Any) -> Any:
    # float32 throughout, branch-free so that it vectorises; NaN, negatives and
    # anything below 0.5 (including -0.0) give +0, anything above limit gives limit
    n = np.rint(v / g)
    n = n if n >= np.float32(0.5) else np.float32(0.0)
    return n if n <= limit else limit


@numba.njit(inline="always", **_JIT)
def _reproduces(v: Any, n: Any, g: Any) -> bool:
    p = n * g  # float32: the exact product rounded once
    return (p == v) & (math.copysign(np.float32(1.0), p) == math.copysign(np.float32(1.0), v))


@numba.njit(inline="always", **_JIT)
def _insert_kept(kept: Any, i: int, j: int, m: int, depth: int, v: Any) -> int:
    """Insert v into the ascending distinct list kept[i, j, :m]; the new length."""
    if m == depth and v >= kept[i, j, depth - 1]:
        return m
    position = m
    for t in range(m):
        if kept[i, j, t] == v:
            return m
        if kept[i, j, t] > v:
            position = t
            break
    for t in range(min(m, depth - 1), position, -1):
        kept[i, j, t] = kept[i, j, t - 1]
    kept[i, j, position] = v
    return min(m + 1, depth)


@numba.njit(parallel=True, **_JIT)
def _gain_summary_update(values: Any, bits: Any, kept: Any, n_kept: Any, n_hits: Any, flags: Any) -> None:
    ny, nx = values.shape
    depth = kept.shape[2]
    for i in numba.prange(ny):
        for j in range(nx):
            if bits[i, j] == 0:  # +0.0: no electron
                continue
            v = values[i, j]
            if not (v > 0.0 and v < np.inf):
                flags[i, j] |= GAIN_FLAG_INVALID
                continue
            if n_hits[i, j] < 65535:
                n_hits[i, j] += 1
            n_kept[i, j] = _insert_kept(kept, i, j, np.int64(n_kept[i, j]), depth, v)


def gain_summary_update(
    values: npt.NDArray[Any],
    kept: npt.NDArray[np.float32],
    n_kept: npt.NDArray[np.uint8],
    n_hits: npt.NDArray[np.uint16],
    flags: npt.NDArray[np.uint8],
) -> None:
    """Fold one float32 frame into a per-pixel gain summary, in place.

    ``kept[y, x]`` holds the pixel's smallest distinct positive finite values in
    ascending order (unused slots are +inf), ``n_kept`` how many, ``n_hits`` the
    number of positive values seen (saturating at 65535) and ``flags`` has
    :data:`GAIN_FLAG_INVALID` set where a value no gain can give was seen. +0.0
    is a zero count and leaves the summary unchanged.
    """
    values = _native(values)
    if values.dtype != np.float32:
        raise ValueError(f"gain summaries take float32 frames, not {values.dtype}")
    _gain_summary_update(values, values.view(np.uint32), kept, n_kept, n_hits, flags)


def _dedupe_smallest(
    candidates: npt.NDArray[np.float32], depth: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Per pixel (last axis), the ``depth`` smallest distinct finite values, padded with +inf."""
    ordered = np.sort(candidates, axis=-1)
    repeated = np.zeros(ordered.shape, dtype=bool)
    repeated[..., 1:] = ordered[..., 1:] == ordered[..., :-1]
    ordered[repeated] = np.inf
    ordered = np.sort(ordered, axis=-1)[..., :depth]
    return np.ascontiguousarray(ordered), np.isfinite(ordered).sum(axis=-1).astype(np.uint8)


def gain_summary_update_numpy(
    values: npt.NDArray[Any],
    kept: npt.NDArray[np.float32],
    n_kept: npt.NDArray[np.uint8],
    n_hits: npt.NDArray[np.uint16],
    flags: npt.NDArray[np.uint8],
) -> None:
    """NumPy twin of :func:`gain_summary_update`."""
    values = _native(values)
    zero = values.view(np.uint32) == 0
    positive = (values > 0) & np.isfinite(values)
    invalid = ~zero & ~positive
    flags[invalid] |= GAIN_FLAG_INVALID
    n_hits[...] = np.minimum(n_hits.astype(np.uint32) + positive, 65535).astype(np.uint16)
    incoming = np.where(positive, values, np.float32(np.inf)).astype(np.float32)
    merged, count = _dedupe_smallest(np.concatenate([kept, incoming[..., None]], axis=-1), kept.shape[2])
    kept[...] = merged
    n_kept[...] = count


@numba.njit(parallel=True, **_JIT)
def _gain_summary_merge(kept_b: Any, out: Any, n_out: Any) -> None:
    ny, nx, depth = out.shape
    for i in numba.prange(ny):
        for j in range(nx):
            m = 0
            while m < depth and out[i, j, m] != np.inf:
                m += 1
            for t in range(depth):
                v = kept_b[i, j, t]
                if v == np.inf:
                    break
                m = _insert_kept(out, i, j, m, depth, v)
            n_out[i, j] = m


def gain_summary_merge(
    kept_a: npt.NDArray[np.float32], kept_b: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Union of two summaries' kept values, keeping the smallest distinct ones: (kept, n_kept)."""
    if kept_a.shape != kept_b.shape:
        raise ValueError(f"gain summaries of different shapes: {kept_a.shape} vs {kept_b.shape}")
    out = np.array(kept_a, dtype=np.float32, order="C")
    n_out = np.empty(out.shape[:2], dtype=np.uint8)
    _gain_summary_merge(kept_b, out, n_out)
    return out, n_out


def gain_summary_merge_into(
    kept_a: npt.NDArray[np.float32], kept_b: npt.NDArray[np.float32]
) -> npt.NDArray[np.uint8]:
    """:func:`gain_summary_merge` into ``kept_a`` itself (C-contiguous float32): no third array.

    Merging the same ``kept_b`` twice gives the same result (a union of distinct values).
    """
    if kept_a.shape != kept_b.shape:
        raise ValueError(f"gain summaries of different shapes: {kept_a.shape} vs {kept_b.shape}")
    if kept_a.dtype != np.float32 or not kept_a.flags.c_contiguous or not kept_a.flags.writeable:
        raise ValueError("merging in place needs a writable C-contiguous float32 summary")
    n_out = np.empty(kept_a.shape[:2], dtype=np.uint8)
    _gain_summary_merge(kept_b, kept_a, n_out)
    return n_out


def gain_summary_merge_numpy(
    kept_a: npt.NDArray[np.float32], kept_b: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """NumPy twin of :func:`gain_summary_merge`."""
    return _dedupe_smallest(np.concatenate([kept_a, kept_b], axis=-1), kept_a.shape[2])


@numba.njit(inline="always", **_JIT)
def _n_reproduced(kept: Any, i: int, j: int, m: int, g: Any, limit: Any) -> int:
    score = 0
    for t in range(m):
        v = kept[i, j, t]
        n = _count_for(v, g, limit)
        if n >= np.float32(1.0) and _reproduces(v, n, g):
            score += 1
    return score


@numba.njit(parallel=True, **_JIT)
def _gain_finalize(
    kept: Any, n_kept: Any, flags: Any, divisors: Any, steps: Any, limit: Any, gain: Any, status: Any
) -> None:
    ny, nx = n_kept.shape
    for i in numba.prange(ny):
        scratch = np.zeros(1, dtype=np.float32)  # bit casts of a float32 scalar
        scratch_bits = scratch.view(np.uint32)
        for j in range(nx):
            m = np.int64(n_kept[i, j])
            invalid = (flags[i, j] & GAIN_FLAG_INVALID) != 0
            if m == 0:
                gain[i, j] = NEUTRAL_GAIN
                status[i, j] = GAIN_EXCEPTION if invalid else GAIN_UNHIT
                continue
            best = kept[i, j, 0]
            best_score = -1
            found = False
            for base_index in range(min(m, 2)):
                for k in divisors:
                    scratch[0] = np.float32(np.float64(kept[i, j, base_index]) / k)
                    start = np.int64(scratch_bits[0])
                    for step in steps:
                        g_bits = start + step
                        if g_bits <= 0 or g_bits >= _FLOAT32_INF_BITS:
                            continue
                        scratch_bits[0] = np.uint32(g_bits)
                        g = scratch[0]
                        score = _n_reproduced(kept, i, j, m, g, limit)
                        if score > best_score:
                            best = g
                            best_score = score
                        if score == m:
                            found = True
                            break
                    if found:
                        break
                if found:
                    break
            gain[i, j] = best
            if best_score < m or invalid:
                status[i, j] = GAIN_EXCEPTION
            elif m == 1:
                status[i, j] = GAIN_UNCONFIRMED
            else:
                status[i, j] = GAIN_RELIABLE


def gain_finalize(
    kept: npt.NDArray[np.float32], n_kept: npt.NDArray[np.uint8], flags: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Per-pixel float32 gain and status from a gain summary: (gain, status).

    For each pixel the candidates are v/k for the smallest and the second
    smallest kept value v, k = 1..4, and 1-2 float32 ulps around each, in that
    order. The first candidate that reproduces every kept value (some count
    n >= 1 with float32(n * g) == v bit for bit) wins, so the largest fitting
    gain is preferred (g/2 always fits when g does). Without a full fit the
    candidate reproducing most values wins (first one on ties) and the pixel is
    an exception. Status: :data:`GAIN_UNHIT` (no positive value, gain
    :data:`NEUTRAL_GAIN`), :data:`GAIN_RELIABLE` (two or more distinct values
    fit), :data:`GAIN_UNCONFIRMED` (a single distinct value, which fits
    trivially), :data:`GAIN_EXCEPTION` (some value does not fit, or a negative,
    -0.0, NaN or inf value was seen).
    """
    gain = np.empty(n_kept.shape, dtype=np.float32)
    status = np.empty(n_kept.shape, dtype=np.uint8)
    _gain_finalize(
        kept,
        n_kept,
        flags,
        np.array(_GAIN_DIVISORS, dtype=np.int64),
        np.array(_GAIN_ULP_STEPS, dtype=np.int64),
        np.float32(GAIN_COUNT_LIMIT),
        gain,
        status,
    )
    return gain, status


def _count_for_numpy(
    values: npt.NDArray[np.float32], gain: npt.NDArray[np.float32], limit: int
) -> npt.NDArray[np.float32]:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        n = np.rint(values.astype(np.float32) / gain.astype(np.float32))
        n = np.where(n >= 0.5, n, np.float32(0))
        return np.where(n <= limit, n, np.float32(limit)).astype(np.float32)


def _reproduces_numpy(
    values: npt.NDArray[np.float32], counts: npt.NDArray[np.float32], gain: npt.NDArray[np.float32]
) -> npt.NDArray[np.bool_]:
    with np.errstate(invalid="ignore", over="ignore"):
        product = (counts * gain.astype(np.float32)).astype(np.float32)
    return (product == values) & (np.signbit(product) == np.signbit(values))


def gain_finalize_numpy(
    kept: npt.NDArray[np.float32], n_kept: npt.NDArray[np.uint8], flags: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """NumPy twin of :func:`gain_finalize`."""
    m = n_kept.astype(np.int64)
    used = np.arange(kept.shape[2]) < m[..., None]
    best = kept[..., 0].copy()
    best_score = np.full(m.shape, -1, dtype=np.int64)
    found = np.zeros(m.shape, dtype=bool)
    for base_index in range(2):
        base = kept[..., base_index]
        for k in _GAIN_DIVISORS:
            with np.errstate(invalid="ignore"):
                start = (base.astype(np.float64) / k).astype(np.float32).view(np.uint32).astype(np.int64)
            for step in _GAIN_ULP_STEPS:
                g_bits = start + step
                active = ~found & (m > base_index) & (g_bits > 0) & (g_bits < _FLOAT32_INF_BITS)
                g = np.where(active, g_bits, 0).astype(np.uint32).view(np.float32)
                counts = _count_for_numpy(kept, g[..., None], GAIN_COUNT_LIMIT)
                fits = (counts >= 1.0) & _reproduces_numpy(kept, counts, g[..., None]) & used
                score = fits.sum(axis=-1)
                better = active & (score > best_score)
                best = np.where(better, g, best)
                best_score = np.where(better, score, best_score)
                found |= active & (score == m)
    invalid = (flags & GAIN_FLAG_INVALID) != 0
    gain = np.where(m == 0, NEUTRAL_GAIN, best).astype(np.float32)
    status = np.where(m >= 2, GAIN_RELIABLE, GAIN_UNCONFIRMED).astype(np.uint8)
    status[(best_score < m) | invalid] = GAIN_EXCEPTION
    status[(m == 0) & ~invalid] = GAIN_UNHIT
    return gain, status


@numba.njit(parallel=True, **_JIT)
def _gain_counts(values: Any, gain: Any, out: Any, limit: Any, row_exceptions: Any, row_max: Any) -> None:
    ny, nx = values.shape
    for i in numba.prange(ny):
        k = ny - 1 - i
        n_bad = 0
        top = np.float32(0.0)
        for j in range(nx):
            v = values[i, j]
            g = gain[i, j]
            n = _count_for(v, g, limit)
            out[k, j] = n
            exact = _reproduces(v, n, g)
            n_bad += not exact
            top = max(top, n if exact else np.float32(0.0))
        row_exceptions[i] = n_bad
        row_max[i] = top


@numba.njit(parallel=True, **_JIT)
def _gain_collect(
    values: Any, bits: Any, gain: Any, limit: Any, offsets: Any, indices: Any, out_bits: Any
) -> None:
    ny, nx = values.shape
    for i in numba.prange(ny):
        position = offsets[i]
        if offsets[i + 1] == position:
            continue
        for j in range(nx):
            v = values[i, j]
            g = gain[i, j]
            if not _reproduces(v, _count_for(v, g, limit), g):
                indices[position] = i * nx + j
                out_bits[position] = bits[i, j]
                position += 1


class GainCounts(NamedTuple):
    """What :func:`gain_counts` found in a frame under a gain."""

    #: the largest count among the values it reproduces
    max_count: int
    #: the exceptions' (values it does not reproduce) flat MRC-order pixel indices, ascending;
    #: None when not collected (more than ``max_exceptions``)
    indices: npt.NDArray[np.uint32] | None
    #: their exact float32 bits, in the same order; None with ``indices``
    bits: npt.NDArray[np.uint32] | None
    #: how many exceptions there are (collected or not)
    n_exceptions: int


def _check_counting(values: npt.NDArray[Any], gain: npt.NDArray[np.float32], what: str) -> None:
    if values.dtype != np.float32 or gain.dtype != np.float32 or values.shape != gain.shape:
        raise ValueError(f"{what} needs float32 values and gain of the same shape")


def gain_counts(
    values: npt.NDArray[Any],
    gain: npt.NDArray[np.float32],
    out: npt.NDArray[np.unsignedinteger],
    *,
    max_exceptions: int | None = None,
) -> GainCounts:
    """Counts of one float32 frame under a gain, flipped to TIFF row order into ``out``.

    ``values`` and ``gain`` are in MRC row order; ``out`` (uint8 or uint16) gets
    n = rint(v / g) clipped to its range at row ``ny - 1 - y``. Returns the
    largest count among values that are reproduced (float32(n * g) == v bit for
    bit), the values that are not (the exceptions: flat MRC-order pixel indices,
    ascending, and exact float32 bits; both None when there are more than
    ``max_exceptions``, None meaning no limit) and how many there are. With a
    limit, memory is ``out`` and 16 bytes a row whatever the gain (a wrong gain
    makes nearly every value an exception: 8 bytes a pixel if they were listed).
    """
    values = _native(values)
    _check_counting(values, gain, "gain_counts")
    if out.shape != values.shape or out.dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError("gain_counts writes uint8 or uint16 counts of the frame's shape")
    if max_exceptions is not None and max_exceptions < 0:
        raise ValueError(f"max_exceptions must be None or at least 0, not {max_exceptions}")
    ny = values.shape[0]
    limit = np.float32(np.iinfo(out.dtype).max)
    row_exceptions = np.empty(ny, dtype=np.int64)
    row_max = np.empty(ny, dtype=np.float64)
    _gain_counts(values, _native(gain), out, limit, row_exceptions, row_max)
    top = int(row_max.max(initial=0.0))
    offsets = np.zeros(ny + 1, dtype=np.int64)
    np.cumsum(row_exceptions, out=offsets[1:])
    n_exceptions = int(offsets[-1])
    if max_exceptions is not None and n_exceptions > max_exceptions:
        return GainCounts(top, None, None, n_exceptions)
    indices = np.empty(n_exceptions, dtype=np.uint32)
    bits = np.empty(n_exceptions, dtype=np.uint32)
    if indices.size:
        _gain_collect(values, values.view(np.uint32), _native(gain), limit, offsets, indices, bits)
    return GainCounts(top, indices, bits, n_exceptions)


def gain_counts_numpy(
    values: npt.NDArray[Any],
    gain: npt.NDArray[np.float32],
    out: npt.NDArray[np.unsignedinteger],
    *,
    max_exceptions: int | None = None,
) -> GainCounts:
    """NumPy twin of :func:`gain_counts`."""
    values = _native(values)
    counts = _count_for_numpy(values, gain, int(np.iinfo(out.dtype).max))
    exact = _reproduces_numpy(values, counts, gain)
    out[...] = counts[::-1].astype(out.dtype)
    indices = np.flatnonzero(~exact).astype(np.uint32)
    bits = values.reshape(-1).view(np.uint32)[indices]
    top = int(counts[exact].max(initial=0.0))
    if max_exceptions is not None and indices.size > max_exceptions:
        return GainCounts(top, None, None, int(indices.size))
    return GainCounts(top, indices, bits, int(indices.size))


@numba.njit(parallel=True, **_JIT)
def _gain_exception_count(
    values: Any, gain: Any, limit: Any, wide: Any, row_exceptions: Any, row_wider: Any
) -> None:
    ny, nx = values.shape
    for i in numba.prange(ny):
        n_bad = 0
        top = np.float32(0.0)
        for j in range(nx):
            v = values[i, j]
            g = gain[i, j]
            n_wide = _count_for(v, g, wide)
            n = n_wide if n_wide <= limit else limit  # _count_for(v, g, limit): limit <= wide
            exact = _reproduces(v, n, g)
            n_bad += not exact
            wider = (not exact) & _reproduces(v, n_wide, g)
            top = max(top, n_wide if wider else np.float32(0.0))
        row_exceptions[i] = n_bad
        row_wider[i] = top


def gain_exception_count(
    values: npt.NDArray[Any], gain: npt.NDArray[np.float32], *, limit: int = GAIN_COUNT_LIMIT
) -> tuple[int, int]:
    """The exceptions of :func:`gain_counts` with counts up to ``limit``, counted without building anything.

    Returns (the number of values no count 0..``limit`` reproduces, the largest
    count up to :data:`GAIN_COUNT_LIMIT` that reproduces one of them: 0 when
    none does, always 0 when ``limit`` is :data:`GAIN_COUNT_LIMIT`). The first
    is ``gain_counts(values, gain, out).n_exceptions`` for ``out`` of the
    unsigned type whose largest value is ``limit``; the second is what counts
    stored in uint16 would reproduce that uint8 ones do not. Memory: 16 bytes a row.
    """
    values = _native(values)
    _check_counting(values, gain, "gain_exception_count")
    if not 0 <= limit <= GAIN_COUNT_LIMIT:
        raise ValueError(f"the count limit must be within 0..{GAIN_COUNT_LIMIT}, not {limit}")
    ny = values.shape[0]
    row_exceptions = np.empty(ny, dtype=np.int64)
    row_wider = np.empty(ny, dtype=np.float64)
    _gain_exception_count(
        values,
        _native(gain),
        np.float32(limit),
        np.float32(GAIN_COUNT_LIMIT),
        row_exceptions,
        row_wider,
    )
    return int(row_exceptions.sum()), int(row_wider.max(initial=0.0))


def gain_exception_count_numpy(
    values: npt.NDArray[Any], gain: npt.NDArray[np.float32], *, limit: int = GAIN_COUNT_LIMIT
) -> tuple[int, int]:
    """NumPy twin of :func:`gain_exception_count`."""
    values = _native(values)
    exact = _reproduces_numpy(values, _count_for_numpy(values, gain, limit), gain)
    wide = _count_for_numpy(values, gain, GAIN_COUNT_LIMIT)
    wider = ~exact & _reproduces_numpy(values, wide, gain)
    return int(np.count_nonzero(~exact)), int(wide[wider].max(initial=0.0))


@numba.njit(parallel=True, **_JIT)
def _gain_apply(counts: Any, gain: Any, out: Any) -> None:
    ny, nx = out.shape
    for i in numba.prange(ny):
        k = ny - 1 - i
        for j in range(nx):
            out[i, j] = np.float32(counts[k, j]) * gain[i, j]  # float32: the exact product rounded once


def gain_apply(
    counts: npt.NDArray[np.unsignedinteger], gain: npt.NDArray[np.float32], out: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """float32(count * gain) in MRC row order, from counts in TIFF row order (flipped)."""
    if counts.shape != gain.shape or out.shape != gain.shape or out.dtype != np.float32:
        raise ValueError("gain_apply needs counts, gain and a float32 output of one shape")
    _gain_apply(_native(counts), _native(gain), out)
    return out


def gain_apply_numpy(
    counts: npt.NDArray[np.unsignedinteger], gain: npt.NDArray[np.float32], out: npt.NDArray[np.float32]
) -> npt.NDArray[np.float32]:
    """NumPy twin of :func:`gain_apply`."""
    with np.errstate(invalid="ignore", over="ignore"):
        out[...] = counts[::-1].astype(np.float32) * gain.astype(np.float32)
    return out


# ---------------------------------------------------------------- threads

#: Frames smaller than this are processed on one thread: handing a frame between threads costs more than
#: it saves (measured: 1x1 frames 396 s with 2 threads, 21 s with 1; 2048x2048 is where 2 threads win).
SINGLE_THREAD_FRAME_BYTES = 8 << 20


def threads_for_frame_bytes(frame_size_bytes: int, threads: int) -> int:
    """The threads worth using for frames of ``frame_size_bytes``: one for small frames, else ``threads``."""
    return 1 if frame_size_bytes < SINGLE_THREAD_FRAME_BYTES else max(1, threads)


@contextlib.contextmanager
def kernel_threads(threads: int) -> Iterator[int]:
    """Run the Numba kernels on ``threads`` threads inside the block (restored afterwards)."""
    previous = numba.get_num_threads()
    available: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    chosen = max(1, min(threads, available))
    numba.set_num_threads(chosen)
    try:
        yield chosen
    finally:
        numba.set_num_threads(previous)
