"""convert.tiff_record: the record written before the pass is at least as long as the one replacing it."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mrc_factory import mrc_bytes

from empcompress.convert.tiff_record import PLACEHOLDER_REASON_CHARS, TiffRecord
from empcompress.detect import StorageDecision
from empcompress.encode import make_codec
from empcompress.mrc import parse_header

_VALUES = np.zeros((3, 8, 6), dtype=np.float32)
_BYTES = mrc_bytes(_VALUES, mode=2, extended_header=b"\x01" * 96)
_HEADER = parse_header(_BYTES[:1024], path_name="m.mrc", file_size_bytes=len(_BYTES))


def record(stored_dtype: str = "float32") -> TiffRecord:
    codec = make_codec("deflate", level=None, is_integer=stored_dtype != "float32")
    header_bytes, extended = _BYTES[:1024], _BYTES[1024 : 1024 + _HEADER.extended_header_size_bytes]
    return TiffRecord(Path("/in/m.mrc"), _HEADER, header_bytes, extended, np.dtype(stored_dtype), codec, 4)


# what decide_storage's values and reasons can be: any float (NaN and the infinities included), plain text
# (under 130 characters; the longest are tried, a shorter one only leaves the placeholder more room)
_ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, width=64)
_REASON = st.text(
    alphabet=string.ascii_letters + string.digits + " ;:,.()=<>+-_/%'", min_size=200, max_size=256
)
_LONGEST_FLOAT = -2.2250738585072014e-308  # 24 characters of JSON


@settings(max_examples=300, deadline=None)
@example(
    sha256="f" * 64,
    value_min=_LONGEST_FLOAT,
    value_max=_LONGEST_FLOAT,
    reason="r" * 256,
    stored_dtype="float32",
)
@given(
    sha256=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    value_min=_ANY_FLOAT,
    value_max=_ANY_FLOAT,
    reason=_REASON,
    stored_dtype=st.sampled_from(["float32", "uint8", "uint16", "int16", "int32"]),
)
def test_the_final_record_fits_in_its_placeholder(
    sha256: str, value_min: float, value_max: float, reason: str, stored_dtype: str
) -> None:
    fixed = record(stored_dtype)
    decided = StorageDecision(stored_dtype, stored_dtype != "float32", 0.0, 1.0, "")
    final = StorageDecision(stored_dtype, decided.is_integer, value_min, value_max, reason)
    assert len(fixed.text(sha256, final)) <= len(fixed.placeholder(decided))


def test_the_placeholder_is_the_record_with_its_unknowns_held() -> None:
    fixed = record()
    decided = StorageDecision("float32", False, -3.5, 12.25, "not integers")
    placeholder, final = json.loads(fixed.placeholder(decided)), json.loads(fixed.text("ab" * 32, decided))
    assert placeholder["storage"]["reason"] == "?" * PLACEHOLDER_REASON_CHARS
    assert placeholder["source"]["sha256"] == "0" * 64 and final["source"]["sha256"] == "ab" * 32
    for part in (placeholder, final):  # everything else is the attempt's, the same in both
        part["storage"].update(value_min=None, value_max=None, reason=None)
        part["source"]["sha256"] = None
    assert placeholder == final
    assert final["source"]["name"] == "m.mrc" and final["storage"]["rows_per_strip"] == 4
    assert final["storage"]["codec"] == "deflate"


def test_a_longer_reason_gets_a_longer_placeholder() -> None:
    fixed, decided = record(), StorageDecision("float32", False, 0.0, 1.0, "")
    longer = fixed.placeholder(decided, reason_chars=2 * PLACEHOLDER_REASON_CHARS + 40)
    assert len(longer) == len(fixed.placeholder(decided)) + PLACEHOLDER_REASON_CHARS + 40
