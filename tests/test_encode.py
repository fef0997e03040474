"""Strip codecs decode back with independent decoders; auto picks the smaller; levels are checked."""

from __future__ import annotations

import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile

from empcompress.encode import (
    PREDICTOR_FLOAT,
    Codec,
    StripEncoder,
    choose_codec,
    encode_frame_strips,
    make_codec,
    rows_per_strip,
)
from empcompress.write import write_tiff_stack


@pytest.fixture
def count_frame(rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(1.0, size=(64, 80)).astype(np.uint8)


def split(frame: np.ndarray, rows: int) -> list[bytes]:
    return [frame[start : start + rows].tobytes() for start in range(0, frame.shape[0], rows)]


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "float32"])
@pytest.mark.parametrize(
    "codec",
    [
        Codec("deflate", huffman_only=True),
        Codec("deflate", level=1),
        Codec("deflate", level=9),
        Codec("deflate", level=0),
        Codec("lzw"),
        Codec("zstd"),
        Codec("zstd", level=1),
        Codec("zstd", level=19),
        Codec("none"),
    ],
    ids=lambda codec: codec.label,
)
def test_strips_decode_back(rng: np.random.Generator, dtype: str, codec: Codec) -> None:
    frame = (rng.poisson(2.0, size=(37, 23)) * (3 if dtype != "uint8" else 1)).astype(dtype)
    rows = 5
    strips = encode_frame_strips(frame, codec, rows=rows)
    assert len(strips) == 8  # ceil(37 / 5)
    decoders = {
        "deflate": zlib.decompress,
        "lzw": imagecodecs.lzw_decode,
        "zstd": imagecodecs.zstd_decode,
        "none": bytes,
    }
    decoded = [bytes(decoders[codec.name](strip)) for strip in strips]
    assert decoded == split(frame, rows)


def test_huffman_only_is_smaller_than_level_6_on_counts(count_frame: np.ndarray) -> None:
    huffman = sum(map(len, encode_frame_strips(count_frame, Codec("deflate", huffman_only=True), rows=64)))
    level6 = sum(map(len, encode_frame_strips(count_frame, Codec("deflate", level=6), rows=64)))
    assert huffman < level6 < count_frame.nbytes


def test_zstd_level_changes_output(count_frame: np.ndarray) -> None:
    fast = encode_frame_strips(count_frame, Codec("zstd", level=1), rows=64)[0]
    slow = encode_frame_strips(count_frame, Codec("zstd", level=19), rows=64)[0]
    assert fast != slow
    assert bytes(imagecodecs.zstd_decode(slow)) == count_frame.tobytes()


@pytest.mark.parametrize("name", ["deflate", "lzw", "zstd"])
def test_float_predictor_reads_back_with_tifffile(
    tmp_path: Path, rng: np.random.Generator, name: str
) -> None:
    frames = (rng.standard_normal((3, 40, 24)) * 50).astype(np.float32)
    frames[0, 0, 0] = -0.0
    frames[1, 2, 3] = np.inf
    frames.view(np.uint32)[2, 5, 5] = 0x7FC01234  # NaN with a payload
    codec = make_codec(name, level=None, is_integer=False)
    assert codec.predictor == PREDICTOR_FLOAT
    path = tmp_path / "float.tif"
    write_tiff_stack(
        path,
        iter(frames),
        n_frames=3,
        frame_shape=(40, 24),
        dtype=np.dtype(np.float32),
        codec=codec,
        rows_per_strip=7,
        description="test",
        pixel_size_angstrom=1.0,
        threads=2,
    )
    with tifffile.TiffFile(path) as tiff:
        assert tiff.pages.first.predictor == 3
        read = tiff.asarray()
    assert read.view(np.uint32).tobytes() == frames.view(np.uint32).tobytes()


def test_predictor_helps_smooth_floats() -> None:
    y, x = np.mgrid[0:64, 0:64]
    smooth = (np.sin(x / 9.0) * np.cos(y / 7.0) * 1000).astype(np.float32)
    plain = sum(map(len, encode_frame_strips(smooth, Codec("deflate", level=6), rows=64)))
    predicted = sum(
        map(len, encode_frame_strips(smooth, Codec("deflate", level=6, predictor=PREDICTOR_FLOAT), rows=64))
    )
    assert predicted < plain


# ------------------------------------------------------------------ make_codec, levels


def test_make_codec_defaults() -> None:
    assert make_codec("deflate", level=None, is_integer=True) == Codec("deflate", huffman_only=True)
    assert make_codec("deflate", level=4, is_integer=True) == Codec("deflate", level=4)
    assert make_codec("lzw", level=None, is_integer=True) == Codec("lzw")
    assert make_codec("zstd", level=3, is_integer=False).predictor == PREDICTOR_FLOAT
    assert make_codec("none", level=None, is_integer=False).predictor == 1
    assert Codec("deflate").tiff_compression == 8
    assert Codec("lzw").tiff_compression == 5
    assert Codec("zstd").tiff_compression == 50000


@pytest.mark.parametrize(
    ("name", "level"),
    [("deflate", -1), ("deflate", 10), ("zstd", 0), ("zstd", 23), ("lzw", 1), ("none", 3)],
)
def test_bad_levels_are_rejected(name: str, level: int) -> None:
    with pytest.raises(ValueError, match=name):
        make_codec(name, level=level, is_integer=True)


@pytest.mark.parametrize(("name", "level"), [("deflate", 0), ("deflate", 9), ("zstd", 1), ("zstd", 22)])
def test_level_bounds_are_accepted(name: str, level: int) -> None:
    assert make_codec(name, level=level, is_integer=True).level == level


def test_unknown_codec_and_auto() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        Codec("jpeg")
    with pytest.raises(ValueError):
        make_codec("auto", level=None, is_integer=True)


# ------------------------------------------------------------------ auto


def test_auto_picks_lzw_on_sparse_frames() -> None:
    frame = np.zeros((128, 128), dtype=np.uint8)
    frame[::17, ::13] = 1
    codec, sizes = choose_codec([frame], is_integer=True, level=None)
    assert codec.name == "lzw"
    assert sizes[codec.label] == min(sizes.values())
    assert set(sizes) == {"deflate, huffman-only", "lzw", "none"}


def test_auto_stores_incompressible_counts_uncompressed(rng: np.random.Generator) -> None:
    noise = rng.integers(0, 256, size=(128, 96), dtype=np.uint8)  # every byte value equally likely
    codec, sizes = choose_codec([noise], is_integer=True, level=None)
    assert codec == Codec("none")
    assert sizes["none"] == noise.nbytes
    assert sizes["deflate, huffman-only"] > noise.nbytes and sizes["lzw"] > noise.nbytes


def test_auto_compresses_what_compresses() -> None:
    frame = np.zeros((64, 64), dtype=np.uint8)
    codec, sizes = choose_codec([frame], is_integer=True, level=None)
    assert codec.name != "none" and sizes[codec.label] < sizes["none"]


def test_auto_picks_huffman_deflate_on_counts(rng: np.random.Generator) -> None:
    frame = rng.poisson(2.0, size=(128, 128)).astype(np.uint8)
    codec, sizes = choose_codec([frame], is_integer=True, level=None)
    assert codec == Codec("deflate", huffman_only=True)
    assert sizes[codec.label] < sizes["lzw"]


def test_auto_sizes_are_real_sizes(rng: np.random.Generator) -> None:
    frame = rng.poisson(1.0, size=(100, 90)).astype(np.uint8)
    _, sizes = choose_codec([frame, frame], is_integer=True, level=None)
    rows = rows_per_strip(frame_shape=frame.shape, itemsize=1)
    lzw = sum(map(len, encode_frame_strips(frame, Codec("lzw"), rows=rows)))
    assert sizes["lzw"] == 2 * lzw


def test_auto_keeps_floats_raw_when_nothing_helps(rng: np.random.Generator) -> None:
    noise = rng.integers(0, 2**32, size=(64, 64), dtype=np.uint64).astype(np.uint32).view(np.float32)
    codec, sizes = choose_codec([noise], is_integer=False, level=None)
    assert codec.name == "none"
    assert sizes[codec.label] == noise.nbytes


def test_auto_compresses_smooth_floats() -> None:
    y, x = np.mgrid[0:64, 0:64]
    smooth = (np.sin(x / 9.0) * np.cos(y / 7.0) * 1000).astype(np.float32)
    codec, _ = choose_codec([smooth], is_integer=False, level=None)
    assert codec.name == "deflate"
    assert codec.predictor == PREDICTOR_FLOAT


def test_auto_level_is_validated() -> None:
    with pytest.raises(ValueError, match="level"):
        choose_codec([np.zeros((4, 4), dtype=np.uint8)], is_integer=True, level=12)


# ------------------------------------------------------------------ strips and the encoder pool


@pytest.mark.parametrize(
    ("shape", "itemsize", "expected"),
    [((4096, 4096), 1, 128), ((4096, 4096), 4, 32), ((10, 80), 4, 10), ((5, 2**20), 4, 1)],
)
def test_rows_per_strip(shape: tuple[int, int], itemsize: int, expected: int) -> None:
    assert rows_per_strip(frame_shape=shape, itemsize=itemsize) == expected


@pytest.mark.parametrize("threads", [1, 3])
def test_strip_encoder_keeps_order(rng: np.random.Generator, threads: int) -> None:
    frames = [rng.poisson(1.0, size=(30, 20)).astype(np.uint8) for _ in range(6)]
    codec = Codec("deflate", huffman_only=True)
    with StripEncoder(codec, rows=4, threads=threads) as encoder:
        strips = list(encoder.encode_frames(iter(frames)))
    expected = [strip for frame in frames for strip in encode_frame_strips(frame, codec, rows=4)]
    assert strips == expected
