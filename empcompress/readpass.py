"""The one read of a source movie: sha256, statistics and the frames to store, in one pass.

``convert`` reads every source byte once. A sample frame (the middle one) is read
first and held in memory; the storage type and the codec are decided from it.
Then the pass reads the header, the extended header and every frame in file order,
hashing them in that order (sha256 of the whole file), computing each frame's
statistics and casting it to the storage type for the encoder; when the pass
reaches the sample frame it takes it from memory instead of reading it again. So
the source is read exactly once, sample included.

If a frame does not fit the storage type decided from the sample (a count too large
for uint8, a value that is not an integer), the pass stops with
:class:`DecisionOutgrownError`, carrying the statistics seen so far, and the caller
starts again with a wider type (rare: it costs another read).

Memory: one (``threads`` = 1) or two (hashing on a helper thread) read buffers, the
held sample until the pass reaches it, and a fresh stored frame per frame (the
encoder keeps one in flight). Nothing grows with the number of frames.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import numpy as np
import numpy.typing as npt

from . import kernels
from .detect import FrameStats, StorageDecision, decide_storage, frame_stats
from .mrc import MrcMovie

__all__ = ["FrameSample", "DecisionOutgrownError", "read_sample", "SourcePass"]

ProgressCallback = Callable[[str, int], None]


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


def read_sample(movie: MrcMovie) -> FrameSample:
    """Read the middle frame into its own buffer, with its statistics."""
    index = movie.header.nz // 2
    raw = movie.read_raw_frame(index, out=np.empty(movie.header.frame_size_bytes, dtype=np.uint8))
    return FrameSample(index, raw, frame_stats(movie.values_from_raw(raw)))


class DecisionOutgrownError(Exception):
    """A frame does not fit the storage type decided from the sample (internal: start again wider)."""

    def __init__(self, stats: FrameStats, index: int) -> None:
        super().__init__(f"frame {index} does not fit the storage type decided from the sample")
        self.stats = stats
        self.index = index


class SourcePass:
    """One pass over a movie: iterate :meth:`stored_frames`; then :attr:`sha256` and :attr:`stats`.

    Use as a context manager (it owns the hashing thread). ``decision`` is the
    storage type every frame must fit, made from the statistics ``decided_from``
    (the sample's); ``sample``, if given, is taken from memory when the pass
    reaches its frame.
    """

    def __init__(
        self,
        movie: MrcMovie,
        *,
        decision: StorageDecision,
        decided_from: FrameStats,
        sample: FrameSample | None,
        threads: int,
        progress: ProgressCallback | None,
        header_bytes: bytes,
        extended_header_bytes: bytes,
    ) -> None:
        self.movie = movie
        self.decision = decision
        self.decided_from = decided_from
        self.sample = sample
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
        self.sample = None  # a pass stopped before the sample frame lets go of it too
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

    def _fits(self, stats: FrameStats) -> bool:
        """Whether the frames so far fit the decision (made from ``decided_from``): it stays the same."""
        header = self.movie.header
        now = decide_storage(source_dtype=header.value_dtype, stats=self.decided_from.merge(stats))
        return (now.stored_dtype, now.is_integer) == (self.decision.stored_dtype, self.decision.is_integer)

    def stored_frames(self) -> Iterator[npt.NDArray[np.generic]]:
        """Every frame in TIFF row order and the storage type (a fresh array per frame), in file order.

        Raises :class:`DecisionOutgrownError` before yielding a frame that does not fit.
        """
        movie, header = self.movie, self.movie.header
        stored_dtype = np.dtype(self.decision.stored_dtype)
        digest = hashlib.sha256()
        digest.update(self.header_bytes)
        digest.update(self.extended_header_bytes)
        size_bytes = len(self.header_bytes) + len(self.extended_header_bytes)
        buffers = (
            [np.empty(header.frame_size_bytes, dtype=np.uint8) for _ in range(2)] if self._hasher else []
        )
        hashing: Future[None] | None = None
        merged: FrameStats | None = None
        try:
            for index in range(header.nz):
                if self.sample is not None and index == self.sample.index:
                    raw = self.sample.take()
                else:
                    # buffer index % 2 was last hashed two frames ago, and that hash has been waited for
                    raw = movie.read_raw_frame(index, out=buffers[index % 2] if buffers else None)
                following = index + 1
                if self.sample is not None and following == self.sample.index:
                    following += 1  # in memory already
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
                if not self._fits(merged):
                    raise DecisionOutgrownError(merged, index)
                out = np.empty(header.frame_shape, dtype=stored_dtype)
                kernels.flip_cast(values, out)
                del raw, values
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
