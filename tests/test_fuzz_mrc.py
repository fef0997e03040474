"""Fuzzing the MRC reader: damaged headers and data give only clean errors or byte-identical round trips."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from mrc_factory import mrc_bytes

from empcompress.convert import convert_movie
from empcompress.errors import EmpCompressError
from empcompress.mrc import MrcMovie, parse_header
from empcompress.restore import restore_movie

#: (offset, struct code) of the header words that decide how a file is read.
WORDS = [
    (0, "i"),
    (4, "i"),
    (8, "i"),
    (12, "i"),
    (28, "i"),
    (40, "f"),
    (92, "i"),
    (152, "i"),
    (156, "i"),
    (220, "i"),
]
MODES = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2", 101: "u1"}


@st.composite
def mrc_files(draw: st.DrawFn) -> bytes:
    """A valid small MRC file, then a few header words overwritten and the data cut or extended."""
    mode = draw(st.sampled_from(sorted(MODES)))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 7)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    if mode == 101:
        values = rng.integers(0, 16, shape).astype(np.uint8)
    elif MODES[mode][0] == "f":
        values = rng.integers(0, 5, shape).astype(MODES[mode])
    else:
        values = rng.integers(0, 100, shape).astype(MODES[mode])
    extended = draw(st.binary(max_size=64))
    data = bytearray(
        mrc_bytes(values, mode=mode, byte_order=draw(st.sampled_from("<>")), extended_header=extended)
    )
    for _ in range(draw(st.integers(0, 3))):
        offset, code = draw(st.sampled_from(WORDS))
        if code == "i":
            word = struct.pack("<i", draw(st.integers(-(2**31), 2**31 - 1)))
        else:
            word = struct.pack("<f", draw(st.floats(width=32, allow_nan=True)))
        data[offset : offset + 4] = word if draw(st.booleans()) else word[::-1]
    if draw(st.integers(0, 3)) == 0:
        data[212:216] = draw(st.binary(min_size=4, max_size=4))  # machine stamp
    cut = draw(st.one_of(st.just(0), st.integers(-16, 16)))
    return bytes(data[:cut] if cut < 0 else data + b"\x5a" * cut)


@settings(max_examples=150)
@given(data=mrc_files())
def test_reader_gives_clean_errors_or_the_exact_bytes(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "f.mrc"
    path.write_bytes(data)
    try:
        with MrcMovie(path) as movie:
            rebuilt = movie.read_header_bytes() + movie.read_extended_header_bytes()
            for index in range(movie.header.nz):
                raw = movie.read_raw_frame(index)
                movie.values_from_raw(raw)
                rebuilt += raw.tobytes()
    except EmpCompressError:
        return
    assert rebuilt == data


@settings(max_examples=200)
@given(raw=st.binary(min_size=0, max_size=1200), size=st.integers(0, 2**40))
def test_parse_header_of_any_bytes_is_clean(raw: bytes, size: int) -> None:
    try:
        header = parse_header(raw, path_name="x.mrc", file_size_bytes=size)
    except EmpCompressError as error:
        assert "x.mrc" in str(error)
        return
    assert header.expected_file_size_bytes == size


@settings(max_examples=20)
@given(data=mrc_files())
def test_convert_and_restore_give_clean_errors_or_the_exact_file(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    directory: Path = tmp_path_factory.mktemp("fuzz_convert")
    source = directory / "f.mrc"
    source.write_bytes(data)
    try:
        convert_movie(source, directory / "f.tif")
    except EmpCompressError:
        event("refused")
        return
    event("converted")
    restore_movie(directory / "f.tif", directory / "back.mrc")
    assert (directory / "back.mrc").read_bytes() == data
