"""The exact values a gain does not reproduce, kept per frame in the TIFF's record."""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..errors import GainError


@dataclass(frozen=True, eq=False)
class GainExceptions:
    """Per frame: the MRC-order flat indices and exact float32 bits of values not reproduced."""

    indices: tuple[npt.NDArray[np.uint32], ...]
    bits: tuple[npt.NDArray[np.uint32], ...]

    @property
    def n_exceptions(self) -> int:
        return sum(int(part.size) for part in self.indices)

    @property
    def n_frames(self) -> int:
        return len(self.indices)

    def encode(self) -> str:
        counts = np.array([part.size for part in self.indices], dtype="<u4")
        deltas = [np.diff(part.astype(np.int64), prepend=0).astype("<u4") for part in self.indices]
        chunks = [
            counts.tobytes(),
            *(d.tobytes() for d in deltas),
            *(b.astype("<u4").tobytes() for b in self.bits),
        ]
        return base64.b64encode(zlib.compress(b"".join(chunks), 9)).decode("ascii")

    @staticmethod
    def encoded_size_bound(*, n_frames: int, n_exceptions: int) -> int:
        """The longest :meth:`encode` text of ``n_exceptions`` values in ``n_frames`` frames (characters).

        zlib's own bound (``compressBound``) of the raw arrays, then base64's 4 characters per 3 bytes.
        """
        raw = 4 * (n_frames + 2 * n_exceptions)
        compressed = raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13
        return 4 * -(-compressed // 3)

    @classmethod
    def decode(cls, text: str, *, n_frames: int, n_pixels: int, name: str) -> GainExceptions:
        try:
            raw = np.frombuffer(zlib.decompress(base64.b64decode(text, validate=True)), dtype="<u4")
        except (ValueError, zlib.error):
            raise GainError(f"{name}: the exception list in the record is damaged") from None
        counts = raw[:n_frames].astype(np.int64)
        total = int(counts.sum())
        if counts.size != n_frames or raw.size != n_frames + 2 * total:
            raise GainError(f"{name}: the exception list in the record does not match its {n_frames} frames")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        deltas = raw[n_frames : n_frames + total]
        values = raw[n_frames + total :]
        indices = []
        bits = []
        for frame in range(n_frames):
            start, stop = int(offsets[frame]), int(offsets[frame + 1])
            flat = np.cumsum(deltas[start:stop].astype(np.int64))
            if flat.size and (flat[-1] >= n_pixels or np.any(np.diff(flat) <= 0)):
                raise GainError(f"{name}: the exception list of frame {frame} is damaged")
            indices.append(flat.astype(np.uint32))
            bits.append(values[start:stop].astype(np.uint32))
        return cls(tuple(indices), tuple(bits))

    def patch(self, index: int, values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Put frame ``index``'s exception values back into ``values`` (MRC order, native float32)."""
        if self.indices[index].size:
            values.reshape(-1).view(np.uint32)[self.indices[index]] = self.bits[index]
        return values
