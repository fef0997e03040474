"""Storage decision: the smallest type that gives every value back bit for bit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from mrc_factory import write_mrc

from empcompress.convert import survey_movie
from empcompress.detect import FrameStats, decide_storage, frame_stats


def decide(values: np.ndarray) -> str:
    """Stored dtype for a movie made of these values (one frame)."""
    frame = np.asarray(values).reshape(1, -1)
    decision = decide_storage(source_dtype=frame.dtype, stats=frame_stats(frame))
    assert decision.is_integer == (decision.stored_dtype not in ("float32", "float16", "float64"))
    return decision.stored_dtype


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [
        ([0, 255], "uint8", "uint8"),
        ([0, 127], "int8", "uint8"),
        ([-1, 5], "int8", "int16"),
        ([-128, 127], "int8", "int16"),
        ([0, 255], "int16", "uint8"),
        ([0, 256], "int16", "uint16"),
        ([0, 32767], "int16", "uint16"),
        ([-1, 0], "int16", "int16"),
        ([-32768, 32767], "int16", "int16"),
        ([3, 200], "uint16", "uint8"),
        ([0, 65535], "uint16", "uint16"),
        ([0, 0], "float32", "uint8"),
        ([0, 255], "float32", "uint8"),
        ([0, 256], "float32", "uint16"),
        ([0, 65535], "float32", "uint16"),
        ([-1, 255], "float32", "int16"),
        ([-32768, 32767], "float32", "int16"),
        ([-1, 40000], "float32", "int32"),
        ([0, 65536], "float32", "uint32"),
        ([-32769, 0], "float32", "int32"),
        ([0, 4294967040], "float32", "uint32"),  # largest float32 below 2**32
        ([-(2**31), 5], "float32", "int32"),
        ([0, 2**32], "float32", "float32"),  # integer, but past uint32
        ([-(2**31) - 256, 0], "float32", "float32"),  # integer, but below int32
        ([0, 1e30], "float32", "float32"),
        ([0, 2048], "float16", "uint16"),
        ([-3, 7], "float16", "int16"),
        ([0, 65504], "float16", "uint16"),
    ],
)
def test_smallest_type(values: list[float], dtype: str, expected: str) -> None:
    assert decide(np.array(values, dtype=dtype)) == expected


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("special", [math.nan, math.inf, -math.inf, -0.0, 0.5, -2.25])
def test_any_non_integer_keeps_float(dtype: str, special: float) -> None:
    values = np.array([0, 1, 2, 3, special], dtype=dtype)
    assert decide(values) == dtype


def test_nan_payload_keeps_float() -> None:
    values = np.zeros(8, dtype=np.float32)
    values.view(np.uint32)[3] = 0x7FC0BEEF
    assert decide(values) == "float32"


def test_big_endian_source_decides_native_names() -> None:
    assert decide(np.array([0, 300], dtype=">f4")) == "uint16"
    assert decide(np.array([0, 0.5], dtype=">f4")) == "float32"
    assert decide(np.array([-2, 300], dtype=">i2")) == "int16"


def test_reason_mentions_the_choice() -> None:
    frame = np.array([[0.0, 9.0]], dtype=np.float32)
    decision = decide_storage(source_dtype=frame.dtype, stats=frame_stats(frame))
    assert "uint8" in decision.reason
    assert (decision.value_min, decision.value_max) == (0.0, 9.0)


def test_frame_stats_merge() -> None:
    a = FrameStats(integral=True, value_min=0, value_max=10)
    b = FrameStats(integral=True, value_min=-3, value_max=4)
    c = FrameStats(integral=False, value_min=1, value_max=2)
    merged = a.merge(b)
    assert merged == FrameStats(integral=True, value_min=-3, value_max=10, n_frames=2)
    assert merged.merge(c).integral is False
    assert merged.merge(c).n_frames == 3


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([[0, 1], [0, 255], [0, 3]], "uint8"),
        ([[0, 1], [0, 256], [0, 3]], "uint16"),
        ([[0, 1], [0, 3], [-1, 3]], "int16"),  # the last frame alone forces signed storage
        ([[0, 1], [0, 3], [0, 0.5]], "float32"),  # the last frame alone forces float
        ([[0, 1], [-0.0, 3], [0, 1]], "float32"),
    ],
)
def test_decision_covers_every_frame(tmp_path: Path, frames: list[list[float]], expected: str) -> None:
    values = np.array(frames, dtype=np.float32).reshape(3, 1, 2)
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    assert survey_movie(path).decision.stored_dtype == expected


def test_survey_hashes_the_whole_file(tmp_path: Path) -> None:
    import hashlib

    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = write_mrc(tmp_path / "m.mrc", values, mode=2, extended_header=b"\x01" * 40, exttyp=b"FEI1")
    survey = survey_movie(path)
    assert survey.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert survey.stats.n_frames == 2
    assert (survey.stats.value_min, survey.stats.value_max) == (0.0, 23.0)
