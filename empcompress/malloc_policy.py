"""The glibc malloc policy of a process that converts movies: fixed mmap and trim thresholds.

glibc serves an allocation at or above its *mmap threshold* with a mapping of its own, which
the kernel zeroes page by page on first touch and which is unmapped again when freed; smaller
ones come from the heap, whose free top is handed back to the kernel once it passes the *trim
threshold*. The mmap threshold starts at 128 KiB and rises (to 32 MiB at most) only when the
process frees a mapped block, the trim threshold with it (twice the mmap threshold). So the
same strip-sized allocations (a decoded strip, the Huffman encoder's output, a piece of a page
read from disk: 0.5-4 MiB) cost system calls and freshly zeroed pages on every strip or none,
depending on what the process happened to free before: a 4096x4096 conversion frees 16 MiB
frames early and lifts both thresholds, an 11520x8184 one (frames of 94-377 MB, above the cap)
may not. And Dask's nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which fixes
the trim threshold at 64 KiB and turns the rising mmap threshold off (128 KiB for good).

The policy, decided once when a converting process starts (the CLI's ``convert``, ``verify`` and
``restore``, and every Dask worker empcompress sets up): where the environment has turned glibc's
adaptive rule off (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TOP_PAD_``,
``MALLOC_MMAP_MAX_`` or their ``GLIBC_TUNABLES``), both thresholds are set to where that rule ends
at most: mmap threshold 32 MiB (the largest glibc accepts on 64-bit systems), trim threshold 64
MiB. Measured in a nanny's environment (benchmarks/results-superres.md): a 4096x4096 conversion's
system time fell by 59-63%, its CPU time by 17-18%. Otherwise glibc's own rule is left alone:
fixing the thresholds in a process where it still adapts gained nothing measurable and may cost a
few percent of CPU (heap memory in 4 KiB pages instead of fresh mappings in huge pages). Frame
buffers above 32 MiB stay mapped either way; the conversion reuses them instead
(:mod:`empcompress.frame_buffers`). What the policy costs in memory: up
to 64 MiB of freed heap kept per malloc arena instead of handed back. Without glibc (musl, macOS)
nothing is changed.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "MallocPolicy",
    "POLICY",
    "PINNING_VARIABLES",
    "adaptive_rule_turned_off",
    "apply_malloc_policy",
    "applied_malloc_policy",
    "heap_serves",
]

#: mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Settings by which the environment fixes a glibc malloc parameter, turning the adaptive thresholds off.
PINNING_VARIABLES = (
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TOP_PAD_",
    "MALLOC_MMAP_MAX_",
)
_PINNING_TUNABLES = (
    "glibc.malloc.trim_threshold",
    "glibc.malloc.mmap_threshold",
    "glibc.malloc.top_pad",
    "glibc.malloc.mmap_max",
)


@dataclass(frozen=True)
class MallocPolicy:
    """The thresholds a converting process runs with."""

    mmap_threshold_bytes: int  # allocations from this size up get a mapping of their own
    trim_threshold_bytes: int  # the heap keeps up to this much freed memory at its top


#: glibc's dynamic rule at its ceiling on 64-bit systems (mmap threshold <= 32 MiB, trim = 2 x mmap).
POLICY = MallocPolicy(mmap_threshold_bytes=32 << 20, trim_threshold_bytes=64 << 20)

_LOCK = threading.Lock()
_applied: MallocPolicy | None = None


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc() -> ctypes.CDLL | None:
    """The C library of this process if it is glibc (it names its version), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return None  # musl and others: their mallopt, if any, is not glibc's
    return libc


def adaptive_rule_turned_off(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default: this process's) fixes a glibc malloc parameter, which turns
    glibc's adaptive mmap and trim thresholds off for the whole process (Dask's nanny does)."""
    environ = os.environ if environ is None else environ
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(name in environ for name in PINNING_VARIABLES) or any(
        name in tunables for name in _PINNING_TUNABLES
    )


def apply_malloc_policy() -> MallocPolicy | None:
    """Set :data:`POLICY` for this whole process where its environment turned glibc's adaptive
    thresholds off (once; later calls change nothing).

    Returns the policy in effect, or None where glibc's own rule is kept (the environment left it
    adaptive) or the C library is not glibc (nothing changed).
    """
    global _applied
    with _LOCK:
        if _applied is not None:
            return _applied
        if not adaptive_rule_turned_off():
            return None
        libc = _glibc()
        if libc is None:
            return None
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        if not libc.mallopt(_M_MMAP_THRESHOLD, POLICY.mmap_threshold_bytes):
            return None  # refused (a glibc with a smaller ceiling): leave its own rule in place
        libc.mallopt(_M_TRIM_THRESHOLD, POLICY.trim_threshold_bytes)
        _applied = POLICY
        return _applied


def applied_malloc_policy() -> MallocPolicy | None:
    """The policy :func:`apply_malloc_policy` set in this process, or None."""
    return _applied


def heap_serves(size_bytes: int) -> bool | None:
    """Whether glibc serves an allocation of ``size_bytes`` from its heap (not a mapping of its own)
    in this process now: a diagnostic (tests, benchmarks). None where the C library is not glibc.
    Asking changes the answer where glibc adapts: freeing the mapped block lifts its threshold."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free.restype = None
    before = libc.mallinfo2().hblks
    block = libc.malloc(size_bytes)
    if not block:
        raise MemoryError(f"malloc({size_bytes}) failed")
    try:
        return bool(libc.mallinfo2().hblks == before)
    finally:
        libc.free(block)
