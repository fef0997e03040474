"""Frame-sized buffers, reused across a conversion's stages and across the conversions of a process.

A frame buffer above glibc's mmap threshold (32 MiB at most; a super-resolution frame is
94-377 MB) is a mapping of its own: unmapped when freed, mapped afresh and faulted in page by
page when allocated again. On the first touch the kernel zeroes every page, and on a virtual
machine whose balloon driver reports freed memory to its host, the host first faults the
pages back in: measured on our CI machine, 0.13 CPU s per GiB when the memory was freed less
than half a second before, 1.7 s per GiB when freed 10 s or more before
(benchmarks/results-superres.md). A super-resolution conversion touches about 1 GB of frame
buffers, and its verification lasts longer than the host's delay, so every conversion paid
that in full, even in a ``compress`` worker that had just converted a movie of the same size.

So the big buffers of the read pass, the stored frames and the verification come from here.
:func:`frame_buffer` hands out a view of a buffer the process holds; the buffer is free again
as soon as nothing refers to it any more (no array, view or memoryview of it: the reference
count tells, the same rule by which Python itself frees memory). While
:func:`keeping_frame_buffers` is open, free buffers are kept and handed out again (the
smallest that is large enough); once the last such scope closes they are let go.
``convert_movie`` keeps them for its own stages (its verification decodes into the read
pass's buffers); a ``compress`` worker keeps them from its start to its end, so one
conversion reuses the buffers of the one before it. Outside any scope, and for buffers smaller than
:data:`MIN_POOLED_BYTES` (which malloc's heap reuses anyway), :func:`frame_buffer` is
``numpy.empty``.

What this costs in memory: the buffers kept never add up to more than the most the process's
buffers held at once since the scope opened (the *high-water mark*): before a new buffer would
pass it, free ones are let go, smallest first. So a process never holds more than its
conversions already needed. Tasks of another kind that need memory of their own (the gain
steps of ``compress``) call :func:`drop_idle_frame_buffers` first.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import numpy as np
import numpy.typing as npt

__all__ = [
    "MIN_POOLED_BYTES",
    "FrameBufferUsage",
    "drop_idle_frame_buffers",
    "frame_buffer",
    "frame_buffer_usage",
    "keeping_frame_buffers",
]

#: Smaller buffers come from ``numpy.empty`` (glibc's heap serves up to its mmap threshold, 32 MiB at most).
MIN_POOLED_BYTES = 32 << 20


@dataclass(frozen=True)
class FrameBufferUsage:
    """The process's pooled frame buffers, now."""

    in_use_bytes: int  # buffers something still refers to
    idle_bytes: int  # kept for the next taker
    high_water_bytes: int  # the most in use at once since the pool was last emptied
    n_buffers: int


def _references(buffers: list[npt.NDArray[np.uint8]], index: int) -> int:
    """The reference count of ``buffers[index]`` as seen from here (compared with a calibration)."""
    return sys.getrefcount(buffers[index])


class _FramePool:
    """The process-wide pool behind :func:`frame_buffer` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffers: list[npt.NDArray[np.uint8]] = []  # owners; only views of them are handed out
        self._n_keeping = 0
        self._high_water_bytes = 0
        probe = [np.empty(1, dtype=np.uint8)]  # referred to by the list alone: what "free" looks like
        self._free_references = _references(probe, 0)

    def _is_free(self, index: int) -> bool:
        return _references(self._buffers, index) <= self._free_references

    def take(self, n_bytes: int) -> npt.NDArray[np.uint8]:
        """A flat uint8 array of ``n_bytes`` (uninitialised): a view of a pooled buffer when pooling."""
        if n_bytes < MIN_POOLED_BYTES:
            return np.empty(n_bytes, dtype=np.uint8)
        with self._lock:
            if self._n_keeping == 0:
                return np.empty(n_bytes, dtype=np.uint8)
            free = [index for index in range(len(self._buffers)) if self._is_free(index)]
            fitting = [index for index in free if self._buffers[index].size >= n_bytes]
            if fitting:
                best = min(fitting, key=lambda index: self._buffers[index].size)
                return self._buffers[best][:n_bytes]
            total_bytes = sum(int(buffer.size) for buffer in self._buffers)
            free_bytes = sum(int(self._buffers[index].size) for index in free)
            in_use_bytes = total_bytes - free_bytes + n_bytes
            self._high_water_bytes = max(self._high_water_bytes, in_use_bytes)
            # let go of free buffers (none is large enough for this one), smallest first, down to the mark
            dropped: set[int] = set()
            for index in sorted(free, key=lambda index: self._buffers[index].size):
                if total_bytes + n_bytes <= self._high_water_bytes:
                    break
                total_bytes -= int(self._buffers[index].size)
                dropped.add(index)
            self._buffers = [buffer for index, buffer in enumerate(self._buffers) if index not in dropped]
            owner = np.empty(n_bytes, dtype=np.uint8)
            self._buffers.append(owner)
            return owner[:n_bytes]

    @contextlib.contextmanager
    def keeping(self) -> Iterator[None]:
        with self._lock:
            self._n_keeping += 1
        try:
            yield
        finally:
            with self._lock:
                self._n_keeping -= 1
                if self._n_keeping == 0:
                    self._buffers = []  # buffers still in use are freed with their last view
                    self._high_water_bytes = 0

    def drop_idle(self) -> int:
        with self._lock:
            free = {index for index in range(len(self._buffers)) if self._is_free(index)}
            dropped_bytes = sum(int(self._buffers[index].size) for index in free)
            self._buffers = [buffer for index, buffer in enumerate(self._buffers) if index not in free]
            return dropped_bytes

    def usage(self) -> FrameBufferUsage:
        with self._lock:
            free = {index for index in range(len(self._buffers)) if self._is_free(index)}
            sizes = [int(buffer.size) for buffer in self._buffers]
            idle_bytes = sum(sizes[index] for index in free)
            return FrameBufferUsage(
                in_use_bytes=sum(sizes) - idle_bytes,
                idle_bytes=idle_bytes,
                high_water_bytes=self._high_water_bytes,
                n_buffers=len(sizes),
            )


_POOL = _FramePool()


_Scalar = TypeVar("_Scalar", bound=np.generic)


@overload
def frame_buffer(shape: int | tuple[int, ...], dtype: type[_Scalar]) -> npt.NDArray[_Scalar]: ...
@overload
def frame_buffer(shape: int | tuple[int, ...], dtype: np.dtype[_Scalar]) -> npt.NDArray[_Scalar]: ...
@overload
def frame_buffer(shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]: ...
def frame_buffer(shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> npt.NDArray[Any]:
    """An uninitialised C-ordered array of ``shape`` and ``dtype``, like ``numpy.empty``.

    Within :func:`keeping_frame_buffers`, one of :data:`MIN_POOLED_BYTES` or more is a view of a
    buffer the process keeps, reused once nothing refers to the array or any view of it.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n_bytes = math.prod(shape) * dtype.itemsize
    return _POOL.take(n_bytes).view(dtype).reshape(shape)


def keeping_frame_buffers() -> contextlib.AbstractContextManager[None]:
    """Keep free frame buffers for reuse while open (scopes nest; the last one to close lets them go)."""
    return _POOL.keeping()


def drop_idle_frame_buffers() -> int:
    """Let go of the kept buffers nothing uses now (before work that needs memory of its own); bytes freed."""
    return _POOL.drop_idle()


def frame_buffer_usage() -> FrameBufferUsage:
    """What the pool holds now (tests, benchmarks, logs)."""
    return _POOL.usage()
