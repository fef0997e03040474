"""Frame-sized buffers, reused across a conversion's stages and across the conversions of a process.

A frame buffer above glibc's mmap threshold (32 MiB at most; a super-resolution frame is
94-377 MB) is a mapping of its own: unmapped when freed, mapped afresh and faulted in page by
page when allocated again. On the first touch the kernel zeroes every page, and on a virtual
machine whose balloon driver reports freed memory to its host, the host first faults the
pages back in: measured on the machine our benchmarks run on, 0.13 CPU s per GiB when the
memory was freed less than half a second before, 1.7 s per GiB when freed 10 s or more before
(benchmarks/results-superres.md). A super-resolution conversion touches about 1 GB of frame
buffers, and its verification lasts longer than the host's delay, so every conversion paid
that in full, even in a ``compress`` worker that had just converted a movie of the same size.

So the big buffers of the read pass, the stored frames and the verification come from here.
:func:`frame_buffer` hands out a view of a buffer the process holds; the buffer is free again
as soon as nothing refers to it any more (no array, view or memoryview of it: the reference
count tells, the same rule by which Python itself frees memory). While
:func:`keeping_frame_buffers` is open, free buffers are kept and handed out again (for a request
of the same size); once the last such scope closes they are let go.
``convert_movie`` keeps them for its own stages (its verification decodes into the read
pass's buffers); a ``compress`` worker keeps them from its start to its end, so one
conversion reuses the buffers of the one before it. Outside any scope, and for buffers smaller than
:data:`MIN_POOLED_BYTES` (which malloc's heap reuses anyway), :func:`frame_buffer` is
``numpy.empty``.

What this costs in memory. A kept buffer serves only requests of its own size (frame sizes
repeat: every frame of a movie, every movie of a session; a larger buffer serving a smaller
request would make the next request of its size allocate anew, and the pool grow). A request
that finds no free buffer of its size (a new movie size, or a stage the free ones do not fit)
first lets go of every free buffer: so the pool never holds more than the buffers in use at
once (its *high-water mark*), and a worker that moves on to movies of another size does not
keep the old ones. A scope may bound the idle part further (``max_idle_bytes``: a ``compress``
worker keeps it below its memory manager's thresholds, see
:func:`empcompress.cluster.connect.idle_frame_buffer_bytes`); that bound is applied when a scope
inside it closes (each conversion's own) and by :func:`trim_idle_frame_buffers`, which a
worker's conversion tasks call when they end. A stage that lets go of a buffer to bound its
memory (the samples a gain-normalised conversion does not hold through its pass) says so with
:func:`forget_frame_buffer`. Tasks of another kind that need memory of their own (the gain
steps of ``compress``) call :func:`drop_idle_frame_buffers`.

Fail closed: a buffer that is handed out again holds what it held before, possibly source bytes
(a sample frame). Arrays whose values are checked afterwards (verification's rebuilt frames)
are taken ``poisoned``, so that a stage that failed to write some values cannot pass with bytes
left over from the source.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, overload

import numpy as np
import numpy.typing as npt

from .malloc_policy import POLICY

__all__ = [
    "MIN_POOLED_BYTES",
    "POISON_BYTE",
    "FrameBufferUsage",
    "drop_idle_frame_buffers",
    "dropping_idle_frame_buffers",
    "forget_frame_buffer",
    "frame_buffer",
    "frame_buffer_usage",
    "keeping_frame_buffers",
    "trim_idle_frame_buffers",
    "trimming_idle_frame_buffers",
]

#: Smaller buffers come from ``numpy.empty``: glibc's heap serves them (up to its mmap threshold).
MIN_POOLED_BYTES = POLICY.mmap_threshold_bytes
#: What a ``poisoned`` buffer is filled with: NaN as float32, 255 as uint8, -1 as int16; never what a
#: kept buffer held before (a sample frame's source bytes, a frame stored before).
POISON_BYTE = 0xFF


@dataclass(frozen=True)
class FrameBufferUsage:
    """The process's pooled frame buffers, now."""

    in_use_bytes: int  # buffers something still refers to
    idle_bytes: int  # kept for the next taker
    high_water_bytes: int  # the most in use at once since the pool was last emptied
    n_buffers: int
    n_allocated: int  # buffers allocated since the pool was last emptied (the rest of the takes reused one)


def _references(buffers: list[npt.NDArray[np.uint8]], index: int) -> int:
    """The reference count of ``buffers[index]`` as seen from here (compared with a calibration)."""
    return sys.getrefcount(buffers[index])


class _FramePool:
    """The process-wide pool behind :func:`frame_buffer` (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffers: list[npt.NDArray[np.uint8]] = []  # owners; only views of them are handed out
        self._scope_caps: list[int | None] = []  # each open scope's max_idle_bytes
        self._high_water_bytes = 0
        self._n_allocated = 0
        probe = [np.empty(1, dtype=np.uint8)]  # referred to by the list alone: what "free" looks like
        self._free_references = _references(probe, 0)

    def _is_free(self, index: int) -> bool:
        return _references(self._buffers, index) <= self._free_references

    def _idle_cap_bytes(self) -> int | None:
        caps = [cap for cap in self._scope_caps if cap is not None]
        return min(caps) if caps else None

    def _drop(self, indices: set[int]) -> list[npt.NDArray[np.uint8]]:
        """Take ``indices`` out of the pool; the caller lets go of what is returned outside the lock."""
        dropped = [buffer for index, buffer in enumerate(self._buffers) if index in indices]
        self._buffers = [buffer for index, buffer in enumerate(self._buffers) if index not in indices]
        return dropped

    def _over_cap(self, free: list[int]) -> set[int]:
        """Free buffers to drop so that the idle ones stay within the scopes' cap: the largest that fit
        are kept (the ones whose allocation costs the most)."""
        budget_bytes = self._idle_cap_bytes()
        if budget_bytes is None:
            return set()
        dropping: set[int] = set()
        for index in sorted(free, key=lambda index: int(self._buffers[index].size), reverse=True):
            size_bytes = int(self._buffers[index].size)
            if size_bytes > budget_bytes:
                dropping.add(index)
            else:
                budget_bytes -= size_bytes
        return dropping

    def _free(self) -> list[int]:
        return [index for index in range(len(self._buffers)) if self._is_free(index)]

    def take(self, n_bytes: int) -> npt.NDArray[np.uint8]:
        """A flat uint8 array of ``n_bytes`` (uninitialised): a view of a pooled buffer when pooling."""
        if n_bytes < MIN_POOLED_BYTES or not _GIL:
            return np.empty(n_bytes, dtype=np.uint8)
        with self._lock:
            if not self._scope_caps:
                return np.empty(n_bytes, dtype=np.uint8)
            free = self._free()
            same_size = next((index for index in free if self._buffers[index].size == n_bytes), None)
            if same_size is not None:
                return self._buffers[same_size][:n_bytes]
            # a size none of the free ones has: a new movie or a stage they do not fit; let go of them
            dropped = self._drop(set(free))
            owner = np.empty(n_bytes, dtype=np.uint8)
            self._buffers.append(owner)
            self._n_allocated += 1
            in_use_bytes = sum(int(buffer.size) for buffer in self._buffers)
            self._high_water_bytes = max(self._high_water_bytes, in_use_bytes)
            taken = owner[:n_bytes]
        del dropped  # (unmapped here, outside the lock)
        return taken

    def trim_idle(self) -> int:
        with self._lock:
            dropped = self._drop(self._over_cap(self._free()))
        dropped_bytes = sum(int(buffer.size) for buffer in dropped)
        del dropped
        return dropped_bytes

    @contextlib.contextmanager
    def keeping(self, max_idle_bytes: int | None) -> Iterator[None]:
        with self._lock:
            self._scope_caps.append(max_idle_bytes)
        try:
            yield
        finally:
            with self._lock:
                self._scope_caps.remove(max_idle_bytes)
                if not self._scope_caps:
                    dropped = self._buffers  # buffers still in use are freed with their last view
                    self._buffers = []
                    self._high_water_bytes = 0
                    self._n_allocated = 0
                else:  # the scopes left open may keep less
                    dropped = self._drop(self._over_cap(self._free()))
            del dropped

    def drop_idle(self) -> int:
        with self._lock:
            dropped = self._drop(set(self._free()))
            self._high_water_bytes = sum(int(buffer.size) for buffer in self._buffers)  # all in use
        dropped_bytes = sum(int(buffer.size) for buffer in dropped)
        del dropped
        return dropped_bytes

    def forget(self, array: npt.NDArray[Any]) -> bool:
        with self._lock:
            owners = {id(buffer) for buffer in self._buffers}
            base: Any = array
            while base is not None and id(base) not in owners:  # up the chain of views to a kept buffer
                base = base.base if isinstance(base, np.ndarray) else None
            n_before = len(self._buffers)
            self._buffers = [buffer for buffer in self._buffers if buffer is not base]
            return len(self._buffers) < n_before

    def usage(self) -> FrameBufferUsage:
        with self._lock:
            free = set(self._free())
            sizes = [int(buffer.size) for buffer in self._buffers]
            idle_bytes = sum(sizes[index] for index in free)
            return FrameBufferUsage(
                in_use_bytes=sum(sizes) - idle_bytes,
                idle_bytes=idle_bytes,
                high_water_bytes=self._high_water_bytes,
                n_buffers=len(sizes),
                n_allocated=self._n_allocated,
            )


#: Reference counts tell whether a buffer is free only where the GIL serialises them (not in a
#: free-threaded build): elsewhere every buffer comes from ``numpy.empty``.
_GIL = bool(getattr(sys, "_is_gil_enabled", lambda: True)())
_POOL = _FramePool()

_Scalar = TypeVar("_Scalar", bound=np.generic)


@overload
def frame_buffer(
    shape: int | tuple[int, ...], dtype: type[_Scalar], *, poisoned: bool = False
) -> npt.NDArray[_Scalar]: ...
@overload
def frame_buffer(
    shape: int | tuple[int, ...], dtype: np.dtype[_Scalar], *, poisoned: bool = False
) -> npt.NDArray[_Scalar]: ...
@overload
def frame_buffer(
    shape: int | tuple[int, ...], dtype: npt.DTypeLike, *, poisoned: bool = False
) -> npt.NDArray[Any]: ...
def frame_buffer(
    shape: int | tuple[int, ...], dtype: npt.DTypeLike, *, poisoned: bool = False
) -> npt.NDArray[Any]:
    """An uninitialised C-ordered array of ``shape`` and ``dtype``, like ``numpy.empty``.

    Within :func:`keeping_frame_buffers`, one of :data:`MIN_POOLED_BYTES` or more is a view of a
    buffer the process keeps, reused once nothing refers to the array or any view of it.
    ``poisoned``: every byte :data:`POISON_BYTE` instead, for an array whose values are checked
    afterwards (a rebuilt source frame): a stage that fails to write some values then leaves bytes
    no source holds by chance, never what a kept buffer held before (a source frame read earlier).
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n_bytes = math.prod(shape) * dtype.itemsize
    flat = _POOL.take(n_bytes)
    if poisoned:
        flat.fill(POISON_BYTE)
    return flat.view(dtype).reshape(shape)


def keeping_frame_buffers(*, max_idle_bytes: int | None = None) -> contextlib.AbstractContextManager[None]:
    """Keep free frame buffers for reuse while open (scopes nest; the last one to close lets them go).

    ``max_idle_bytes``: at most this many bytes of buffers nothing uses are kept while this scope is
    open (a worker's bound, below its memory manager's thresholds); applied when a scope inside this
    one closes and by :func:`trim_idle_frame_buffers`.
    """
    return _POOL.keeping(max_idle_bytes)


def drop_idle_frame_buffers() -> int:
    """Let go of the kept buffers nothing uses now (before work that needs memory of its own); bytes freed."""
    return _POOL.drop_idle()


def forget_frame_buffer(array: npt.NDArray[Any]) -> bool:
    """Never hand out ``array``'s buffer again: it is freed with its last reference, as ``numpy.empty``'s
    would be (for a buffer let go of early to bound a stage's memory, e.g. a sample not held).
    False when ``array`` is not a view of a kept buffer (nothing to do)."""
    return _POOL.forget(array)


def trim_idle_frame_buffers() -> int:
    """Let go of idle buffers beyond the open scopes' ``max_idle_bytes`` (when a task ends: buffers it
    still used when its own scope closed are idle now); bytes freed."""
    return _POOL.trim_idle()


def frame_buffer_usage() -> FrameBufferUsage:
    """What the pool holds now (tests, benchmarks, logs)."""
    return _POOL.usage()


_Arguments = ParamSpec("_Arguments")
_Result = TypeVar("_Result")


def trimming_idle_frame_buffers(task: Callable[_Arguments, _Result]) -> Callable[_Arguments, _Result]:
    """``task``, after which idle buffers are cut to the open scopes' bound (a worker's conversion tasks)."""

    @functools.wraps(task)
    def trimming(*args: _Arguments.args, **kwargs: _Arguments.kwargs) -> _Result:
        try:
            return task(*args, **kwargs)
        finally:
            trim_idle_frame_buffers()

    return trimming


def dropping_idle_frame_buffers(task: Callable[_Arguments, _Result]) -> Callable[_Arguments, _Result]:
    """``task``, before and after which every idle buffer is let go (a task whose declared memory does
    not count what the conversions keep, and whose own buffers no conversion reuses)."""

    @functools.wraps(task)
    def dropping(*args: _Arguments.args, **kwargs: _Arguments.kwargs) -> _Result:
        drop_idle_frame_buffers()
        try:
            return task(*args, **kwargs)
        finally:
            drop_idle_frame_buffers()

    return dropping
