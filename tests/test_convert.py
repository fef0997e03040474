"""convert -> restore is byte-identical for every mode, dtype and byte order; what is stored is right."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import counts, temporaries_in
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mrc_factory import mrc_bytes, source_values_dtype, write_mrc

from empcompress import write
from empcompress.convert import convert_movie
from empcompress.errors import EmpCompressError, InputError
from empcompress.restore import restore_movie

SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}
INTEGER_ORDER = ("uint8", "uint16", "int16", "uint32", "int32")


# ------------------------------------------------------------------ reference storage decision


def expected_storage(values: np.ndarray) -> str:
    """The storage type the spec asks for, computed independently of empcompress.detect."""
    native = values.astype(values.dtype.newbyteorder("="))
    if native.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            wide = native.astype(np.float64)
        integral = bool(
            np.all(np.isfinite(wide))
            and np.all(wide == np.floor(wide))
            and not np.any((wide == 0) & np.signbit(wide))
        )
        if not integral:
            return native.dtype.name
    lo, hi = int(native.min()), int(native.max())
    for name in INTEGER_ORDER:
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return name
    return native.dtype.name


# ------------------------------------------------------------------ movie strategies


@dataclass(frozen=True)
class Movie:
    values: np.ndarray  # (nz, ny, nx), the values as the reader returns them (native order)
    mode: int
    byte_order: str
    imod_flags: int | None
    extended_header: bytes
    exttyp: bytes

    def raw(self) -> bytes:
        return mrc_bytes(
            self.values,
            mode=self.mode,
            byte_order=self.byte_order,
            imod_flags=self.imod_flags,
            extended_header=self.extended_header,
            exttyp=self.exttyp,
            labels=["hypothesis movie"],
        )


FLOAT32_SPECIALS = [
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    0.5,
    -1.25,
    1e-45,
    3.4028235e38,
    2.0**32,
    -(2.0**31) - 256,
    4294967040.0,
    -(2.0**31),
    70000.0,
    -70000.0,
]
FLOAT16_SPECIALS = [-0.0, math.nan, math.inf, -math.inf, 0.5, -1.25, 6e-8, 65504.0, -65504.0, 2048.0, -3.0]
NAN_PAYLOADS_32 = [0x7FC00001, 0xFFC0BEEF, 0x7F800001, 0x7FBFFFFF]
NAN_PAYLOADS_16 = [0x7E01, 0xFC01, 0x7C01]

# integer ranges that need each storage type
RANGES = {
    "uint8": (0, 255),
    "counts": (0, 15),
    "uint16": (0, 65535),
    "int16": (-300, 300),
    "uint32": (0, 2**24),
    "int32": (-(2**24), 2**24),
}


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int, int]:
    return (draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 9)))


@st.composite
def float_values(draw: st.DrawFn, dtype: str) -> np.ndarray:
    shape = draw(shapes())
    is32 = dtype == "float32"
    range_names = list(RANGES) if is32 else ["uint8", "counts", "int16"]
    low, high = RANGES[draw(st.sampled_from(range_names))]
    if not is32:
        low, high = max(low, -2048), min(high, 2048)
    values = draw(hnp.arrays(np.int64, shape, elements=st.integers(low, high))).astype(dtype)
    n_special = draw(st.integers(0, 3))
    bits_dtype = np.uint32 if is32 else np.uint16
    for _ in range(n_special):
        position = tuple(draw(st.integers(0, side - 1)) for side in shape)
        kind = draw(st.sampled_from(["special", "payload", "any"]))
        if kind == "special":
            values[position] = draw(st.sampled_from(FLOAT32_SPECIALS if is32 else FLOAT16_SPECIALS))
        elif kind == "payload":
            values.view(bits_dtype)[position] = draw(
                st.sampled_from(NAN_PAYLOADS_32 if is32 else NAN_PAYLOADS_16)
            )
        else:
            values[position] = draw(st.floats(width=32 if is32 else 16, allow_nan=True, allow_infinity=True))
    return values


@st.composite
def int_values(draw: st.DrawFn, dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    shape = draw(shapes())
    candidates = [(info.min, info.max), (0, 15), (0, 255), (0, min(info.max, 300)), (max(info.min, -3), 3)]
    low, high = draw(st.sampled_from(candidates))
    if low < info.min or low > high:
        low = info.min
    return draw(hnp.arrays(np.int64, shape, elements=st.integers(low, high))).astype(dtype)


MODE_KINDS = {
    "mode0_signed": (0, None),
    "mode0_unsigned": (0, 0),
    "mode1": (1, None),
    "mode2": (2, None),
    "mode6": (6, None),
    "mode12": (12, None),
    "mode101": (101, None),
}


@st.composite
def movies(draw: st.DrawFn, kind: str) -> Movie:
    mode, imod_flags = MODE_KINDS[kind]
    if mode == 2:
        values = draw(float_values("float32"))
    elif mode == 12:
        values = draw(float_values("float16"))
    elif mode == 101:
        values = draw(hnp.arrays(np.uint8, shapes(), elements=st.integers(0, 15)))
    elif mode == 0 and imod_flags == 0:
        values = draw(int_values("uint8"))
    else:
        values = draw(int_values({0: "int8", 1: "int16", 6: "uint16"}[mode]))
    extended = draw(st.sampled_from([b"", b"FEI1", b"FEI2", b"SERI", b"CCP4"]))
    extended_header = draw(st.binary(min_size=1, max_size=300)) if extended else b""
    return Movie(
        values=values,
        mode=mode,
        byte_order=draw(st.sampled_from("<>")),
        imod_flags=imod_flags,
        extended_header=extended_header,
        exttyp=extended,
    )


# ------------------------------------------------------------------ checks shared by the tests


def stored_pages(path: Path) -> tuple[list[np.ndarray], list[dict[int, object]], bool]:
    with tifffile.TiffFile(path) as tiff:
        pages = [page.asarray() for page in tiff.pages]
        tags = [{tag.code: tag.value for tag in page.tags.values()} for page in tiff.pages]  # type: ignore[union-attr]
        return pages, tags, tiff.is_bigtiff


def check_round_trip(movie: Movie, directory: Path, *, codec: str, threads: int) -> None:
    source = directory / "source.mrc"
    raw = movie.raw()
    source.write_bytes(raw)
    mtime = os.stat(source).st_mtime_ns
    output = directory / "out.tif"
    result = convert_movie(source, output, codec=codec, threads=threads)

    # the source is untouched
    assert source.read_bytes() == raw
    assert os.stat(source).st_mtime_ns == mtime
    assert result.source_sha256 == hashlib.sha256(raw).hexdigest()

    # storage: expected type, SampleFormat on every page, rows flipped
    expected = expected_storage(movie.values)
    assert result.decision.stored_dtype == expected
    pages, tags, _ = stored_pages(output)
    assert len(pages) == movie.values.shape[0]
    for index, (page, page_tags) in enumerate(zip(pages, tags, strict=True)):
        assert page.dtype == np.dtype(expected)
        assert page_tags[339] == SAMPLE_FORMAT[np.dtype(expected).kind]
        source_frame = movie.values[index].astype(movie.values.dtype.newbyteorder("="))
        flipped = source_frame[::-1]
        if page.dtype.kind == "f":
            assert page.tobytes() == flipped.tobytes()  # bit for bit, NaN payloads and -0.0 included
        else:
            assert np.array_equal(page.astype(np.float64), flipped.astype(np.float64))
            assert np.array_equal(page[0], flipped[0])  # first TIFF row == last MRC row

    # restore: byte for byte
    restored = directory / "restored.mrc"
    restore_result = restore_movie(output, restored)
    assert restored.read_bytes() == raw
    assert restore_result.sha256 == result.source_sha256
    assert temporaries_in(directory) == []


@pytest.mark.parametrize("kind", sorted(MODE_KINDS))
@settings(max_examples=12)
@given(data=st.data())
def test_round_trip_every_mode(kind: str, data: st.DataObject) -> None:
    movie = data.draw(movies(kind))
    codec = data.draw(st.sampled_from(["auto", "lzw", "deflate", "zstd", "none"]))
    threads = data.draw(st.sampled_from([1, 2]))
    with tempfile.TemporaryDirectory() as directory:
        check_round_trip(movie, Path(directory), codec=codec, threads=threads)


# explicit bit-level edge cases, each its own example so a failure names it
EDGE_CASES: dict[str, tuple[np.ndarray, str]] = {
    "negative_zero": (np.array([[[0.0, -0.0], [1.0, 2.0]]], dtype=np.float32), "float32"),
    "nan_payload": (np.array([[[0x7FC0BEEF, 0x3F800000]]], dtype=np.uint32).view(np.float32), "float32"),
    "signalling_nan": (np.array([[[0x7F800001, 0]]], dtype=np.uint32).view(np.float32), "float32"),
    "inf": (np.array([[[np.inf, 1.0], [-np.inf, 0.0]]], dtype=np.float32), "float32"),
    "non_integer": (np.array([[[0.5, 1.0]]], dtype=np.float32), "float32"),
    "subnormal": (np.array([[[1e-45, 1.0]]], dtype=np.float32), "float32"),
    "counts_uint8": (np.array([[[0, 255], [3, 1]]], dtype=np.float32), "uint8"),
    "needs_uint16": (np.array([[[0, 256]]], dtype=np.float32), "uint16"),
    "negative_int16": (np.array([[[-1, 255]]], dtype=np.float32), "int16"),
    "needs_uint32": (np.array([[[0, 65536]]], dtype=np.float32), "uint32"),
    "needs_int32": (np.array([[[-40000, 1]]], dtype=np.float32), "int32"),
    "past_uint32": (np.array([[[0, 2.0**32]]], dtype=np.float32), "float32"),
    "uint32_top": (np.array([[[0, 4294967040.0]]], dtype=np.float32), "uint32"),
    "int32_bottom": (np.array([[[-(2.0**31), 7]]], dtype=np.float32), "int32"),
    "below_int32": (np.array([[[-(2.0**31) - 256, 7]]], dtype=np.float32), "float32"),
    "float16_counts": (np.array([[[0, 7], [2048, 1]]], dtype=np.float16), "uint16"),
    "float16_negative_zero": (np.array([[[-0.0, 7]]], dtype=np.float16), "float16"),
    "float16_nan_payload": (np.array([[[0x7E01, 0x3C00]]], dtype=np.uint16).view(np.float16), "float16"),
    "int8_negative": (np.array([[[-128, 127]]], dtype=np.int8), "int16"),
    "int8_positive": (np.array([[[0, 127]]], dtype=np.int8), "uint8"),
    "int16_small": (np.array([[[0, 255]]], dtype=np.int16), "uint8"),
    "uint16_full": (np.array([[[0, 65535]]], dtype=np.uint16), "uint16"),
}


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_round_trip_edge_cases(tmp_path: Path, case: str, byte_order: str) -> None:
    values, expected = EDGE_CASES[case]
    mode = {"float32": 2, "float16": 12, "int8": 0, "int16": 1, "uint16": 6}[values.dtype.name]
    movie = Movie(values, mode, byte_order, None, b"\x07" * 96, b"FEI2")
    assert expected_storage(values) == expected
    check_round_trip(movie, tmp_path, codec="auto", threads=1)


@pytest.mark.parametrize("codec", ["auto", "lzw", "deflate", "zstd", "none"])
def test_counts_movie_every_codec(tmp_path: Path, counts_movie: Path, codec: str) -> None:
    result = convert_movie(counts_movie, tmp_path / f"{codec}.tif", codec=codec, threads=2)
    assert result.decision.stored_dtype == "uint8"
    with tifffile.TiffFile(tmp_path / f"{codec}.tif") as tiff:
        compression = tiff.pages.first.compression
    assert compression == {"auto": 8, "lzw": 5, "deflate": 8, "zstd": 50000, "none": 1}[codec]
    restore_movie(tmp_path / f"{codec}.tif", tmp_path / f"{codec}.mrc")
    assert (tmp_path / f"{codec}.mrc").read_bytes() == counts_movie.read_bytes()


@pytest.mark.parametrize(("codec", "level"), [("deflate", 1), ("deflate", 9), ("zstd", 1), ("zstd", 19)])
def test_levels(tmp_path: Path, counts_movie: Path, codec: str, level: int) -> None:
    result = convert_movie(counts_movie, tmp_path / "out.tif", codec=codec, level=level)
    assert f"level {level}" in result.codec
    restore_movie(tmp_path / "out.tif", tmp_path / "back.mrc")
    assert (tmp_path / "back.mrc").read_bytes() == counts_movie.read_bytes()


@pytest.mark.parametrize(
    ("codec", "level"), [("deflate", 10), ("zstd", 0), ("lzw", 3), ("auto", 12), ("auto", -1)]
)
def test_bad_level_is_an_input_error(tmp_path: Path, counts_movie: Path, codec: str, level: int) -> None:
    with pytest.raises(InputError, match="level"):
        convert_movie(counts_movie, tmp_path / "out.tif", codec=codec, level=level)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["movie.mrc"]


# ------------------------------------------------------------------ result, record, determinism


def test_result_and_record(tmp_path: Path, rng: np.random.Generator) -> None:
    values = counts(rng, (3, 40, 50))
    extended = bytes(range(256)) * 2
    source = write_mrc(
        tmp_path / "rec.mrc",
        values,
        mode=2,
        extended_header=extended,
        exttyp=b"FEI1",
        pixel_size_angstrom=1.1,
    )
    raw = source.read_bytes()
    output = tmp_path / "rec.tif"
    result = convert_movie(source, output)
    assert result.n_frames == 3
    assert result.frame_shape == (40, 50)
    assert result.source_mode == 2
    assert result.source_size_bytes == len(raw)
    assert result.output_size_bytes == output.stat().st_size
    assert result.output_sha256 == hashlib.sha256(output.read_bytes()).hexdigest()
    assert result.output_md5 == hashlib.md5(output.read_bytes()).hexdigest()
    assert result.ratio == pytest.approx(len(raw) / output.stat().st_size)
    assert result.ratio > 3
    assert result.trial_sizes_bytes  # auto ran a trial
    with tifffile.TiffFile(output) as tiff:
        record = json.loads(tiff.pages.first.description)
        later_descriptions = [page.description for page in list(tiff.pages)[1:]]  # type: ignore[union-attr]
    assert all(not description for description in later_descriptions)
    assert record["format"] == "empcompress"
    assert record["tool"] == "empcompress"
    assert record["tool_version"]
    assert "flipped" in record["row_convention"]
    assert record["source"]["name"] == "rec.mrc"
    assert record["source"]["size_bytes"] == len(raw)
    assert record["source"]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(record["source"]["header_b64"]) == raw[:1024]
    assert base64.b64decode(record["source"]["extended_header_b64"]) == extended
    assert record["source"]["exttyp"] == "FEI1"
    assert record["source"]["pixel_size_angstrom"] == pytest.approx(1.1)
    assert record["storage"]["stored_dtype"] == "uint8"
    assert record["storage"]["is_integer"] is True


def test_output_does_not_depend_on_threads(tmp_path: Path, counts_movie: Path) -> None:
    one = convert_movie(counts_movie, tmp_path / "one.tif", threads=1)
    two = convert_movie(counts_movie, tmp_path / "two.tif", threads=2)
    assert one.output_sha256 == two.output_sha256


def test_several_strips_per_frame(tmp_path: Path, rng: np.random.Generator) -> None:
    values = rng.poisson(1.0, size=(2, 700, 1000)).astype(np.float32)  # 700 KB per uint8 frame
    source = write_mrc(tmp_path / "wide.mrc", values, mode=2)
    convert_movie(source, tmp_path / "wide.tif", codec="lzw", threads=2)
    with tifffile.TiffFile(tmp_path / "wide.tif") as tiff:
        assert all(len(page.dataoffsets) >= 2 for page in tiff.pages)  # type: ignore[union-attr]
    restore_movie(tmp_path / "wide.tif", tmp_path / "wide_back.mrc")
    assert (tmp_path / "wide_back.mrc").read_bytes() == source.read_bytes()


def test_bigtiff_output_round_trips(
    tmp_path: Path, counts_movie: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write, "CLASSIC_TIFF_LIMIT_BYTES", 4096)
    convert_movie(counts_movie, tmp_path / "big.tif")
    with tifffile.TiffFile(tmp_path / "big.tif") as tiff:
        assert tiff.is_bigtiff
        assert all(page.tags[339].value == 1 for page in tiff.pages)  # type: ignore[union-attr]
    restore_movie(tmp_path / "big.tif", tmp_path / "big.mrc")
    assert (tmp_path / "big.mrc").read_bytes() == counts_movie.read_bytes()


def test_progress_reports_every_pass(tmp_path: Path, counts_movie: Path) -> None:
    seen: dict[str, int] = {}

    def progress(stage: str, n_bytes: int) -> None:
        seen[stage] = seen.get(stage, 0) + n_bytes

    convert_movie(counts_movie, tmp_path / "p.tif", progress=progress)
    data_bytes = 4 * 64 * 80 * 4
    # one read of the source (hashed and encoded together), one decode of the output
    assert seen == {"encode": data_bytes, "verify": data_bytes}


def test_packed_4bit_lookalike_warns(
    tmp_path: Path, counts_movie: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write, "PACKED_4BIT_LOOKALIKE_SHAPES", {(64, 80)})
    result = convert_movie(counts_movie, tmp_path / "w.tif")
    assert len(result.warnings) == 1
    assert "4-bit" in result.warnings[0]
    monkeypatch.setattr(write, "PACKED_4BIT_LOOKALIKE_SHAPES", set())
    assert convert_movie(counts_movie, tmp_path / "w2.tif").warnings == ()


# ------------------------------------------------------------------ refusing


def test_existing_output_is_kept(tmp_path: Path, counts_movie: Path) -> None:
    output = tmp_path / "out.tif"
    output.write_bytes(b"precious")
    with pytest.raises(InputError, match="already exists"):
        convert_movie(counts_movie, output)
    assert output.read_bytes() == b"precious"
    convert_movie(counts_movie, output, overwrite=True)
    assert output.read_bytes()[:4] == b"II*\0"
    assert temporaries_in(tmp_path) == []


def test_output_cannot_be_the_source(tmp_path: Path, counts_movie: Path) -> None:
    raw = counts_movie.read_bytes()
    with pytest.raises(InputError, match="source"):
        convert_movie(counts_movie, counts_movie, overwrite=True)
    assert counts_movie.read_bytes() == raw


def test_output_directory_must_exist(tmp_path: Path, counts_movie: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        convert_movie(counts_movie, tmp_path / "nowhere" / "out.tif")


def test_mode_101_odd_width_with_padding_bits(tmp_path: Path, rng: np.random.Generator) -> None:
    """Non-zero pad nibbles cannot be stored in the TIFF: round trip or refuse, never a wrong file."""
    values = rng.integers(0, 16, size=(2, 4, 5)).astype(np.uint8)
    source = write_mrc(tmp_path / "pad.mrc", values, mode=101, pad_nibble=9)
    raw = source.read_bytes()
    output = tmp_path / "pad.tif"
    try:
        convert_movie(source, output)
    except EmpCompressError as error:
        assert str(source) in str(error) or "pad.tif" in str(error)
        assert sorted(path.name for path in tmp_path.iterdir()) == ["pad.mrc"]
    else:
        restore_movie(output, tmp_path / "back.mrc")
        assert (tmp_path / "back.mrc").read_bytes() == raw
    assert source.read_bytes() == raw


def test_source_values_dtype_helper_agrees() -> None:
    assert source_values_dtype(2, ">") == np.dtype(">f4")
    assert source_values_dtype(0, "<", unsigned_bytes=True) == np.dtype("u1")


@pytest.mark.parametrize("stage", ["encode", "verify"])
def test_interrupted_conversion_leaves_nothing(tmp_path: Path, counts_movie: Path, stage: str) -> None:
    raw = counts_movie.read_bytes()

    def progress(current: str, n_bytes: int) -> None:
        if current == stage:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_movie(counts_movie, tmp_path / "out.tif", progress=progress, threads=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["movie.mrc"]
    assert counts_movie.read_bytes() == raw


@pytest.mark.parametrize("cella_x", [1e-20, 1e-3, 0.8, 1e30, math.inf, math.nan, -5.0, 0.0])
def test_any_pixel_size_in_the_header(tmp_path: Path, cella_x: float) -> None:
    """Garbage cell sizes are common in old headers; they must not stop a conversion."""
    values = np.ones((1, 4, 4), dtype=np.float32)
    source = write_mrc(tmp_path / "px.mrc", values, mode=2, header_overrides={"cella_x": cella_x})
    convert_movie(source, tmp_path / "px.tif")
    restore_movie(tmp_path / "px.tif", tmp_path / "back.mrc")
    assert (tmp_path / "back.mrc").read_bytes() == source.read_bytes()


@pytest.mark.parametrize("n_frames", [1, 2, 5])
def test_survey_hashes_the_same_with_a_hashing_thread(
    tmp_path: Path, rng: np.random.Generator, n_frames: int
) -> None:
    """survey_movie(threads > 1) hashes on a helper thread from two alternating read buffers."""
    from empcompress.convert import survey_movie

    frames = counts(rng, (n_frames, 48, 40), dose=2.0)
    frames[-1, 0, 0] = 0.5  # the last frame decides the storage type: it must be seen
    source = write_mrc(tmp_path / "src.mrc", frames, mode=2)
    expected = hashlib.sha256(source.read_bytes()).hexdigest()
    serial = survey_movie(source)
    for threads in (2, 3):
        threaded = survey_movie(source, threads=threads)
        assert threaded.sha256 == serial.sha256 == expected
        assert threaded.stats == serial.stats and threaded.decision == serial.decision
        assert not threaded.decision.is_integer


# ------------------------------------------------------------ incompressible data, small frames, disk errors


def test_auto_stores_incompressible_uint8_counts_uncompressed(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    values = rng.integers(0, 256, size=(6, 128, 160), dtype=np.uint8)  # random 8-bit counts: no redundancy
    source = write_mrc(tmp_path / "noise.mrc", values, mode=0, imod_flags=0)
    result = convert_movie(source, tmp_path / "noise.tif")
    assert result.decision.stored_dtype == "uint8"
    assert result.codec == "none"
    assert result.trial_sizes_bytes["none"] < min(
        size for label, size in result.trial_sizes_bytes.items() if label != "none"
    )
    # only the TIFF structure and the record (with the original header) beyond the source's data
    assert result.output_size_bytes < values.nbytes + 16 * 1024
    assert len(result.warnings) == 1 and "do not compress" in result.warnings[0]
    assert "never" not in result.warnings[0]
    restored = tmp_path / "restored.mrc"
    restore_movie(tmp_path / "noise.tif", restored)
    assert restored.read_bytes() == source.read_bytes()


def test_an_explicit_codec_that_expands_says_what_auto_does(tmp_path: Path, rng: np.random.Generator) -> None:
    values = rng.integers(0, 256, size=(4, 64, 64), dtype=np.uint8)
    source = write_mrc(tmp_path / "noise.mrc", values, mode=0, imod_flags=0)
    result = convert_movie(source, tmp_path / "noise.tif", codec="lzw")
    assert result.output_size_bytes > source.stat().st_size
    assert any("--codec auto keeps the smallest" in warning for warning in result.warnings)


def test_small_frames_use_one_thread_and_give_the_same_file(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import empcompress.convert
    import empcompress.kernels
    from empcompress.mrc import read_header

    source = write_mrc(tmp_path / "tiny.mrc", counts(rng, (300, 2, 3)), mode=2)
    header = read_header(source)
    assert empcompress.convert.threads_for_frames(header, 8) == 1
    convert_movie(source, tmp_path / "single.tif", threads=8)
    # the threaded path, as for big frames
    monkeypatch.setattr(empcompress.kernels, "SINGLE_THREAD_FRAME_BYTES", 0)
    assert empcompress.convert.threads_for_frames(header, 8) == 8
    convert_movie(source, tmp_path / "threaded.tif", threads=8)
    assert (tmp_path / "single.tif").read_bytes() == (tmp_path / "threaded.tif").read_bytes()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(28, "No space left on device"), "No space left on device"),
        (PermissionError(13, "Permission denied", "TEMP"), "Permission denied"),
    ],
)
def test_write_errors_name_the_output_not_the_temporary(
    tmp_path: Path, counts_movie: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, expected: str
) -> None:
    import empcompress.convert.write_pass

    real_write = empcompress.convert.write_pass.write_tiff_attempt

    def write_then_fail(path: Path, *args: object, **kwargs: object) -> None:
        real_write(path, *args, **kwargs)  # type: ignore[arg-type]
        if error.filename == "TEMP":
            raise type(error)(error.errno, error.strerror, str(path))
        raise error

    monkeypatch.setattr(empcompress.convert.write_pass, "write_tiff_attempt", write_then_fail)
    output = tmp_path / "out.tif"
    with pytest.raises(OSError) as caught:
        convert_movie(counts_movie, output)
    assert caught.value.errno == error.errno
    assert caught.value.filename == str(output)
    assert expected in str(caught.value)
    assert not output.exists()
    assert temporaries_in(tmp_path) == []


# ------------------------------------------------------------------ the package's names


def test_the_public_names_stay_importable_from_the_package() -> None:
    """convert is a package of modules; what callers import from ``empcompress.convert`` stays there."""
    import empcompress.convert
    from empcompress.convert import api, survey, with_gain

    assert sorted(empcompress.convert.__all__) == [
        "ConversionResult",
        "MovieSurvey",
        "convert_movie",
        "survey_movie",
    ]
    for module, names in {
        api: ("ConversionResult", "convert_movie", "threads_for_frames", "TINY_FRAME_BYTES"),
        survey: ("MovieSurvey", "survey_movie"),
        with_gain: ("HELD_SAMPLE_BYTES",),
    }.items():
        for name in names:
            assert getattr(empcompress.convert, name) is getattr(module, name), name
    assert empcompress.convert.ProgressCallback is not None
