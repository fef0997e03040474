"""The one read of a source movie: sha256, statistics and the frames to store, in one pass.

``convert`` reads every source byte once. Sample frames (the middle one for a plain
conversion; the gain plan's evenly spaced frames for a gain-normalised one) are read
first and held in memory; the storage type and the codec are decided from them.
Then the pass reads the header, the extended header and every frame in file order,
hashing them in that order (sha256 of the whole file), computing each frame's
statistics and handing its values to a :data:`FrameStore`, which makes the frame to
encode (cast to the storage type, :func:`cast_store`, or counted under a gain); when
the pass reaches a held sample frame it takes it from memory instead of reading it
again. So the source is read exactly once, samples included.

If a frame does not fit what was decided from the samples (a count too large for
uint8, a value that is not an integer, more gain exceptions than the record may
hold), the store raises :class:`DecisionOutgrownError`, carrying the statistics seen
so far, and the caller starts again with a wider decision (rare: it costs another read).

Memory: one (``threads`` = 1) or two (hashing on a helper thread) read buffers, the
held samples until the pass reaches each of them, and two stored frames that
:func:`cast_store` fills in turn (the writer is done with a frame before it asks for
the frame two after it: :data:`empcompress.write.FRAMES_IN_FLIGHT`). Nothing grows with
the number of frames, and nothing big is allocated per frame: a buffer over glibc's
mmap threshold (32 MiB at most; a super-resolution frame is 94-377 MB) would be mapped
afresh and zeroed by the kernel on every allocation (measured: 18% of a super-resolution
conversion's CPU time). The buffers come from :mod:`empcompress.frame_buffers`, so that
the verification after the pass, and in a ``compress`` worker the next conversion, reuse them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import numpy as np
import numpy.typing as npt

from . import kernels
from .detect import FrameStats, StorageDecision, decide_storage, frame_stats
from .frame_buffers import frame_buffer
from .mrc import MrcHeader, MrcMovie
from .write import FRAMES_IN_FLIGHT

__all__ = [
    "FrameSample",
    "FrameStore",
    "DecisionOutgrownError",
    "read_sample",
    "read_samples",
    "read_first_frame_ahead",
    "cast_store",
    "SourcePass",
]

ProgressCallback = Callable[[str, int], None]
#: Makes the frame to encode (TIFF row order, storage type) from frame ``index``'s values, given
#: the merged statistics of the frames read so far (this one included); raises
#: :class:`DecisionOutgrownError` when the frame does not fit what was decided before the pass.
#: The array it returns must stay as it is until the store has made the frame two after it (so a
#: store may fill :data:`~empcompress.write.FRAMES_IN_FLIGHT` buffers in turn), no longer.
FrameStore = Callable[[int, npt.NDArray[np.generic], FrameStats], npt.NDArray[np.generic]]


class FrameSample:
    """One frame read ahead of the pass (its raw bytes in their own buffer) and its statistics."""

    def __init__(self, index: int, raw: npt.NDArray[np.uint8], stats: FrameStats) -> None:
        self.index = index
        self.stats = stats
        self._raw: npt.NDArray[np.uint8] | None = raw

    @property
    def raw(self) -> npt.NDArray[np.uint8]:
        if self._raw is None:
            raise ValueError(f"sample frame {self.index} was already handed to the pass")
        return self._raw

    def take(self) -> npt.NDArray[np.uint8]:
        """The raw bytes, once: the sample lets go of them (the pass holds them no longer than needed)."""
        raw = self.raw
        self._raw = None
        return raw

    def release(self) -> None:
        """Let go of the raw bytes (a pass that stopped before reaching this frame)."""
        self._raw = None

    @property
    def size_bytes(self) -> int:
        return 0 if self._raw is None else int(self._raw.size)


def read_sample(movie: MrcMovie, index: int | None = None) -> FrameSample:
    """Read frame ``index`` (the middle one by default) into its own buffer, with its statistics."""
    index = movie.header.nz // 2 if index is None else index
    raw = movie.read_raw_frame(index, out=frame_buffer(movie.header.frame_size_bytes, np.uint8))
    return FrameSample(index, raw, frame_stats(movie.values_from_raw(raw)))


def read_first_frame_ahead(movie: MrcMovie, *, threads: int, samples: Sequence[FrameSample]) -> None:
    """Start reading the first frame a pass with ``threads`` will read, now, in the background.

    For the work between the samples and the pass (the codec trial): a one-thread pass reads into
    the movie's own buffer (:meth:`MrcMovie.read_ahead`), so its first frame is read from the
    disk while the trial encodes instead of after. A pass with more threads reads into its own
    buffers and starts nothing here. Frames of ``samples`` are in memory already.
    """
    if threads > 1:
        return
    held = {sample.index for sample in samples}
    first = next((index for index in range(movie.header.nz) if index not in held), None)
    if first is not None:
        movie.read_ahead(first)


def read_samples(movie: MrcMovie, indices: Sequence[int]) -> list[FrameSample]:
    """Read frames ``indices`` (each once, in file order), each into its own buffer."""
    return [read_sample(movie, index) for index in sorted(set(indices))]


def cast_store(
    header: MrcHeader, decision: StorageDecision, decided_from: FrameStats, *, reuse: bool = True
) -> FrameStore:
    """The plain conversion's store: every frame must keep ``decision`` (made from ``decided_from``,
    the samples' statistics) when its statistics are merged in; cast to its storage type.

    The frames are cast into :data:`~empcompress.write.FRAMES_IN_FLIGHT` buffers in turn (allocated
    on first use; each store, so each pass, has its own): frame ``i``'s array is overwritten by
    frame ``i + FRAMES_IN_FLIGHT``, which only the writer's contract makes safe. ``reuse=False``
    makes a fresh array per frame (tests compare the two).
    """
    stored_dtype = np.dtype(decision.stored_dtype)
    ring: list[npt.NDArray[np.generic]] = []
    made = 0

    def store(index: int, values: npt.NDArray[np.generic], merged: FrameStats) -> npt.NDArray[np.generic]:
        nonlocal made
        now = decide_storage(source_dtype=header.value_dtype, stats=decided_from.merge(merged))
        if (now.stored_dtype, now.is_integer) != (decision.stored_dtype, decision.is_integer):
            raise DecisionOutgrownError(merged, index)
        if not reuse:
            out = np.empty(header.frame_shape, dtype=stored_dtype)
        elif len(ring) < FRAMES_IN_FLIGHT:
            out = frame_buffer(header.frame_shape, stored_dtype)
            ring.append(out)
        else:
            out = ring[made % FRAMES_IN_FLIGHT]
        made += 1
        kernels.flip_cast(values, out)
        return out

    return store


class DecisionOutgrownError(Exception):
    """A frame does not fit the storage type decided from the sample (internal: start again wider)."""

    def __init__(self, stats: FrameStats, index: int) -> None:
        super().__init__(f"frame {index} does not fit the storage type decided from the sample")
        self.stats = stats
        self.index = index


class SourcePass:
    """One pass over a movie: iterate :meth:`stored_frames`; then :attr:`sha256` and :attr:`stats`.

    Use as a context manager (it owns the hashing thread). ``store`` makes each frame
    to encode and checks it fits what was decided before the pass (see
    :data:`FrameStore`); ``samples``, frames read before the pass, are taken from
    memory when the pass reaches them (and let go of then, or when the pass stops).
    """

    def __init__(
        self,
        movie: MrcMovie,
        *,
        store: FrameStore,
        samples: Sequence[FrameSample] = (),
        threads: int,
        progress: ProgressCallback | None,
        header_bytes: bytes,
        extended_header_bytes: bytes,
    ) -> None:
        self.movie = movie
        self.store = store
        self._held = {sample.index: sample for sample in samples}
        self.progress = progress
        self.header_bytes = header_bytes
        self.extended_header_bytes = extended_header_bytes
        self._hasher = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="empcompress-hash") if threads > 1 else None
        )
        self._sha256: str | None = None
        self._stats: FrameStats | None = None
        self.size_bytes = 0

    def __enter__(self) -> SourcePass:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sample in self._held.values():  # a pass stopped before a sample frame lets go of it too
            sample.release()
        self._held = {}
        if self._hasher is not None:
            self._hasher.shutdown(wait=True, cancel_futures=True)

    @property
    def finished(self) -> bool:
        return self._sha256 is not None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            raise RuntimeError(f"{self.movie.path}: the read pass did not reach the end of the movie")
        return self._sha256

    @property
    def stats(self) -> FrameStats:
        if self._stats is None:
            raise RuntimeError(f"{self.movie.path}: the read pass did not reach the end of the movie")
        return self._stats

    def stored_frames(self) -> Iterator[npt.NDArray[np.generic]]:
        """Every frame as ``store`` makes it, in file order (valid until the frame two after it is made).

        Raises :class:`DecisionOutgrownError` (from ``store``) before yielding a frame that
        does not fit.
        """
        movie, header = self.movie, self.movie.header
        digest = hashlib.sha256()
        digest.update(self.header_bytes)
        digest.update(self.extended_header_bytes)
        size_bytes = len(self.header_bytes) + len(self.extended_header_bytes)
        # read buffers only when some frame is read here (not every one is a held sample)
        buffers = (
            [frame_buffer(header.frame_size_bytes, np.uint8) for _ in range(2)]
            if self._hasher and len(self._held) < header.nz
            else []
        )
        hashing: Future[None] | None = None
        merged: FrameStats | None = None
        try:
            for index in range(header.nz):
                held = self._held.pop(index, None)
                if held is not None:
                    raw = held.take()
                else:
                    # buffer index % 2 was last hashed two frames ago, and that hash has been waited for
                    raw = movie.read_raw_frame(index, out=buffers[index % 2] if buffers else None)
                following = index + 1
                while following in self._held:
                    following += 1  # in memory already
                if buffers:
                    movie.prefetch(following)  # read from the disk while this frame is worked on
                if self._hasher is None:
                    digest.update(raw.data)
                else:
                    if hashing is not None:
                        hashing.result()
                    hashing = self._hasher.submit(digest.update, raw.data)
                size_bytes += raw.size
                values = movie.values_from_raw(raw)
                stats = frame_stats(values)
                merged = stats if merged is None else merged.merge(stats)
                out = self.store(index, values, merged)
                del raw, values
                if not buffers:  # done with the movie's own buffer: the next frame is read into it now
                    movie.read_ahead(following)
                yield out
                if self.progress is not None:
                    self.progress("encode", header.frame_size_bytes)
            if hashing is not None:
                hashing.result()
                hashing = None
        finally:
            if hashing is not None:  # stopped early: the helper must be done with our buffer
                hashing.exception()
        assert merged is not None
        self.size_bytes = size_bytes
        self._stats = merged
        self._sha256 = digest.hexdigest()
