"""TIFF writer: pages, strips, tags, SampleFormat, BigTIFF, and the temporary-file discipline."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tifffile

from empcompress import write
from empcompress.encode import Codec
from empcompress.write import (
    CLASSIC_TIFF_LIMIT_BYTES,
    looks_like_packed_4bit,
    needs_bigtiff,
    write_tiff_stack,
)

#: Tags a cryo-EM reader knows; anything else would make some of them warn.
STANDARD_TAGS = {256, 257, 258, 259, 262, 270, 273, 277, 278, 279, 282, 283, 296, 305, 317, 339}
SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}


def write_stack(
    path: Path,
    frames: np.ndarray,
    *,
    codec: Codec | None = None,
    rows: int = 8,
    pixel_size_angstrom: float = 1.0,
) -> Path:
    write_tiff_stack(
        path,
        lambda: iter(frames),
        n_frames=frames.shape[0],
        frame_shape=frames.shape[1:],
        dtype=frames.dtype,
        codec=codec or Codec("deflate", huffman_only=True),
        rows_per_strip=rows,
        description='{"hello": "world"}',
        pixel_size_angstrom=pixel_size_angstrom,
        threads=2,
    )
    return path


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "int32", "float32", "float16"])
def test_pages_tags_and_sample_format(tmp_path: Path, rng: np.random.Generator, dtype: str) -> None:
    frames = rng.integers(0, 100, size=(5, 30, 21)).astype(dtype)
    path = write_stack(tmp_path / "s.tif", frames, rows=8)
    with tifffile.TiffFile(path) as tiff:
        assert not tiff.is_bigtiff
        assert tiff.byteorder == "<"
        assert len(tiff.pages) == 5
        for index, page in enumerate(tiff.pages):
            assert isinstance(page, tifffile.TiffPage)
            tags = {tag.code: tag.value for tag in page.tags.values()}
            assert tags[339] == SAMPLE_FORMAT[np.dtype(dtype).kind], f"page {index}"
            assert set(tags) <= STANDARD_TAGS, set(tags) - STANDARD_TAGS
            assert 340 not in tags
            assert tags[278] == 8
            assert len(page.dataoffsets) == 4  # ceil(30 / 8) strips, not tiles
            assert not page.is_tiled
            assert tags[262] == 1  # minisblack
            assert page.dtype == np.dtype(dtype)
            assert np.array_equal(page.asarray(), frames[index])
        assert tiff.pages.first.description == '{"hello": "world"}'


def test_resolution_in_centimetres(tmp_path: Path) -> None:
    path = write_stack(tmp_path / "r.tif", np.zeros((1, 4, 4), dtype=np.uint8), pixel_size_angstrom=0.5)
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages.first
        assert page.tags["ResolutionUnit"].value == 3
        numerator, denominator = page.tags["XResolution"].value
        assert numerator / denominator == pytest.approx(2e8)  # pixels per cm at 0.5 A/pixel


def test_rejects_frames_of_the_wrong_type(tmp_path: Path) -> None:
    frames = np.zeros((2, 4, 4), dtype=np.uint16)
    with pytest.raises(ValueError, match="expected"):
        write_tiff_stack(
            tmp_path / "w.tif",
            iter(frames),
            n_frames=2,
            frame_shape=(4, 4),
            dtype=np.dtype(np.uint8),
            codec=Codec("lzw"),
            rows_per_strip=4,
            description="x",
            pixel_size_angstrom=1.0,
            threads=1,
        )


# ------------------------------------------------------------------ BigTIFF


def test_needs_bigtiff_boundaries() -> None:
    lzw, deflate = Codec("lzw"), Codec("deflate", huffman_only=True)
    # 64 frames of 4096x4096 float32: 4 GiB raw; 60 frames: 3.75 GiB, fits unless LZW expands it
    assert needs_bigtiff(n_frames=64, frame_shape=(4096, 4096), itemsize=4, codec=deflate, extra_bytes=0)
    assert not needs_bigtiff(n_frames=60, frame_shape=(4096, 4096), itemsize=4, codec=deflate, extra_bytes=0)
    assert needs_bigtiff(n_frames=60, frame_shape=(4096, 4096), itemsize=4, codec=lzw, extra_bytes=0)
    # the same counts stored as uint8: 1 GiB, classic TIFF is enough
    assert not needs_bigtiff(n_frames=60, frame_shape=(4096, 4096), itemsize=1, codec=deflate, extra_bytes=0)
    # LZW can expand incompressible data: 3 GiB raw may pass 4 GiB
    assert needs_bigtiff(n_frames=48, frame_shape=(4096, 4096), itemsize=4, codec=lzw, extra_bytes=0)
    assert not needs_bigtiff(n_frames=48, frame_shape=(4096, 4096), itemsize=2, codec=deflate, extra_bytes=0)
    # K3 super-resolution, 40 frames, uint8: 3.5 GiB raw
    assert needs_bigtiff(n_frames=40, frame_shape=(8184, 11520), itemsize=1, codec=lzw, extra_bytes=0)
    assert not needs_bigtiff(n_frames=1, frame_shape=(64, 80), itemsize=4, codec=lzw, extra_bytes=10_000)


@pytest.mark.parametrize(
    "codec", [Codec("deflate", huffman_only=True), Codec("lzw"), Codec("zstd"), Codec("none")]
)
def test_needs_bigtiff_exactly_around_the_limit(codec: Codec) -> None:
    """Raw sizes just under 4 GiB need BigTIFF: header, IFDs and expansion count too."""
    n_frames = CLASSIC_TIFF_LIMIT_BYTES // (1024 * 1024)  # 4095 frames of 1 MiB
    assert needs_bigtiff(n_frames=n_frames, frame_shape=(1024, 1024), itemsize=1, codec=codec, extra_bytes=0)
    assert not needs_bigtiff(
        n_frames=n_frames // 2, frame_shape=(1024, 1024), itemsize=1, codec=codec, extra_bytes=0
    )


def test_bigtiff_is_written_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    monkeypatch.setattr(write, "CLASSIC_TIFF_LIMIT_BYTES", 1000)
    for dtype in ("uint8", "int16", "float32"):
        frames = rng.integers(0, 50, size=(3, 20, 16)).astype(dtype)
        path = write_stack(tmp_path / f"big_{dtype}.tif", frames)
        with tifffile.TiffFile(path) as tiff:
            assert tiff.is_bigtiff
            assert all(page.tags[339].value == SAMPLE_FORMAT[np.dtype(dtype).kind] for page in tiff.pages)
            assert np.array_equal(tiff.asarray(), frames)


def test_classic_tiff_whenever_the_encoded_file_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    """The kind follows the real encoded size, not the worst case (issue 10)."""
    frames = np.zeros((6, 64, 64), dtype=np.uint8)  # compresses to almost nothing
    frames[:, 0, 0] = 1
    raw_bytes = frames.nbytes
    codec = Codec("lzw")
    overhead = write.CLASSIC_TIFF_LIMIT_BYTES - write.classic_strip_budget_bytes(
        n_frames=6, n_strips_per_frame=8, extra_bytes=len('{"hello": "world"}')
    )
    # a limit the raw (and worst-case) size passes, but the encoded strips do not
    monkeypatch.setattr(write, "CLASSIC_TIFF_LIMIT_BYTES", overhead + raw_bytes // 2)
    assert write.needs_bigtiff(
        n_frames=6, frame_shape=(64, 64), itemsize=1, codec=codec, extra_bytes=18
    )  # what 0.1 would have chosen
    path = write_stack(tmp_path / "small.tif", frames, codec=codec)
    with tifffile.TiffFile(path) as tiff:
        assert not tiff.is_bigtiff and np.array_equal(tiff.asarray(), frames)
    noisy = rng.integers(0, 256, size=(6, 64, 64)).astype(np.uint8)  # does not compress: BigTIFF
    path = write_stack(tmp_path / "noisy.tif", noisy, codec=codec)
    with tifffile.TiffFile(path) as tiff:
        assert tiff.is_bigtiff and np.array_equal(tiff.asarray(), noisy)
    with pytest.raises(ValueError, match="too large for classic TIFF"):
        write_tiff_stack(
            tmp_path / "once.tif",
            iter(noisy),
            n_frames=6,
            frame_shape=(64, 64),
            dtype=noisy.dtype,
            codec=codec,
            rows_per_strip=8,
            description='{"hello": "world"}',
            pixel_size_angstrom=1.0,
            threads=1,
        )


# ------------------------------------------------------------------ packed 4-bit look-alikes


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [
        ((8184, 5760), "uint8", True),
        ((5760, 8184), "uint8", True),
        ((11520, 4092), "uint8", True),
        ((7676, 3710), "int8", True),
        ((3838, 7420), "uint8", True),
        ((8184, 5760), "uint16", False),
        ((4092, 5760), "uint8", False),
        ((4096, 4096), "uint8", False),
    ],
)
def test_looks_like_packed_4bit(shape: tuple[int, int], dtype: str, expected: bool) -> None:
    assert looks_like_packed_4bit(shape, np.dtype(dtype)) is expected


def ring_of(frames: np.ndarray, n_buffers: int) -> Iterator[np.ndarray]:
    """``frames`` copied in turn into ``n_buffers`` arrays (what the read pass's store does)."""
    buffers = [np.empty_like(frames[0]) for _ in range(n_buffers)]
    for index, frame in enumerate(frames):
        buffer = buffers[index % n_buffers]
        buffer[...] = frame
        yield buffer


def attempt(path: Path, frames: Iterable[np.ndarray], *, threads: int) -> None:
    write.write_tiff_attempt(
        path,
        frames,
        bigtiff=False,
        n_frames=6,
        frame_shape=(64, 48),
        dtype=np.dtype("uint8"),
        codec=Codec("lzw"),
        rows_per_strip=4,
        description="{}",
        pixel_size_angstrom=1.0,
        threads=threads,
    )


@pytest.mark.parametrize("threads", [1, 2])
def test_frames_may_come_from_a_ring_of_frames_in_flight_buffers(
    tmp_path: Path, rng: np.random.Generator, threads: int
) -> None:
    frames = rng.integers(0, 4, size=(6, 64, 48), dtype=np.uint8)
    attempt(tmp_path / "ring.tif", ring_of(frames, write.FRAMES_IN_FLIGHT), threads=threads)
    assert np.array_equal(tifffile.imread(tmp_path / "ring.tif"), frames)


@pytest.mark.parametrize("threads", [1, 2])
def test_an_encoder_taking_frames_further_ahead_is_stopped(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """The frame-lifetime contract is checked, not assumed: an encoder that takes frame i + 2
    before frame i's strips are out (here: it reads every frame first) stops the write."""
    original = write.StripEncoder.encode_frames

    def greedy(self: write.StripEncoder, frames: Iterable[np.ndarray]) -> Iterator[bytes]:
        return original(self, list(frames))

    monkeypatch.setattr(write.StripEncoder, "encode_frames", greedy)
    frames = rng.integers(0, 4, size=(6, 64, 48), dtype=np.uint8)
    with pytest.raises(RuntimeError, match="asked for frame 2 before it was done with frame 0"):
        attempt(tmp_path / "greedy.tif", ring_of(frames, write.FRAMES_IN_FLIGHT), threads=threads)
