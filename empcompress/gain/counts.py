"""Counts of a movie under a gain: the read pass's counter (it also makes the frames to store)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..errors import GainError
from .exception_list import GainExceptions
from .limits import MAX_EXCEPTION_FRACTION


@dataclass(frozen=True, eq=False)
class GainCountSurvey:
    """What a movie's values look like under a gain (from :class:`GainCounter`)."""

    n_values: int
    n_exceptions: int
    max_count: int
    exceptions: GainExceptions | None  # None when abandoned (too many to keep)
    stored_dtype: str | None  # uint8 / uint16, None when refused
    reason: str

    @property
    def accepted(self) -> bool:
        return self.stored_dtype is not None

    @property
    def exception_fraction(self) -> float:
        return self.n_exceptions / max(1, self.n_values)


class GainCounter:
    """Counts of each frame under a gain, fed frame by frame (in the read pass).

    Collects the exceptions while they stay under the threshold for the whole
    movie (so the list never outgrows what the record may hold: at most
    :data:`MAX_EXCEPTION_FRACTION` of the movie's values, 8 bytes each); past
    it, only counts them (the movie will be refused anyway), and a frame that
    would pass it is counted without building its list.
    """

    def __init__(self, gain: npt.NDArray[np.float32], *, n_frames: int, reference_name: str) -> None:
        self.gain = np.ascontiguousarray(gain, dtype=np.float32)
        self.n_frames = n_frames
        self.reference_name = reference_name
        self._scratch: npt.NDArray[np.uint16] | None = None
        self.limit = int(MAX_EXCEPTION_FRACTION * n_frames * self.gain.size)
        self._indices: list[npt.NDArray[np.uint32]] = [np.empty(0, np.uint32)] * n_frames
        self._bits: list[npt.NDArray[np.uint32]] = [np.empty(0, np.uint32)] * n_frames
        self._seen = [False] * n_frames
        self.n_exceptions = 0
        self.max_count = 0
        self.n_values = 0
        self._clipped_at = kernels.GAIN_COUNT_LIMIT  # the smallest type counted into so far

    def add(
        self,
        index: int,
        values: npt.NDArray[np.generic],
        out: npt.NDArray[np.unsignedinteger] | None = None,
    ) -> None:
        """Count frame ``index``; its counts (TIFF row order, clipped to ``out``'s type) go to ``out``.

        With ``out`` of uint8, a value whose count is reproduced only past 255 is not taken
        for an exception: it raises :attr:`max_count` past 255 (so uint8 no longer fits).
        """
        if values.shape != self.gain.shape:
            raise GainError(
                f"movie frames of {values.shape[1]}x{values.shape[0]} do not match the gain reference "
                f"{self.reference_name} of {self.gain.shape[1]}x{self.gain.shape[0]}"
            )
        if out is None:
            if self._scratch is None:
                self._scratch = np.empty(self.gain.shape, dtype=np.uint16)
            out = self._scratch
        # the frame's exceptions are collected only while the movie's stay within the limit (past
        # it they are not kept): a wrong gain makes nearly every value one, 8 bytes a pixel
        room = max(0, self.limit - self.n_exceptions)
        counted = kernels.gain_counts(values, self.gain, out, max_exceptions=room)
        top = counted.max_count
        clipped_at = int(np.iinfo(out.dtype).max)
        self._clipped_at = min(self._clipped_at, clipped_at)
        if clipped_at < kernels.GAIN_COUNT_LIMIT and counted.n_exceptions:
            # clipped to uint8: which of these would a uint16 count reproduce?
            exceptions: npt.NDArray[np.generic]
            if counted.indices is not None and counted.bits is not None:  # the exceptions alone
                exceptions = counted.bits.view(np.float32)[None, :]
                gain = self.gain.reshape(-1)[counted.indices][None, :]
            else:  # not collected: the whole frame (counted again, without collecting)
                exceptions, gain = values, self.gain
            _, wider = kernels.gain_exception_count(exceptions, gain, limit=clipped_at)
            top = max(top, wider)
        self.max_count = max(self.max_count, top)
        self.n_exceptions += counted.n_exceptions
        self.n_values += int(values.size)
        self._seen[index] = True
        if self.n_exceptions <= self.limit:
            assert counted.indices is not None and counted.bits is not None  # within the room left
            self._indices[index] = counted.indices
            self._bits[index] = counted.bits

    @property
    def over_limit(self) -> bool:
        """More exceptions than a movie may have to keep the gain (it is refused whatever follows)."""
        return self.n_exceptions > self.limit

    def fits(self, stored_dtype: str | np.dtype) -> bool:
        """Whether the frames so far keep the gain with counts stored as ``stored_dtype``."""
        return not self.over_limit and self.max_count <= np.iinfo(np.dtype(stored_dtype)).max

    @property
    def stored_dtype(self) -> str | None:
        """The counts' storage type the frames so far need (None: the gain cannot be kept)."""
        if self.over_limit or self.max_count > kernels.GAIN_COUNT_LIMIT:
            return None
        return "uint8" if self.max_count <= 255 else "uint16"

    def survey(self) -> GainCountSurvey:
        fraction = self.n_exceptions / max(1, self.n_values)
        if not all(self._seen):
            raise GainError("the gain survey did not see every frame")
        if self.max_count > self._clipped_at:  # its exceptions include counts the type clipped
            raise RuntimeError(f"counts past {self._clipped_at} were counted into a narrower type")
        if self.n_exceptions > self.limit:
            return GainCountSurvey(
                self.n_values,
                self.n_exceptions,
                self.max_count,
                None,
                None,
                f"{self.reference_name} does not reproduce {self.n_exceptions} values "
                f"({100 * fraction:.3f}%, more than the {100 * MAX_EXCEPTION_FRACTION:g}% allowed): "
                f"not counts x this gain (another session's gain, or not gain-normalised)",
            )
        if self.max_count > kernels.GAIN_COUNT_LIMIT:
            return GainCountSurvey(
                self.n_values, self.n_exceptions, self.max_count, None, None, "counts do not fit uint16"
            )
        stored = "uint8" if self.max_count <= 255 else "uint16"
        exceptions = GainExceptions(tuple(self._indices), tuple(self._bits))
        return GainCountSurvey(
            self.n_values,
            self.n_exceptions,
            self.max_count,
            exceptions,
            stored,
            f"float32 gain-normalised: counts 0..{self.max_count} x {self.reference_name}, stored as "
            f"{stored}; {self.n_exceptions} exception values ({100 * fraction:.4f}%) kept exactly "
            "in the record",
        )
