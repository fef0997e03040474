"""How much memory one compress task needs: the model workers and tasks are sized by.

A conversion streams its movie frame by frame, so its peak memory is a fixed part
(the Python process with NumPy and empcompress imported) plus a small number of
frame buffers, independent of the frame count (issue 10)::

    need = BASE_BYTES + k x working frame bytes

*Working frame bytes* is a frame's pixels times the bytes a pixel takes while it is
converted: 4 for float sources (modes 2 and 12; float16 is counted as float32, which
bounds it), the value size for integer modes (0, 1, 6) and 1 for mode 101 (unpacked
to uint8). ``k`` depends on what the frame may be stored as, which for a float32 source
is known only once the conversion has looked at its values: a task is declared with
the *float-stored* bound (the largest), so that no float movie is under-declared.

Provenance (benchmarks/results-superres.md, peak ``VmHWM`` of one conversion in a fresh
process, imports and a warm-up conversion included; 2026-11-25):

=============================================  ========  =================  ===========
movie                                          peak MiB  working frame MiB  fitted k
=============================================  ========  =================  ===========
4096x4096 float32 counts                          348          64.0         } base 186.7,
11520x8184 float32 counts (8 and 24 frames)      1093         359.7         } k 2.52
11520x8184 mode 101 (stored as uint8)             690          89.9         5.60
11520x8184 non-integer float32, stored float     2207         359.7         5.62
  the same at ``--threads 2``                    2412         359.7         6.19
=============================================  ========  =================  ===========

The constants below round these up: ``BASE_BYTES`` 256 MiB (the fitted 187 MiB process,
rounded up towards what a Dask worker process holds with ``distributed`` loaded,
150-200 MiB on its own); ``K_FLOAT_STORED`` 5.8 plus ``K_PER_EXTRA_THREAD`` 0.6 per
conversion thread beyond the first; ``K_INTEGER`` 5.8; ``K_FLOAT_COUNTS`` 2.6 (a float
movie known to hold counts: used only where that is known, e.g. the scan's prediction
of a counts group). A float32 super-resolution conversion is declared at 2.3 GiB at
``--threads 1``, its counts case measured at 1.07 GiB: the declaration is conservative
by design. Several tasks on one worker each count ``BASE_BYTES``: also conservative.

Other tasks: a copy (alone or in a batch of small files) streams 8 MiB chunks:
:data:`COPY_NEED_BYTES`. Gain-grouping tasks are bounded
by :func:`gain_step_need_bytes`: the frame and the row band the gain is built in.

Workers that empcompress starts advertise a Dask resource ``memory`` equal to their
memory limit (:data:`RESOURCE`); every task declares its need (:func:`task_resources`),
so a worker with several threads runs only as many big conversions at once as fit.

A worker keeps its conversions' frame buffers from one conversion to the next
(:mod:`empcompress.frame_buffers`): never more than its conversions held at once, the idle part
below Dask's spill and pause thresholds (:func:`empcompress.cluster.connect.idle_frame_buffer_bytes`);
gain-grouping tasks, declared without them, let go of them before and after they run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..scan import ACTION_CONVERT, FileEntry

__all__ = [
    "BASE_BYTES",
    "COPY_NEED_BYTES",
    "FrameSize",
    "K_FLOAT_COUNTS",
    "K_FLOAT_STORED",
    "K_INTEGER",
    "K_PER_EXTRA_THREAD",
    "RESOURCE",
    "TaskNeed",
    "conversion_need_bytes",
    "describe_need",
    "describe_task",
    "entry_need",
    "largest_need",
    "GAIN_STEP_BYTES_PER_PIXEL",
    "gain_step_need_bytes",
    "n_fit",
    "task_resources",
    "working_bytes_per_pixel",
]

MIB = 1 << 20
#: The Dask worker resource that carries memory (bytes).
RESOURCE = "memory"
#: The process a conversion runs in (imports included), rounded up to cover a Dask worker process.
BASE_BYTES = 256 * MIB
#: Working frames held by a conversion whose frames may be stored as float (fitted 5.62).
K_FLOAT_STORED = 5.8
#: More working frames per conversion thread beyond the first (fitted 0.57: 2207 -> 2412 MiB).
K_PER_EXTRA_THREAD = 0.6
#: Working frames held by a conversion of an integer source (mode 101 fitted 5.60).
K_INTEGER = 5.8
#: Working frames held by a float movie known to hold counts (fitted 2.52).
K_FLOAT_COUNTS = 2.6
#: A copy: 8 MiB chunks read, hashed and written, with the process's own share counted elsewhere.
COPY_NEED_BYTES = 64 * MIB
FLOAT_MODES = (2, 12)
_INTEGER_BYTES_PER_PIXEL = {0: 1, 1: 2, 6: 2, 101: 1}


@dataclass(frozen=True)
class FrameSize:
    """One movie's frame as the scan read it from the header."""

    width: int
    height: int
    mode: int

    @property
    def n_pixels(self) -> int:
        return max(0, self.width) * max(0, self.height)

    @property
    def is_float(self) -> bool:
        return self.mode in FLOAT_MODES


@dataclass(frozen=True)
class TaskNeed:
    """A task's declared memory, and what it is for (for messages)."""

    need_bytes: int
    rel_path: str = ""
    frame: FrameSize | None = None


def working_bytes_per_pixel(mode: int) -> int:
    """Bytes a pixel takes while a frame of this MRC mode is converted (float16 counted as float32)."""
    if mode in FLOAT_MODES:
        return 4
    return _INTEGER_BYTES_PER_PIXEL.get(mode, 4)


def conversion_need_bytes(frame: FrameSize, *, may_store_float: bool = True, threads: int = 1) -> int:
    """Peak memory of converting one movie with frames of ``frame`` (see the module's model).

    ``may_store_float``: a float source whose storage is not known yet (the default: what
    a task declares); False for a float movie known to hold counts. ``threads``: the
    conversion's own threads (``--threads-per-task``).
    """
    frame_bytes = frame.n_pixels * working_bytes_per_pixel(frame.mode)
    if frame.is_float:
        k = K_FLOAT_STORED + K_PER_EXTRA_THREAD * max(0, threads - 1) if may_store_float else K_FLOAT_COUNTS
    else:
        k = K_INTEGER
    return BASE_BYTES + math.ceil(k * frame_bytes)


#: The gain grouper's steps (:mod:`.gain_groups`, :mod:`.gain_tasks`) and their peak memory above
#: the process, in bytes per pixel of the whole frame (P) and of the tallest row band (Pb):
#: fitted on 11520x8184 float32 movies (benchmarks/results-gain-superres.md, "peak memory per
#: gain task"), where the measured steps peak at 0.5-1.4 GiB.
GAIN_STEP_BYTES_PER_PIXEL: dict[str, tuple[int, int]] = {
    "load-reference": (8, 0),  # a float32 MRC reference read and held
    "candidates": (15, 0),  # fit_candidates_task, per reference: as a fit
    "estimate": (5, 30),  # a movie's own estimate: the banded partial and the finished estimate
    "compare": (21, 0),  # two estimates and one turned (at most; 12 measured)
    "partial": (4, 44),  # one band's partial; whole frames read only for quarter turns
    "merge": (0, 40),  # two band partials, merged into the first
    "finalize": (0, 26),  # a band partial and its band of the gain
    "assemble": (10, 0),  # the bands' gains and statuses into one estimate
    "fit": (15, 0),  # a movie's frames against a gain
    "write": (9, 0),  # the estimate written as a reference MRC
}


def gain_step_need_bytes(step: str, *, n_pixels: int, band_pixels: int) -> int:
    """Declared memory of one gain-grouping task ``step`` on frames of ``n_pixels``.

    ``band_pixels``: pixels of the tallest row band the gain is built in
    (:func:`empcompress.gain.estimate.gain_bands`; the whole frame up to 4096x4096).
    """
    per_pixel, per_band_pixel = GAIN_STEP_BYTES_PER_PIXEL[step]
    return BASE_BYTES + per_pixel * max(0, n_pixels) + per_band_pixel * max(0, band_pixels)


def task_resources(need_bytes: int) -> dict[str, float]:
    """The Dask ``resources=`` of a task needing ``need_bytes``."""
    return {RESOURCE: float(need_bytes)}


def n_fit(memory_bytes: int, need_bytes: int) -> int:
    """How many tasks needing ``need_bytes`` fit at once in ``memory_bytes``."""
    return max(0, int(memory_bytes // max(1, need_bytes)))


def describe_task(need: TaskNeed) -> str:
    """``x/movie.mrc (11520x8184, mode 2)`` (for messages)."""
    what = need.rel_path or "a task"
    if need.frame is not None:
        what += f" ({need.frame.width}x{need.frame.height}, mode {need.frame.mode})"
    return what


def describe_need(need: TaskNeed) -> str:
    """``x/movie.mrc (11520x8184, mode 2) needs about 2.3 GiB`` (for messages)."""
    return f"{describe_task(need)} needs about {need.need_bytes / 2**30:.1f} GiB"


def entry_need(entry: FileEntry, *, threads: int = 1) -> TaskNeed:
    """The declared memory of the task for one scanned file: a conversion, or a copy."""
    if entry.action == ACTION_CONVERT and not entry.header_error and entry.frame_width > 0:
        frame = FrameSize(width=entry.frame_width, height=entry.frame_height, mode=entry.mode)
        return TaskNeed(conversion_need_bytes(frame, threads=threads), entry.rel_path, frame)
    return TaskNeed(COPY_NEED_BYTES, entry.rel_path)


def largest_need(entries: Iterable[FileEntry], *, threads: int = 1) -> TaskNeed | None:
    """The largest task of a drive (None for an empty one)."""
    needs = [entry_need(entry, threads=threads) for entry in entries]
    return max(needs, key=lambda need: (need.need_bytes, need.rel_path), default=None)
