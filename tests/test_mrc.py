"""MRC reader: header parsing and validation, every mode, both byte orders, frames."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
import threading
import time
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from mounts import overlay
from mrc_factory import mrc_bytes, pack_nibbles, source_values_dtype, write_mrc

import empcompress.mrc.movie
import empcompress.mrc.readahead
from empcompress.errors import (
    EmpCompressError,
    HeaderMismatchError,
    InputError,
    NotMrcError,
    TruncatedFileError,
    UnsupportedModeError,
)
from empcompress.mrc import MrcMovie, pack_4bit, parse_header, read_header, unpack_4bit
from empcompress.mrc.readahead import PAGE_BYTES, cached_page_count, page_cache_counted

NZ, NY, NX = 3, 10, 14


def values_for_mode(mode: int, rng: np.random.Generator, shape: tuple[int, ...] = (NZ, NY, NX)) -> np.ndarray:
    """Random values covering the range of ``mode`` (native byte order)."""
    if mode == 0:
        return rng.integers(-128, 128, size=shape).astype(np.int8)
    if mode == 1:
        return rng.integers(-32768, 32768, size=shape).astype(np.int16)
    if mode == 6:
        return rng.integers(0, 65536, size=shape).astype(np.uint16)
    if mode == 2:
        return (rng.standard_normal(shape) * 1e3).astype(np.float32)
    if mode == 12:
        return (rng.standard_normal(shape) * 100).astype(np.float16)
    if mode == 101:
        return rng.integers(0, 16, size=shape).astype(np.uint8)
    raise AssertionError(mode)


def assert_same_values(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal shape, equal value type, equal bits (so NaN and -0.0 count)."""
    assert actual.shape == expected.shape
    assert actual.dtype.newbyteorder("=") == expected.dtype.newbyteorder("=")
    native = actual.astype(actual.dtype.newbyteorder("="))
    other = expected.astype(expected.dtype.newbyteorder("="))
    assert native.tobytes() == other.tobytes()


# ------------------------------------------------------------------ every mode, both byte orders


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("mode", [0, 1, 2, 6, 12])
def test_frames_equal_mrcfile(tmp_path: Path, rng: np.random.Generator, mode: int, byte_order: str) -> None:
    values = values_for_mode(mode, rng)
    path = write_mrc(
        tmp_path / "m.mrc", values, mode=mode, byte_order=byte_order, labels=["made by the tests"]
    )
    with mrcfile.open(path, permissive=False) as reference, MrcMovie(path) as movie:
        header = movie.header
        assert (header.nx, header.ny, header.nz, header.mode) == (NX, NY, NZ, mode)
        assert header.byte_order == byte_order
        assert header.value_dtype == source_values_dtype(mode, byte_order)
        assert header.labels == ("made by the tests",)
        expected = np.asarray(reference.data)
        for index in range(NZ):
            frame = movie.read_frame(index)
            assert frame.dtype == header.value_dtype
            assert_same_values(frame, expected[index])
            assert_same_values(frame, values[index])


@pytest.mark.parametrize("mode", [0, 1, 2, 6, 12])
def test_reads_files_written_by_mrcfile(tmp_path: Path, rng: np.random.Generator, mode: int) -> None:
    values = values_for_mode(mode, rng)
    path = tmp_path / "written_by_mrcfile.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(values)
        mrc.voxel_size = 1.25
    with MrcMovie(path) as movie:
        assert movie.header.mode == mode
        assert movie.header.pixel_size_angstrom == pytest.approx(1.25)
        frames = [movie.read_frame(index).copy() for index in range(NZ)]
    assert_same_values(np.stack(frames), values)


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("nx", [1, 2, 7, 14, 15])
def test_mode_101_packed_4bit(tmp_path: Path, rng: np.random.Generator, nx: int, byte_order: str) -> None:
    values = rng.integers(0, 16, size=(2, 5, nx)).astype(np.uint8)
    path = write_mrc(tmp_path / "packed.mrc", values, mode=101, byte_order=byte_order, pad_nibble=0)
    header = read_header(path)
    assert header.frame_size_bytes == 5 * ((nx + 1) // 2)
    assert header.value_dtype == np.uint8
    with MrcMovie(path) as movie:
        for index in range(2):
            assert np.array_equal(movie.read_frame(index), values[index])
            raw = movie.read_raw_frame(index).copy()
            assert raw.tobytes() == pack_nibbles(values[index])


def test_mode_101_low_nibble_first(tmp_path: Path) -> None:
    values = np.array([[[1, 2, 3]]], dtype=np.uint8)
    raw = mrc_bytes(values, mode=101)
    assert raw[1024:] == bytes([0x21, 0x03])
    path = tmp_path / "tiny.mrc"
    path.write_bytes(raw)
    with MrcMovie(path) as movie:
        assert movie.read_frame(0).tolist() == [[1, 2, 3]]


@given(
    values=hnp.arrays(
        np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=9), elements=st.integers(0, 15)
    ),
    pad=st.integers(0, 15),
)
def test_pack_unpack_round_trip(values: np.ndarray, pad: int) -> None:
    ny, nx = values.shape
    packed_reference = np.frombuffer(pack_nibbles(values, pad_nibble=pad), dtype=np.uint8).reshape(
        ny, (nx + 1) // 2
    )
    assert np.array_equal(unpack_4bit(packed_reference, nx=nx), values)
    pads = np.full(ny, pad, dtype=np.uint8)
    assert np.array_equal(pack_4bit(values, pad_nibbles=pads), packed_reference)
    if nx % 2 == 0 or pad == 0:
        assert np.array_equal(pack_4bit(values), packed_reference)


# ------------------------------------------------------------------ mode 0 signedness


@pytest.mark.parametrize(
    ("imod_flags", "expected_dtype"),
    [(None, np.int8), (1, np.int8), (0, np.uint8), (2, np.uint8), (3, np.int8)],
)
def test_mode_0_signedness_follows_imod_flags(
    tmp_path: Path, rng: np.random.Generator, imod_flags: int | None, expected_dtype: type
) -> None:
    values = rng.integers(0, 256, size=(2, 4, 6)).astype(np.uint8)
    path = write_mrc(tmp_path / "bytes.mrc", values, mode=0, imod_flags=imod_flags)
    with MrcMovie(path) as movie:
        assert movie.header.bytes_are_signed == (expected_dtype == np.int8)
        frame = movie.read_frame(1)
        assert frame.dtype == expected_dtype
        assert frame.tobytes() == values[1].tobytes()
        assert np.array_equal(frame, values[1].view(expected_dtype))


# ------------------------------------------------------------------ headers


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize(
    ("exttyp", "extended_size"), [(b"FEI1", 128 * 3), (b"FEI2", 100), (b"SERI", 1024), (b"", 7)]
)
def test_extended_header_and_labels(
    tmp_path: Path, rng: np.random.Generator, byte_order: str, exttyp: bytes, extended_size: int
) -> None:
    extended = rng.integers(0, 256, size=extended_size).astype(np.uint8).tobytes()
    values = values_for_mode(2, rng)
    labels = [f"label {index}" for index in range(10)]
    raw = mrc_bytes(
        values, mode=2, byte_order=byte_order, extended_header=extended, exttyp=exttyp, labels=labels
    )
    path = tmp_path / "ext.mrc"
    path.write_bytes(raw)
    with MrcMovie(path) as movie:
        header = movie.header
        assert header.extended_header_size_bytes == extended_size
        assert header.exttyp == exttyp.decode()
        assert header.labels == tuple(labels)
        assert header.data_offset_bytes == 1024 + extended_size
        assert movie.read_header_bytes() == raw[:1024]
        assert movie.read_extended_header_bytes() == extended
        for index in range(NZ):
            assert_same_values(movie.read_frame(index), values[index])
    with mrcfile.open(path, permissive=True) as reference:
        assert np.array_equal(np.asarray(reference.data), values)


def test_header_fields(tmp_path: Path, rng: np.random.Generator) -> None:
    values = values_for_mode(1, rng)
    path = write_mrc(tmp_path / "h.mrc", values, mode=1, pixel_size_angstrom=0.5, ispg=401, labels=["a", "b"])
    header = read_header(path)
    assert header.pixel_size_angstrom == pytest.approx(0.5)
    assert header.voxel_size_angstrom == pytest.approx((0.5, 0.5, 0.5))
    assert header.ispg == 401
    assert header.labels == ("a", "b")
    assert header.frame_shape == (NY, NX)
    assert header.n_frames == NZ
    assert header.file_size_bytes == os.path.getsize(path) == header.expected_file_size_bytes
    assert header.path_name == str(path)


def test_label_count_is_clipped(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_mrc(
        tmp_path / "l.mrc", values_for_mode(2, rng), mode=2, labels=["x"], header_overrides={"nlabl": 99}
    )
    assert len(read_header(path).labels) == 10
    path = write_mrc(tmp_path / "l2.mrc", values_for_mode(2, rng), mode=2, header_overrides={"nlabl": -3})
    assert read_header(path).labels == ()


@pytest.mark.parametrize("byte_order", ["<", ">"])
@pytest.mark.parametrize("map_word", [True, False])
def test_machine_stamp_zeroed(
    tmp_path: Path, rng: np.random.Generator, byte_order: str, map_word: bool
) -> None:
    values = values_for_mode(6, rng)
    path = write_mrc(
        tmp_path / "z.mrc", values, mode=6, byte_order=byte_order, machst=False, map_word=map_word
    )
    with MrcMovie(path) as movie:
        assert movie.header.byte_order == byte_order
        assert_same_values(movie.read_frame(2), values[2])


# ------------------------------------------------------------------ validation


def write_raw(tmp_path: Path, raw: bytes, name: str = "bad.mrc") -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


def good_bytes(rng: np.random.Generator, **options: object) -> bytes:
    return mrc_bytes(values_for_mode(2, rng), mode=2, **options)  # type: ignore[arg-type]


def bad_inputs(rng: np.random.Generator) -> dict[str, tuple[bytes, type[InputError]]]:
    good = good_bytes(rng)
    values = values_for_mode(2, rng)
    return {
        "empty": (b"", NotMrcError),
        "shorter_than_header": (good[:500], NotMrcError),
        "not_mrc_text": ((b"this is a text file, not a movie\n" * 100), NotMrcError),
        "not_mrc_zeros": (bytes(4096), NotMrcError),
        "truncated_data": (good[:-1], TruncatedFileError),
        "truncated_frame": (good[: 1024 + NY * NX * 4 + 3], TruncatedFileError),
        "header_only": (good[:1024], TruncatedFileError),
        "extra_bytes": (good + b"\0" * 16, HeaderMismatchError),
        "unknown_mode_3": (mrc_bytes(values, mode=2, header_overrides={"mode": 3}), UnsupportedModeError),
        "unknown_mode_4": (mrc_bytes(values, mode=2, header_overrides={"mode": 4}), UnsupportedModeError),
        "zero_frames": (mrc_bytes(values, mode=2, header_overrides={"nz": 0}), HeaderMismatchError),
        "zero_width": (mrc_bytes(values, mode=2, header_overrides={"nx": 0}), HeaderMismatchError),
        "negative_height": (mrc_bytes(values, mode=2, header_overrides={"ny": -4}), HeaderMismatchError),
        "negative_extended": (
            mrc_bytes(values, mode=2, header_overrides={"nsymbt": -8}),
            HeaderMismatchError,
        ),
        "extended_too_large": (
            mrc_bytes(values, mode=2, header_overrides={"nsymbt": 64}),
            TruncatedFileError,
        ),
    }


BAD_INPUT_NAMES = sorted(bad_inputs(np.random.default_rng(0)))


@pytest.mark.parametrize("kind", BAD_INPUT_NAMES)
def test_bad_headers_raise_input_errors_naming_the_file(
    tmp_path: Path, rng: np.random.Generator, kind: str
) -> None:
    raw, error_type = bad_inputs(rng)[kind]
    path = write_raw(tmp_path, raw, name=f"{kind}.mrc")
    with pytest.raises(error_type) as caught:
        read_header(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)
    with pytest.raises(error_type):
        MrcMovie(path)
    assert path.read_bytes() == raw  # never modified


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(NotMrcError, match="no such file"):
        read_header(tmp_path / "missing.mrc")
    with pytest.raises(NotMrcError, match="directory"):
        read_header(tmp_path)


def test_parse_header_directly(rng: np.random.Generator) -> None:
    raw = good_bytes(rng)
    header = parse_header(raw[:1024], path_name="x.mrc", file_size_bytes=len(raw))
    assert header.nz == NZ
    with pytest.raises(TruncatedFileError, match=r"x\.mrc"):
        parse_header(raw[:1024], path_name="x.mrc", file_size_bytes=len(raw) - 1)


@pytest.mark.parametrize(
    "error_type", [NotMrcError, TruncatedFileError, UnsupportedModeError, HeaderMismatchError]
)
def test_errors_pickle(error_type: type[EmpCompressError]) -> None:
    error = error_type("/data/movie.mrc: something is wrong; do this")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is error_type
    assert str(copy) == str(error)
    assert isinstance(copy, InputError)


# ------------------------------------------------------------------ frame access


def test_frame_index_out_of_range(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_raw(tmp_path, good_bytes(rng), name="ok.mrc")
    with MrcMovie(path) as movie:
        with pytest.raises(IndexError):
            movie.read_raw_frame(NZ)
        with pytest.raises(IndexError):
            movie.read_raw_frame(-1)


def test_file_truncated_after_opening(tmp_path: Path, rng: np.random.Generator) -> None:
    raw = good_bytes(rng)
    path = write_raw(tmp_path, raw, name="shrinks.mrc")
    with MrcMovie(path) as movie:
        os.truncate(path, len(raw) - 10)
        movie.read_raw_frame(0)
        with pytest.raises(TruncatedFileError, match="frame 2"):
            movie.read_raw_frame(NZ - 1)


def test_read_raw_frame_into_given_buffer(tmp_path: Path, rng: np.random.Generator) -> None:
    values = values_for_mode(1, rng)
    path = write_mrc(tmp_path / "b.mrc", values, mode=1)
    with MrcMovie(path) as movie:
        out = np.empty(movie.header.frame_size_bytes, dtype=np.uint8)
        result = movie.read_raw_frame(1, out=out)
        assert result is out
        assert out.tobytes() == values[1].tobytes()
        assert [frame.copy().tobytes() for frame in movie.iter_frames()] == [v.tobytes() for v in values]


def test_closed_movie_refuses_reads(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_raw(tmp_path, good_bytes(rng), name="ok.mrc")
    movie = MrcMovie(path)
    movie.close()
    with pytest.raises(ValueError, match="closed"):
        movie.read_frame(0)


# ---- read-ahead hints (posix_fadvise WILLNEED of the next frame, from a helper thread)


class _Advice:
    """Records posix_fadvise calls; the first one can be held until ``release`` is set."""

    def __init__(self, *, hold_first: bool = False) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self.lock = threading.Lock()
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def __call__(self, descriptor: int, offset: int, length: int, advice: int) -> None:
        self.started.set()
        self.release.wait(timeout=10)
        with self.lock:
            self.calls.append((offset, length, advice))


def _hinted(advice: _Advice) -> set[int]:
    return {byte for offset, length, _ in advice.calls for byte in range(offset, offset + length)}


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")
def test_prefetch_hints_the_whole_frame_window_by_window(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Linux reads at most one read-ahead window per call: one call for a whole frame would
    # bring in only its first window
    values = values_for_mode(2, rng, shape=(3, 40, 50))
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    advice = _Advice()
    monkeypatch.setattr(os, "posix_fadvise", advice)
    monkeypatch.setattr(empcompress.mrc.movie, "read_ahead_window_bytes", lambda path: 300)
    with MrcMovie(path) as movie:
        header = movie.header
        movie.prefetch(1)
        movie.prefetch(3)  # out of range: nothing
        movie.prefetch(-1)
    # closing waited for the helper
    start = header.data_offset_bytes + header.frame_size_bytes
    assert _hinted(advice) == set(range(start, start + header.frame_size_bytes))
    assert all(length <= 300 and kind == os.POSIX_FADV_WILLNEED for _, length, kind in advice.calls)
    assert len(advice.calls) == -(-header.frame_size_bytes // 300)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")
def test_prefetch_superseded_by_the_next_hint(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = values_for_mode(2, rng, shape=(4, 40, 50))
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    advice = _Advice(hold_first=True)
    monkeypatch.setattr(os, "posix_fadvise", advice)
    monkeypatch.setattr(empcompress.mrc.movie, "read_ahead_window_bytes", lambda path: 100)
    with MrcMovie(path) as movie:
        header = movie.header
        movie.prefetch(0)
        assert advice.started.wait(timeout=10)  # the helper is in its first call for frame 0
        movie.prefetch(2)  # supersedes the rest of frame 0
        advice.release.set()
        n_pieces = -(-header.frame_size_bytes // 100)
        for _ in range(1000):  # frame 2's hints, all of them, then close
            if len(advice.calls) == 1 + n_pieces:
                break
            threading.Event().wait(0.01)
    frames = [(offset - header.data_offset_bytes) // header.frame_size_bytes for offset, _, _ in advice.calls]
    assert frames == [0] + [2] * n_pieces  # frame 0 stopped after the call in flight


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise on this platform")
def test_prefetch_stops_on_close(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = values_for_mode(2, rng, shape=(3, 40, 50))
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    advice = _Advice(hold_first=True)
    monkeypatch.setattr(os, "posix_fadvise", advice)
    monkeypatch.setattr(empcompress.mrc.movie, "read_ahead_window_bytes", lambda path: 100)
    movie = MrcMovie(path)
    movie.prefetch(1)
    assert advice.started.wait(timeout=10)
    closing = threading.Thread(target=movie.close)
    closing.start()
    closing.join(timeout=0.2)
    assert closing.is_alive()  # close waits for the call in flight (its descriptor stays open)
    advice.release.set()
    closing.join(timeout=10)
    assert not closing.is_alive()
    assert len(advice.calls) == 1  # and no hint after it
    with pytest.raises(ValueError, match="closed"):
        movie.prefetch(1)


def test_prefetch_without_posix_fadvise(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = values_for_mode(2, rng)
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    with MrcMovie(path) as movie:
        movie.prefetch(1)
        assert np.array_equal(movie.read_frame(1), values[1])


def test_read_ahead_window_bytes(tmp_path: Path) -> None:
    window = empcompress.mrc.readahead.read_ahead_window_bytes(tmp_path)
    assert 0 < window <= empcompress.mrc.readahead.MAX_PREFETCH_PIECE_BYTES
    missing = empcompress.mrc.readahead.read_ahead_window_bytes(tmp_path / "missing")
    assert missing == empcompress.mrc.readahead.DEFAULT_READ_AHEAD_BYTES


# ---- reads ahead into the movie's own buffer (O_DIRECT where the file system takes it)


def direct_reads_work(directory: Path) -> bool:
    """Whether files in ``directory`` can be opened with O_DIRECT (tmpfs and some file systems refuse)."""
    probe = directory / "o_direct_probe"
    probe.write_bytes(b"\0" * 8192)
    try:
        descriptor = os.open(probe, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    os.close(descriptor)
    return hasattr(os, "O_DIRECT")


def evict(path: Path, size_bytes: int = 0) -> None:
    """Drop the file's first ``size_bytes`` (0: all) from the page cache."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
        os.posix_fadvise(handle.fileno(), 0, size_bytes, os.POSIX_FADV_DONTNEED)


def page_map(path: Path) -> str:
    """The file's pages, "x" for one in the page cache and read in, "." for one not (or still being read).

    From ``mincore``, which reads nothing, unlike a probing read (even one that may not wait: one that
    misses starts reading its page). It tells the page cache only of files one owns or may write; of
    others it says every page is in."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    length_bytes = -(-path.stat().st_size // mmap.PAGESIZE) * mmap.PAGESIZE
    pages = ctypes.create_string_buffer(length_bytes // mmap.PAGESIZE)
    with open(path, "rb") as handle:
        address = libc.mmap(None, length_bytes, mmap.PROT_READ, mmap.MAP_SHARED, handle.fileno(), 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path}")
        try:
            if libc.mincore(address, length_bytes, pages) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path}")
        finally:
            libc.munmap(address, length_bytes)
    return "".join("x" if page & 1 else "." for page in pages.raw)


def evict_wholly(path: Path) -> None:
    """Drop the whole file from the page cache, and check that none of it is left (:func:`page_map`).

    Skips the test where every page stays (tmpfs, whose files live in memory, or a file whose page cache
    ``mincore`` does not tell)."""
    for attempt in range(50):  # a page being read or written back is not dropped: again, a moment later
        evict(path)
        left = page_map(path)
        if "x" not in left:
            return
        if attempt == 0 and "." not in left:
            pytest.skip(f"{path}: every page stays in the page cache (tmpfs?): nothing to evict")
        time.sleep(0.02)
    raise AssertionError(f"{path} stays in the page cache: {page_map(path)}")


def hints_done(movie: MrcMovie) -> None:
    """Wait until the movie's helper has sent every ``WILLNEED`` hint asked of it so far."""
    if movie._prefetcher is not None:
        movie._prefetcher._pool.submit(lambda: None).result(timeout=30)  # one thread: hints come first


class _DirectReads:
    """Counts os.preadv calls on the movie's O_DIRECT descriptor (and may fail them)."""

    def __init__(self, movie: MrcMovie, fail: str | None = None) -> None:
        self.movie = movie
        self.fail = fail
        self.calls = 0
        self.original = os.preadv

    def __call__(self, descriptor: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
        direct = self.movie._direct
        if direct is None or descriptor != direct.descriptor:
            return self.original(descriptor, buffers, offset, *flags)
        self.calls += 1
        if self.fail == "error":
            buffers[0][:] = b"\xaa" * len(buffers[0])  # scribbles, then fails
            raise OSError(5, "Input/output error")
        if self.fail == "short":
            n_read = self.original(descriptor, buffers, offset)
            buffers[0][: min(n_read, 10)] = b"\x55" * min(n_read, 10)
            return 0  # as at the end of a file that shrank
        return self.original(descriptor, buffers, offset)


@given(
    mode=st.sampled_from([0, 1, 2, 6, 12, 101]),
    byte_order=st.sampled_from(["<", ">"]),
    shape=st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 300)),
    extended_header_size=st.sampled_from([0, 1, 511, 512, 3072, 4095, 4096, 5000]),
    piece_blocks=st.integers(1, 3),
    force_direct=st.booleans(),
    steps=st.lists(
        st.tuples(st.sampled_from(["read", "ahead", "read into", "evict"]), st.integers(-1, 4)), max_size=12
    ),
)
def test_reads_ahead_give_the_files_bytes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: int,
    byte_order: str,
    shape: tuple[int, int, int],
    extended_header_size: int,
    piece_blocks: int,
    force_direct: bool,
    steps: list[tuple[str, int]],
) -> None:
    # any mix of reads, reads ahead (of the frame read next or another) and evictions from the page cache
    # returns exactly the bytes a plain read of the file gives, whatever the frames' alignment
    rng = np.random.default_rng([mode, *shape, extended_header_size])
    values = values_for_mode(mode, rng, shape=shape)
    path = write_mrc(
        tmp_path / f"ahead_{mode}.mrc",
        values,
        mode=mode,
        byte_order=byte_order,
        extended_header=bytes(rng.integers(0, 256, extended_header_size, dtype=np.uint8)),
    )
    raw = path.read_bytes()
    piece_bytes = piece_blocks * empcompress.mrc.readahead.DIRECT_BLOCK_BYTES
    monkeypatch.setattr(empcompress.mrc.readahead, "DIRECT_PIECE_BYTES", piece_bytes)
    if force_direct:  # every frame read ahead directly, whatever is cached (tiny frames share pages)
        monkeypatch.setattr(MrcMovie, "_cached_page_count", lambda movie, offset, size_bytes: 0)
    with MrcMovie(path) as movie:
        header = movie.header
        reads = _DirectReads(movie)
        monkeypatch.setattr(os, "preadv", reads)

        def expected(index: int) -> bytes:
            start = header.data_offset_bytes + index * header.frame_size_bytes
            return raw[start : start + header.frame_size_bytes]

        steps = [*steps, ("evict all", 0), ("ahead", 0), ("read", 0)]  # one direct read taken, at least
        for action, index in steps:
            if action.startswith("evict"):
                evict(path, 0 if action == "evict all" else len(raw) // 2)
            elif action == "ahead":
                movie.read_ahead(index)  # out of range: nothing
            elif not 0 <= index < header.nz:
                with pytest.raises(IndexError):
                    movie.read_raw_frame(index)
            elif action == "read":
                assert movie.read_raw_frame(index).tobytes() == expected(index)
            else:
                out = np.empty(header.frame_size_bytes, dtype=np.uint8)
                assert movie.read_raw_frame(index, out=out) is out
                assert out.tobytes() == expected(index)
        if force_direct or not direct_reads_work(tmp_path):
            assert (reads.calls > 0) == direct_reads_work(tmp_path)
    assert path.read_bytes() == raw  # never written


@pytest.mark.parametrize("fail", ["error", "short"])
def test_a_failed_direct_read_is_read_again_plainly(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    if not direct_reads_work(tmp_path):
        pytest.skip("O_DIRECT is refused here")
    values = values_for_mode(2, rng, shape=(3, 40, 50))
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    # read ahead directly whatever the page cache holds (a test of a failed direct read, not of the choice)
    monkeypatch.setattr(MrcMovie, "_cached_page_count", lambda movie, offset, size_bytes: 0)
    with MrcMovie(path) as movie:
        reads = _DirectReads(movie, fail=fail)
        monkeypatch.setattr(os, "preadv", reads)
        evict(path)
        movie.read_ahead(1)
        # what the direct read left in the buffer is not returned: the frame is read again
        assert movie.read_raw_frame(1).tobytes() == values[1].tobytes()
        assert reads.calls == 1
        movie.read_ahead(2)
        assert movie.read_raw_frame(2).tobytes() == values[2].tobytes()
    if fail == "error":
        assert reads.calls == 1  # an error turns direct reads off for the movie
    else:
        assert reads.calls == 2  # a short read says nothing about the file system: tried again


def test_read_ahead_hints_where_o_direct_is_refused(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = values_for_mode(2, rng, shape=(3, 40, 50))
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    original_open = os.open

    def refusing(file: str, flags: int, *args: int) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(22, "Invalid argument")  # as tmpfs before Linux 6.6
        return original_open(file, flags, *args)

    hinted: list[int] = []
    monkeypatch.setattr(os, "open", refusing)
    monkeypatch.setattr(MrcMovie, "prefetch", lambda movie, index: hinted.append(index))
    with MrcMovie(path) as movie:
        for index in range(3):
            assert movie.read_raw_frame(index).tobytes() == values[index].tobytes()
            movie.read_ahead(index + 1)
        assert movie._direct is None
    assert hinted == [1, 2]


def test_a_file_truncated_after_a_read_ahead(tmp_path: Path, rng: np.random.Generator) -> None:
    values = values_for_mode(2, rng, shape=(3, 40, 50))
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    with MrcMovie(path) as movie:
        os.truncate(path, path.stat().st_size - 10)
        movie.read_ahead(2)
        with pytest.raises(TruncatedFileError, match="frame 2"):
            movie.read_raw_frame(2)


def test_close_stops_a_direct_read_before_its_descriptor_closes(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not direct_reads_work(tmp_path):
        pytest.skip("O_DIRECT is refused here")
    values = values_for_mode(2, rng, shape=(2, 100, 100))  # 40000 bytes: pieces of one block
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    monkeypatch.setattr(
        empcompress.mrc.readahead, "DIRECT_PIECE_BYTES", empcompress.mrc.readahead.DIRECT_BLOCK_BYTES
    )
    started, release = threading.Event(), threading.Event()
    original = os.preadv
    pieces: list[int] = []

    def held(descriptor: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
        if flags:  # the page-cache probe
            return original(descriptor, buffers, offset, *flags)
        pieces.append(offset)
        started.set()
        release.wait(timeout=10)
        os.fstat(descriptor)  # still open
        return original(descriptor, buffers, offset)

    movie = MrcMovie(path)
    movie.read_raw_frame(0)
    evict(path)
    monkeypatch.setattr(
        MrcMovie, "_cached_page_count", lambda movie, offset, size_bytes: 0
    )  # direct, whatever is cached
    monkeypatch.setattr(os, "preadv", held)
    movie.read_ahead(1)
    assert started.wait(timeout=10)
    direct = movie._direct
    assert direct is not None
    closing = threading.Thread(target=movie.close)
    closing.start()
    closing.join(timeout=0.2)
    assert closing.is_alive()  # waits for the piece in flight
    release.set()
    closing.join(timeout=10)
    assert not closing.is_alive()
    assert len(pieces) == 1  # and reads no piece after it
    with pytest.raises(OSError):
        os.fstat(direct.descriptor)
    with pytest.raises(ValueError, match="closed"):
        movie.read_ahead(1)


def test_frames_in_the_page_cache_are_not_read_directly(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not direct_reads_work(tmp_path):
        pytest.skip("O_DIRECT is refused here")
    values = values_for_mode(2, rng, shape=(6, 100, 100))  # frames of 40000 bytes: about 10 pages
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    with open(path, "rb") as handle:
        if not page_cache_counted(handle.fileno()):
            pytest.skip("the kernel does not count this file's pages in the page cache (cachestat)")
    hinted = _hinted_frames(monkeypatch)
    with MrcMovie(path) as movie:
        header = movie.header

        def own_pages(index: int) -> str:  # the pages wholly the frame's (its neighbours share the others)
            start = header.data_offset_bytes + index * header.frame_size_bytes
            return page_map(path)[-(-start // PAGE_BYTES) : (start + header.frame_size_bytes) // PAGE_BYTES]

        reads = _DirectReads(movie)
        monkeypatch.setattr(os, "preadv", reads)
        movie.read_ahead(1)  # just written: in the page cache
        assert movie.read_raw_frame(1).tobytes() == values[1].tobytes()
        assert (reads.calls, hinted) == (0, [1])
        hints_done(movie)  # a hint still running would bring the file back after the eviction
        evict_wholly(path)
        movie.read_ahead(2)  # not cached at all: read directly
        assert movie.read_raw_frame(2).tobytes() == values[2].tobytes()
        assert (reads.calls, hinted) == (1, [1])
        assert "x" not in own_pages(2) + own_pages(3), page_map(path)  # and counting read nothing
        middle = os.open(path, os.O_RDONLY)  # the middle of frame 3 is cached, the rest is not
        try:
            os.posix_fadvise(middle, 0, 0, os.POSIX_FADV_RANDOM)  # (its one page: no read-ahead)
            os.pread(
                middle,
                1,
                header.data_offset_bytes + 3 * header.frame_size_bytes + header.frame_size_bytes // 2,
            )
        finally:
            os.close(middle)
        assert "x" in own_pages(3) and "." in own_pages(3), page_map(path)
        movie.read_ahead(3)  # read through the page cache: what is cached is not read again
        assert movie.read_raw_frame(3).tobytes() == values[3].tobytes()
        assert (reads.calls, hinted) == (1, [1, 3])
        # and without the kernel's read-ahead, which would bring in frame 4 for a direct read to read again
        hints_done(movie)
        assert "x" not in own_pages(4), page_map(path)
        movie.read_ahead(4)
        assert movie.read_raw_frame(4).tobytes() == values[4].tobytes()
        assert (reads.calls, hinted) == (2, [1, 3])
        assert "x" not in own_pages(4), page_map(path)  # read past the page cache


def _hinted_frames(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The frames movies are asked to hint (:meth:`MrcMovie.prefetch`), in order; hinted as before."""
    hinted: list[int] = []
    original_prefetch = MrcMovie.prefetch

    def prefetch(movie: MrcMovie, index: int) -> None:
        hinted.append(index)
        original_prefetch(movie, index)

    monkeypatch.setattr(MrcMovie, "prefetch", prefetch)
    return hinted


def test_cached_frames_on_overlayfs_are_not_read_directly(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # an overlay's file (a container's) keeps its pages in the file below it, which cachestat on the
    # overlay's file does not count: the movie probes them instead
    with overlay(tmp_path / "overlay") as merged:
        if not direct_reads_work(merged):
            pytest.skip("O_DIRECT is refused here")
        values = values_for_mode(2, rng, shape=(3, 100, 100))
        path = write_mrc(merged / "m.mrc", values, mode=2)
        hinted = _hinted_frames(monkeypatch)
        with MrcMovie(path) as movie:
            reads = _DirectReads(movie)
            monkeypatch.setattr(os, "preadv", reads)
            movie.read_ahead(1)  # just written: in the page cache
            assert movie.read_raw_frame(1).tobytes() == values[1].tobytes()
            assert (reads.calls, hinted) == (0, [1])
            assert movie._page_cache_counted is False


def test_counting_cached_pages_reads_none(tmp_path: Path, rng: np.random.Generator) -> None:
    values = values_for_mode(2, rng, shape=(6, 100, 100))
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    n_pages = len(page_map(path))
    with open(path, "rb") as handle:
        descriptor = handle.fileno()
        if not page_cache_counted(descriptor):
            pytest.skip("the kernel does not count this file's pages in the page cache (cachestat)")
        assert cached_page_count(descriptor, 0, n_pages * PAGE_BYTES) == page_map(path).count("x")
        evict_wholly(path)
        whole = n_pages * PAGE_BYTES
        for offset, length in [(0, 1), (5000, 40000), (0, whole), (whole, PAGE_BYTES)]:
            assert cached_page_count(descriptor, offset, length) == 0
        time.sleep(0.05)  # a read started would be done by now
        assert page_map(path) == "." * n_pages
        handle.seek(3 * PAGE_BYTES)
        handle.raw.read(2 * PAGE_BYTES)  # (past Python's buffer)
        cached = page_map(path)
        assert cached_page_count(descriptor, 0, whole) == cached.count("x") >= 2
        assert cached_page_count(descriptor, 3 * PAGE_BYTES, 2 * PAGE_BYTES) == 2
        assert cached_page_count(descriptor, 4 * PAGE_BYTES - 1, 2) == 2  # each page touched
        assert cached_page_count(descriptor, 3 * PAGE_BYTES, 0) == 0  # nothing, not "to the end of the file"


def test_cached_pages_are_not_counted_where_the_kernel_cannot(monkeypatch: pytest.MonkeyPatch) -> None:
    call = empcompress.mrc.readahead._CachestatCall()
    monkeypatch.setattr(empcompress.mrc.readahead, "_CACHESTAT_SYSCALL", 0x7FFFFFFF)  # as before Linux 6.5
    with open(__file__, "rb") as handle:
        if call.missing:
            pytest.skip("no cachestat on this platform")
        assert call.count(handle.fileno(), 0, 4096) is None
        assert call.missing  # and never asked again
        monkeypatch.setattr(empcompress.mrc.readahead, "_cachestat", call)
        assert cached_page_count(handle.fileno(), 0, 4096) is None
        assert not page_cache_counted(handle.fileno())

        def refused(*arguments: object) -> int:  # a file not ours to write (Linux 6.14+), or seccomp
            ctypes.set_errno(errno.EPERM)
            return -1

        call = empcompress.mrc.readahead._CachestatCall()
        call._syscall = refused
        monkeypatch.setattr(empcompress.mrc.readahead, "_cachestat", call)
        assert cached_page_count(handle.fileno(), 0, 4096) is None
        assert not call.missing  # (other files may be counted)


def test_frames_are_probed_where_cached_pages_cannot_be_counted(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not direct_reads_work(tmp_path):
        pytest.skip("O_DIRECT is refused here")
    values = values_for_mode(2, rng, shape=(6, 100, 100))
    path = write_mrc(tmp_path / "m.mrc", values, mode=2)
    # as on overlayfs, whose files' pages are another file's: none is counted
    counted: list[tuple[int, int]] = []
    original_count = empcompress.mrc.readahead.cached_page_count

    def counting_none(descriptor: int, offset_bytes: int, length_bytes: int) -> int | None:
        counted.append((offset_bytes, length_bytes))
        return 0 if original_count(descriptor, offset_bytes, length_bytes) is not None else None

    monkeypatch.setattr(empcompress.mrc.readahead, "cached_page_count", counting_none)
    monkeypatch.setattr(empcompress.mrc.movie, "cached_page_count", counting_none)
    hinted = _hinted_frames(monkeypatch)
    with MrcMovie(path) as movie:
        reads = _DirectReads(movie)
        probes: list[bool] = []  # whether each 1-byte probe found its page

        def probing(descriptor: int, buffers: list[memoryview], offset: int, *flags: int) -> int:
            if not flags:
                return reads(descriptor, buffers, offset)
            try:
                n_read = reads(descriptor, buffers, offset, *flags)
            except BlockingIOError:
                probes.append(False)
                raise
            probes.append(n_read == 1)
            return n_read

        monkeypatch.setattr(os, "preadv", probing)
        movie.read_ahead(1)  # just written: each probe finds its page
        assert movie.read_raw_frame(1).tobytes() == values[1].tobytes()
        assert counted == [(0, 1)]  # asked once, for the movie: its first page, just read, counted as none
        assert (probes, reads.calls, hinted) == ([True] * 3, 0, [1])
        hints_done(movie)
        evict_wholly(path)
        probes.clear()
        movie.read_ahead(2)  # evicted: read directly, unless a probe found the page it brought in itself
        assert movie.read_raw_frame(2).tobytes() == values[2].tobytes()
        assert len(probes) == 3 and counted == [(0, 1)]
        assert (reads.calls, hinted) == ((0, [1, 2]) if any(probes) else (1, [1]))
