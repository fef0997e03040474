"""Verification catches damaged outputs, wrong records and the wrong source."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import counts
from hypothesis import given
from hypothesis import strategies as st
from mrc_factory import mrc_bytes, write_mrc

from empcompress.cli import main
from empcompress.convert import convert_movie
from empcompress.errors import InputError, NotOurTiffError, VerificationError
from empcompress.verify import _same_bytes, verify_tiff


@pytest.fixture(params=["lzw", "deflate", "zstd", "none"])
def converted(request: pytest.FixtureRequest, tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """(source, output) for a small counts movie written with each codec."""
    source = write_mrc(tmp_path / "src.mrc", counts(rng, (3, 48, 40), dose=3.0), mode=2)
    output = tmp_path / f"out_{request.param}.tif"
    convert_movie(source, output, codec=request.param)
    return source, output


def strip_span(path: Path, page_index: int, strip_index: int) -> tuple[int, int]:
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[page_index]
        assert isinstance(page, tifffile.TiffPage)
        return page.dataoffsets[strip_index], page.databytecounts[strip_index]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_verify_passes(converted: tuple[Path, Path]) -> None:
    source, output = converted
    result = verify_tiff(output)
    assert result.n_frames == 3
    assert result.source_sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    assert result.source_size_bytes == source.stat().st_size
    assert not result.compared_with_source
    assert verify_tiff(output, against=source, threads=2).compared_with_source


@pytest.mark.parametrize("where", ["first", "middle"])
def test_one_flipped_byte_in_a_strip_fails(converted: tuple[Path, Path], where: str) -> None:
    _, output = converted
    offset, size = strip_span(output, page_index=1, strip_index=0)
    flip_byte(output, offset if where == "first" else offset + size // 2)
    with pytest.raises(VerificationError, match=re.escape(output.name)):
        verify_tiff(output)
    assert main(["verify", str(output), "-q"]) != 0


def test_flipped_last_byte_fails_unless_pixels_are_unchanged(converted: tuple[Path, Path]) -> None:
    """The last byte of an LZW strip may hold only end-of-information bits that decoders never
    read; then the pixels are intact and verification rightly passes. Otherwise it must fail."""
    _, output = converted
    with tifffile.TiffFile(output) as tiff:
        before = tiff.asarray()
    offset, size = strip_span(output, page_index=1, strip_index=0)
    flip_byte(output, offset + size - 1)
    try:
        with tifffile.TiffFile(output) as tiff:
            pixels_intact = bool(np.array_equal(tiff.asarray(), before))
    except Exception:
        pixels_intact = False
    if pixels_intact:
        verify_tiff(output)
    else:
        with pytest.raises(VerificationError):
            verify_tiff(output)


def test_changed_recorded_sha256_fails(converted: tuple[Path, Path]) -> None:
    source, output = converted
    digest = hashlib.sha256(source.read_bytes()).hexdigest().encode()
    data = output.read_bytes()
    assert data.count(digest) == 1
    replacement = (b"0" if digest[:1] != b"0" else b"1") + digest[1:]
    output.write_bytes(data.replace(digest, replacement))
    with pytest.raises(VerificationError, match="sha256"):
        verify_tiff(output)
    assert main(["verify", str(output), "-q"]) != 0


def test_against_a_different_source_fails(converted: tuple[Path, Path], rng: np.random.Generator) -> None:
    source, output = converted
    other = source.with_name("other.mrc")
    other.write_bytes(mrc_bytes(counts(rng, (3, 48, 40), dose=3.0), mode=2))
    with pytest.raises(VerificationError, match=r"other\.mrc"):
        verify_tiff(output, against=other)
    assert main(["verify", str(output), "--against", str(other), "-q"]) != 0


def test_against_same_header_different_pixels_fails(tmp_path: Path) -> None:
    """Headers equal (we write dmin/dmax/dmean ourselves), one pixel differs in the last frame."""
    values = np.zeros((3, 6, 5), dtype=np.float32)
    overrides = {"dmin": 0.0, "dmax": 0.0, "dmean": 0.0}
    source = write_mrc(tmp_path / "a.mrc", values, mode=2, header_overrides=overrides)
    changed = values.copy()
    changed[2, 3, 4] = 1.0
    other = write_mrc(tmp_path / "b.mrc", changed, mode=2, header_overrides=overrides)
    assert source.read_bytes()[:1024] == other.read_bytes()[:1024]
    output = tmp_path / "a.tif"
    convert_movie(source, output)
    with pytest.raises(VerificationError, match="frame 2"):
        verify_tiff(output, against=other)


def test_against_a_different_extended_header_fails(tmp_path: Path) -> None:
    values = np.ones((2, 4, 4), dtype=np.float32)
    source = write_mrc(tmp_path / "a.mrc", values, mode=2, extended_header=b"\x01" * 64, exttyp=b"FEI1")
    other = write_mrc(tmp_path / "b.mrc", values, mode=2, extended_header=b"\x02" * 64, exttyp=b"FEI1")
    convert_movie(source, tmp_path / "a.tif")
    with pytest.raises(VerificationError, match="extended header"):
        verify_tiff(tmp_path / "a.tif", against=other)


def test_against_a_non_mrc_file(converted: tuple[Path, Path]) -> None:
    _, output = converted
    with pytest.raises(InputError):
        verify_tiff(output, against=output)


def test_not_our_tiff(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((2, 4, 4), dtype=np.uint8))
    with pytest.raises(NotOurTiffError, match=r"plain\.tif"):
        verify_tiff(plain)
    with pytest.raises(NotOurTiffError, match="no such file"):
        verify_tiff(tmp_path / "missing.tif")
    text = tmp_path / "text.tif"
    text.write_text("hello")
    with pytest.raises(NotOurTiffError, match=r"text\.tif"):
        verify_tiff(text)


def test_truncated_output_fails(converted: tuple[Path, Path]) -> None:
    _, output = converted
    offset, size = strip_span(output, page_index=2, strip_index=0)
    data = output.read_bytes()
    output.write_bytes(data[: offset + size // 2])
    with pytest.raises((VerificationError, NotOurTiffError)):
        verify_tiff(output)
    assert main(["verify", str(output), "-q"]) != 0


@given(
    data=st.binary(min_size=0, max_size=80),
    flip_at=st.integers(min_value=0, max_value=79),
    flip_bits=st.integers(min_value=1, max_value=255),
)
def test_same_bytes_word_comparison_sees_every_byte(data: bytes, flip_at: int, flip_bits: int) -> None:
    """The 8-bytes-at-a-time comparison used by verification misses no byte, tail included."""
    first = np.frombuffer(data, dtype=np.uint8)
    assert _same_bytes(first, first.copy())
    if data:
        other = first.copy()
        other[flip_at % len(data)] ^= flip_bits
        assert not _same_bytes(first, other)
        assert not _same_bytes(first, first[:-1].copy())
    assert _same_bytes(first[::2], first[::2].copy()) and np.array_equal(first[::2], first[::2])


@pytest.mark.parametrize("threads", [2, 3])
def test_hashing_beside_decoding_passes_and_still_catches_a_changed_record(
    converted: tuple[Path, Path], threads: int
) -> None:
    """With threads > 1 frames are hashed on a helper thread: same verdicts as serially."""
    source, output = converted
    assert verify_tiff(output, against=source, threads=threads).n_frames == 3
    digest = hashlib.sha256(source.read_bytes()).hexdigest().encode()
    data = output.read_bytes()
    output.write_bytes(data.replace(digest, (b"0" if digest[:1] != b"0" else b"1") + digest[1:]))
    with pytest.raises(VerificationError, match="sha256"):
        verify_tiff(output, threads=threads)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_pixel_changed_inside_one_band_of_a_frame_is_found_where_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Frames are rebuilt and compared band by band (5 rows here): the band holding the changed pixel
    fails against the source, naming the frame and the first differing byte."""
    from empcompress import kernels, reconstruct

    monkeypatch.setattr(reconstruct, "REBUILD_PIECE_BYTES", 5 * 7 * 4)
    monkeypatch.setattr(kernels, "SINGLE_THREAD_FRAME_BYTES", 0)  # small frames on the threaded path
    values = np.random.default_rng(3).poisson(1.0, (3, 23, 7)).astype(np.float32)
    overrides = {"dmin": 0.0, "dmax": 0.0, "dmean": 0.0}
    source = write_mrc(tmp_path / "a.mrc", values, mode=2, header_overrides=overrides)
    changed = values.copy()
    changed[1, 12, 3] += 1  # MRC row 12: the third band of five rows
    other = write_mrc(tmp_path / "b.mrc", changed, mode=2, header_overrides=overrides)
    output = tmp_path / "a.tif"
    convert_movie(source, output)
    assert verify_tiff(output, against=source, threads=threads).compared_with_source
    old, new = (
        np.frombuffer(values[1, 12, 3].tobytes(), np.uint8),
        np.frombuffer(changed[1, 12, 3].tobytes(), np.uint8),
    )
    first = (12 * 7 + 3) * 4 + int(np.argmax(old != new))  # the pixel's first differing byte (little-endian)
    with pytest.raises(VerificationError, match=f"frame 1 differs from .*b.mrc from byte {first};"):
        verify_tiff(output, against=other, threads=threads)
