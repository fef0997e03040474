"""TIFF strip codecs: LZW, deflate (tag 8) and zstd, and the per-movie choice among them.

We encode strips ourselves (in a thread pool: our Numba Huffman encoder, zlib, LZW
and zstd release the GIL) and hand the encoded bytes to tifffile, which writes the
file structure. That gives us Huffman-only deflate (what zlib's Z_HUFFMAN_ONLY
strategy writes; we write it ~3x faster, see :mod:`empcompress.huffman`), which is
within a few percent of the order-0 entropy of electron counts and that any
inflater reads.

``auto`` (the default) trial-encodes a sample of the movie with the codecs every
reader decodes (LZW, deflate, and no compression at all) and keeps the smallest:
Huffman-only deflate wins from about 0.5 e-/pixel/frame up, LZW on sparser
frames, and values that do not compress (noise-like 8-bit data) are stored as
they are rather than made larger.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import cast

import imagecodecs
import numpy as np
import numpy.typing as npt

from .huffman import deflate_huffman_only_zlib

__all__ = [
    "CODEC_NAMES",
    "Codec",
    "make_codec",
    "choose_codec",
    "rows_per_strip",
    "encode_frame_strips",
    "StripEncoder",
]

CODEC_NAMES: tuple[str, ...] = ("auto", "lzw", "deflate", "zstd", "none")
_TIFF_COMPRESSION = {"none": 1, "lzw": 5, "deflate": 8, "zstd": 50000}
PREDICTOR_NONE = 1
PREDICTOR_FLOAT = 3
STRIP_TARGET_BYTES = 512 * 1024


@dataclass(frozen=True)
class Codec:
    """One concrete way to encode strips: name, level and options."""

    name: str  # "lzw" | "deflate" | "zstd" | "none"
    level: int | None = None  # deflate 0-9, zstd 1-22; None: codec default
    huffman_only: bool = False  # deflate of literals only (like zlib's Z_HUFFMAN_ONLY; see huffman.py)
    predictor: int = PREDICTOR_NONE  # TIFF Predictor tag: 1 none, 3 floating point

    def __post_init__(self) -> None:
        if self.name not in _TIFF_COMPRESSION:
            raise ValueError(f"unknown codec {self.name!r}; choose from {', '.join(_TIFF_COMPRESSION)}")

    @property
    def tiff_compression(self) -> int:
        return _TIFF_COMPRESSION[self.name]

    @property
    def label(self) -> str:
        parts = [self.name]
        if self.huffman_only:
            parts.append("huffman-only")
        elif self.level is not None:
            parts.append(f"level {self.level}")
        if self.predictor == PREDICTOR_FLOAT:
            parts.append("float predictor")
        return ", ".join(parts)

    @property
    def worst_case_expansion(self) -> float:
        """Upper bound of encoded size / raw size (for the BigTIFF decision)."""
        return 1.6 if self.name == "lzw" else 1.01

    def encode(self, strip: npt.NDArray[np.generic]) -> bytes:
        """Encode one strip (a C-contiguous array of whole rows, native byte order)."""
        if self.predictor == PREDICTOR_FLOAT:
            strip = imagecodecs.floatpred_encode(strip, axis=-1)
        # imagecodecs and zlib take any buffer; its type stubs only name bytes
        data = cast(bytes, np.ascontiguousarray(strip).reshape(-1).view(np.uint8).data)
        if self.name == "none":
            return bytes(data)
        if self.name == "lzw":
            return bytes(imagecodecs.lzw_encode(data))
        if self.name == "zstd":
            return bytes(imagecodecs.zstd_encode(data, level=self.level if self.level is not None else 3))
        if self.huffman_only:  # same stream kind as zlib's Z_HUFFMAN_ONLY, ~3x faster (see huffman.py)
            return deflate_huffman_only_zlib(data)
        level = self.level if self.level is not None else 6
        compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY)
        return compressor.compress(data) + compressor.flush()


def make_codec(name: str, *, level: int | None, is_integer: bool) -> Codec:
    """The codec a user asked for by name, with sensible options for the data kind.

    ``deflate`` without a level means Huffman-only for counts and level 6 for
    floats; floats always get the floating-point predictor with deflate, LZW
    and zstd (it helps every one of them on real-valued images).
    """
    if name == "auto":
        raise ValueError("make_codec needs a concrete codec; use choose_codec for 'auto'")
    _check_level(name, level)
    predictor = PREDICTOR_NONE if is_integer or name == "none" else PREDICTOR_FLOAT
    huffman_only = name == "deflate" and level is None and is_integer
    return Codec(name=name, level=level, huffman_only=huffman_only, predictor=predictor)


def _check_level(name: str, level: int | None) -> None:
    if level is None:
        return
    ranges = {"deflate": (0, 9), "zstd": (1, 22)}
    if name not in ranges:
        raise ValueError(f"codec {name!r} has no compression level; drop --level")
    low, high = ranges[name]
    if not low <= level <= high:
        raise ValueError(f"{name} level must be {low}-{high}, not {level}")


def rows_per_strip(*, frame_shape: tuple[int, int], itemsize: int) -> int:
    """Rows per strip so that a strip holds about 512 KiB (several strips per frame)."""
    row_bytes = frame_shape[1] * itemsize
    return max(1, min(frame_shape[0], STRIP_TARGET_BYTES // max(1, row_bytes)))


def _strips(frame: npt.NDArray[np.generic], rows: int) -> list[npt.NDArray[np.generic]]:
    return [frame[start : start + rows] for start in range(0, frame.shape[0], rows)]


def choose_codec(
    sample_frames: Iterable[npt.NDArray[np.generic]],
    *,
    is_integer: bool,
    level: int | None,
) -> tuple[Codec, dict[str, int]]:
    """Pick the smallest reader-safe codec (deflate, LZW or none) for a sample of frames.

    Returns the codec and the trial sizes by codec label. Storing the strips
    uncompressed is always a candidate (the last: it wins only when strictly
    smaller), so we never write more than needed.
    """
    if is_integer:
        candidates = [
            make_codec("deflate", level=level, is_integer=True),
            make_codec("lzw", level=None, is_integer=True),
            Codec("none"),
        ]
    else:
        candidates = [
            make_codec("deflate", level=level if level is not None else 1, is_integer=False),
            Codec("none"),
        ]
    sizes = {codec.label: 0 for codec in candidates}
    for frame in sample_frames:
        rows = rows_per_strip(frame_shape=(frame.shape[0], frame.shape[1]), itemsize=frame.dtype.itemsize)
        for codec in candidates:
            sizes[codec.label] += sum(len(codec.encode(strip)) for strip in _strips(frame, rows))
    best = min(candidates, key=lambda codec: sizes[codec.label])
    return best, sizes


class StripEncoder:
    """Encodes frames strip by strip on a thread pool (or in the caller's thread), keeping frame order."""

    def __init__(self, codec: Codec, *, rows: int, threads: int) -> None:
        self.codec = codec
        self.rows = rows
        self._pool = (
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="empcompress-encode")
            if threads > 1
            else None
        )

    def __enter__(self) -> StripEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def encode_frames(self, frames: Iterable[npt.NDArray[np.generic]]) -> Iterator[bytes]:
        """Encoded strips of every frame, in order; with threads, one frame is in flight ahead.

        The producer must not reuse a frame's buffer for the next frame.
        """
        if self._pool is None:  # no hand-offs: for small frames they cost more than the encoding
            iterator = iter(frames)
            frame = next(iterator, None)
            while frame is not None:
                strips = encode_frame_strips(frame, self.codec, rows=self.rows)
                frame = next(iterator, None)  # the next frame is read before these strips go, as with a pool
                yield from strips
            return
        pending: list[Future[bytes]] = []
        for frame in frames:
            futures = [self._pool.submit(self.codec.encode, strip) for strip in _strips(frame, self.rows)]
            for future in pending:
                yield future.result()
            pending = futures
        for future in pending:
            yield future.result()


def encode_frame_strips(frame: npt.NDArray[np.generic], codec: Codec, *, rows: int) -> list[bytes]:
    """Encode one frame's strips serially (for tests and trials)."""
    return [codec.encode(strip) for strip in _strips(frame, rows)]
