"""Numba kernels against their NumPy twins, and the twins against plain Python."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from empcompress import kernels

SHAPES = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12)

SPECIAL_FLOATS = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    255.0,
    256.0,
    65535.0,
    65536.0,
    -32768.0,
    -32769.0,
    2.0**31,
    -(2.0**31),
    2.0**32,
    0.5,
    -0.5,
    1e-45,  # float32 subnormal
    1.1754942e-38,  # largest float32 subnormal
    3.4028235e38,
    -3.4028235e38,
    1e30,
    math.nan,
    math.inf,
    -math.inf,
]


def float_elements(width: int) -> st.SearchStrategy[float]:
    """Mostly integer counts, sometimes special or arbitrary values of the given width."""
    float_type = np.float32 if width == 32 else np.float16
    with np.errstate(over="ignore"):
        special = [
            value for value in SPECIAL_FLOATS if math.isnan(value) or float(float_type(value)) == value
        ]
    special += [2.0**-24, -(2.0**-24), 65504.0] if width == 16 else []  # float16 subnormal and largest finite
    return st.one_of(
        st.integers(-3, 20).map(float),
        st.sampled_from(special),
        st.floats(width=width, allow_nan=True, allow_infinity=True, allow_subnormal=True),
    )


def float_frames(dtype: str) -> st.SearchStrategy[np.ndarray]:
    width = np.dtype(dtype).itemsize * 8
    return hnp.arrays(np.dtype(dtype), SHAPES, elements=float_elements(width))


def with_byte_order(frame: np.ndarray, byte_order: str) -> np.ndarray:
    return frame.astype(frame.dtype.newbyteorder(byte_order))


def python_float_stats(frame: np.ndarray) -> tuple[bool, float, float]:
    """Reference: element by element, in plain Python."""
    values = [float(v) for v in frame.astype(np.float64).ravel()]
    integral = all(
        math.isfinite(v) and v == math.floor(v) and not (v == 0 and math.copysign(1, v) < 0) for v in values
    )
    not_nan = [v for v in values if not math.isnan(v)]
    return integral, min(not_nan, default=math.inf), max(not_nan, default=-math.inf)


# ------------------------------------------------------------------ float_frame_stats


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@given(data=st.data())
def test_float_frame_stats_matches_twin(dtype: str, byte_order: str, data: st.DataObject) -> None:
    frame = with_byte_order(data.draw(float_frames(dtype)), byte_order)
    integral, lo, hi = kernels.float_frame_stats(frame)
    twin = kernels.float_frame_stats_numpy(frame)
    reference = python_float_stats(frame)
    assert integral is twin[0] is reference[0]
    assert twin[1:] == reference[1:]
    if integral:  # min and max only mean something for integral frames
        assert (lo, hi) == twin[1:]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize(
    ("special", "expected_integral"),
    [
        (-0.0, False),
        (math.nan, False),
        (math.inf, False),
        (-math.inf, False),
        (0.5, False),
        (2.5, False),
        (7.0, True),
    ],
)
def test_one_special_value_decides(dtype: type, special: float, expected_integral: bool) -> None:
    frame = np.arange(6 * 9, dtype=dtype).reshape(6, 9)
    frame[4, 7] = special
    for function in (kernels.float_frame_stats, kernels.float_frame_stats_numpy):
        assert function(frame)[0] is expected_integral


def test_subnormal_and_nan_payloads_are_not_integers() -> None:
    frame = np.zeros((3, 5), dtype=np.float32)
    assert kernels.float_frame_stats(frame)[0] is True
    for bits in (0x00000001, 0x007FFFFF, 0x80000001, 0x7FC00001, 0xFFC00000, 0x7F800001):
        damaged = frame.copy()
        damaged.view(np.uint32)[1, 2] = bits
        assert kernels.float_frame_stats(damaged)[0] is False, hex(bits)
        assert kernels.float_frame_stats_numpy(damaged)[0] is False, hex(bits)


def test_huge_integer_floats_are_integral_with_exact_extremes() -> None:
    frame = np.array([[3.0e9, -4.0e9], [2.0**24 + 2, 1e38]], dtype=np.float32)
    integral, lo, hi = kernels.float_frame_stats(frame)
    assert integral is True
    assert lo == float(np.float32(-4.0e9))
    assert hi == float(np.float32(1e38))


def test_float16_extremes() -> None:
    frame = np.array([[65504.0, -65504.0, 0.0]], dtype=np.float16)
    assert kernels.float_frame_stats(frame) == (True, -65504.0, 65504.0)


# ------------------------------------------------------------------ int_frame_stats


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16"])
@given(data=st.data())
def test_int_frame_stats_matches_twin(dtype: str, byte_order: str, data: st.DataObject) -> None:
    frame = with_byte_order(data.draw(hnp.arrays(np.dtype(dtype), SHAPES)), byte_order)
    result = kernels.int_frame_stats(frame)
    assert result == kernels.int_frame_stats_numpy(frame)
    values = [int(v) for v in frame.ravel()]
    assert result == (min(values), max(values))


def test_int_frame_stats_extremes() -> None:
    frame = np.array([[0, 65535], [7, 1]], dtype=">u2")
    assert kernels.int_frame_stats(frame) == (0, 65535)
    frame = np.array([[-32768, 32767]], dtype=np.int16)
    assert kernels.int_frame_stats(frame) == (-32768, 32767)


# ------------------------------------------------------------------ flip_cast

# (source dtype, storage dtype, value range that fits both exactly)
CAST_CASES = [
    ("float32", "uint8", 0, 255),
    ("float32", "uint16", 0, 65535),
    ("float32", "int16", -32768, 32767),
    ("float32", "uint32", 0, 2**24),
    ("float32", "int32", -(2**24), 2**24),
    ("float16", "uint8", 0, 255),
    ("float16", "uint16", 0, 2048),
    ("float16", "int16", -2048, 2048),
    ("int8", "uint8", 0, 127),
    ("int8", "int16", -128, 127),
    ("uint8", "uint8", 0, 255),
    ("int16", "uint8", 0, 255),
    ("int16", "uint16", 0, 32767),
    ("int16", "int16", -32768, 32767),
    ("uint16", "uint8", 0, 255),
    ("uint16", "uint16", 0, 65535),
]


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize(("source_dtype", "stored_dtype", "low", "high"), CAST_CASES)
@given(data=st.data())
def test_flip_cast_matches_twin_and_round_trips(
    source_dtype: str, stored_dtype: str, low: int, high: int, byte_order: str, data: st.DataObject
) -> None:
    shape = data.draw(SHAPES)
    source = data.draw(hnp.arrays(np.int64, shape, elements=st.integers(low, high))).astype(source_dtype)
    source = with_byte_order(source, byte_order)
    out = kernels.flip_cast(source, np.empty(shape, dtype=stored_dtype))
    twin = kernels.flip_cast_numpy(source, np.empty(shape, dtype=stored_dtype))
    assert out.dtype == np.dtype(stored_dtype)
    assert np.array_equal(out, twin)
    assert np.array_equal(out.astype(np.int64), source[::-1].astype(np.int64))
    back = kernels.flip_cast(out, np.empty(shape, dtype=np.dtype(source_dtype)))
    assert back.tobytes() == source.astype(np.dtype(source_dtype)).tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@given(data=st.data())
def test_flip_cast_keeps_float_bits(dtype: str, data: st.DataObject) -> None:
    """float -> same float: every bit survives (-0.0, NaN payloads, subnormals, inf)."""
    bits_dtype = np.uint32 if dtype == "float32" else np.uint16
    bits = data.draw(hnp.arrays(bits_dtype, SHAPES))
    source = bits.view(dtype)
    out = kernels.flip_cast(source, np.empty(source.shape, dtype=dtype))
    assert out.view(bits_dtype).tobytes() == bits[::-1].tobytes()
    assert kernels.flip_cast_numpy(source, np.empty(source.shape, dtype=dtype)).tobytes() == out.tobytes()


def test_flip_cast_keeps_signalling_nan_payload() -> None:
    source = np.array([[0x7F800001, 0xFFA00000], [0x80000000, 0x00000001]], dtype=np.uint32).view(np.float32)
    out = kernels.flip_cast(source, np.empty((2, 2), dtype=np.float32))
    assert out.view(np.uint32).tolist() == [[0x80000000, 0x00000001], [0x7F800001, 0xFFA00000]]


def test_flip_cast_first_row_is_last_row() -> None:
    source = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = kernels.flip_cast(source, np.empty((4, 3), dtype=np.uint8))
    assert out[0].tolist() == [9, 10, 11]
    assert out[-1].tolist() == [0, 1, 2]


def test_flip_cast_big_endian_float_source() -> None:
    source = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=">f4")
    assert struct.unpack(">f", source.tobytes()[:4])[0] == 1.0
    out = kernels.flip_cast(source, np.empty((2, 2), dtype=np.uint16))
    assert out.tolist() == [[3, 4], [1, 2]]


def test_flip_cast_rejects_bad_outputs() -> None:
    source = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="shape"):
        kernels.flip_cast(source, np.empty((3, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="native"):
        kernels.flip_cast(source, np.empty((2, 3), dtype=">u2"))
