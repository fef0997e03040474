"""The Numba Huffman-only deflate encoder: every inflater gets the bytes back, at zlib's size."""

from __future__ import annotations

import zlib

import imagecodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from empcompress.huffman import MIN_BYTES, deflate_huffman_only, deflate_huffman_only_zlib


def zlib_huffman_only(data: bytes) -> bytes:
    """The reference: zlib's own Z_HUFFMAN_ONLY strategy."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return compressor.compress(data) + compressor.flush()


def assert_inflates_back(data: bytes) -> None:
    raw = deflate_huffman_only(data)
    assert zlib.decompress(raw, wbits=-15) == data
    wrapped = deflate_huffman_only_zlib(data)
    assert zlib.decompress(wrapped) == data
    # libdeflate (what tifffile, and so our verification, decodes with)
    assert imagecodecs.deflate_decode(wrapped, out=len(data) + 16) == data


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=3000))
def test_any_bytes_inflate_back(data: bytes) -> None:
    assert_inflates_back(data)


@settings(max_examples=60, deadline=None)
@given(
    n_bytes=st.integers(min_value=0, max_value=20000),
    dose=st.floats(min_value=0.001, max_value=40.0),
    n_values=st.integers(min_value=1, max_value=256),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_counts_inflate_back(n_bytes: int, dose: float, n_values: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.poisson(dose, n_bytes), n_values - 1).astype(np.uint8)
    assert_inflates_back(counts.tobytes())


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"\x07" * 100_000, bytes(range(256)) * 300, bytes([0, 255]) * 5000],
    ids=["empty", "one byte", "one value", "all values", "two values"],
)
def test_edge_cases(data: bytes) -> None:
    assert_inflates_back(data)


def test_code_lengths_are_limited_to_15_bits() -> None:
    """Fibonacci frequencies make an unlimited Huffman code over 15 bits deep."""
    fibonacci = [1, 1]
    while len(fibonacci) < 26:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    data = np.concatenate([np.full(n, value, np.uint8) for value, n in enumerate(fibonacci)])
    np.random.default_rng(3).shuffle(data)
    assert_inflates_back(data.tobytes())


@pytest.mark.parametrize("dose", [0.25, 1.0, 2.0])
def test_size_matches_zlib_huffman_only_on_counts(dose: float) -> None:
    counts = np.random.default_rng(1).poisson(dose, 512 * 1024).astype(np.uint8).tobytes()
    ours, reference = len(deflate_huffman_only_zlib(counts)), len(zlib_huffman_only(counts))
    assert ours <= reference * 1.005


def test_small_inputs_go_through_zlib() -> None:
    data = bytes(range(200)) * 3
    assert len(data) < MIN_BYTES
    assert deflate_huffman_only_zlib(data) == zlib_huffman_only(data)


def test_takes_any_buffer() -> None:
    array = np.arange(10000, dtype=np.uint16).reshape(100, 100)
    wrapped = deflate_huffman_only_zlib(memoryview(array).cast("B"))
    assert zlib.decompress(wrapped) == array.tobytes()
