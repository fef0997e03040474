"""Restore rebuilds the original MRC byte for byte, from the TIFF alone, or refuses cleanly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import counts, temporaries_in
from mrc_factory import write_mrc

from empcompress.convert import convert_movie
from empcompress.errors import EmpCompressError, NotOurTiffError, RestoreError, VerificationError
from empcompress.reconstruct import CompressedMovie, read_record
from empcompress.restore import restore_movie


@pytest.fixture
def converted(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    values = counts(rng, (3, 32, 24), dose=2.0)
    source = write_mrc(
        tmp_path / "orig.mrc", values, mode=2, byte_order=">", extended_header=b"\xab" * 256, exttyp=b"FEI2"
    )
    output = tmp_path / "orig.tif"
    convert_movie(source, output)
    return source, output


def test_restore_from_the_tiff_alone(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    source, output = converted
    raw = source.read_bytes()
    source.unlink()  # the TIFF must be enough
    restored = tmp_path / "restored.mrc"
    result = restore_movie(output, restored, threads=2)
    assert restored.read_bytes() == raw
    assert result.sha256 == hashlib.sha256(raw).hexdigest()
    assert result.size_bytes == len(raw)
    assert result.output_path == str(restored)
    assert temporaries_in(tmp_path) == []


def test_record_and_reader(converted: tuple[Path, Path]) -> None:
    source, output = converted
    record = read_record(output)
    assert record.source.name == "orig.mrc"
    assert record.source.byte_order == ">"
    assert record.source.header_bytes == source.read_bytes()[:1024]
    with CompressedMovie(output) as movie:
        assert movie.n_pages == 3
        assert movie.frame_shape == (32, 24)
        assert movie.stored_dtype == np.dtype("uint8")
        rebuilt = b"".join(frame.tobytes() for frame in movie.iter_source_frame_bytes())
    assert rebuilt == source.read_bytes()[1024 + 256 :]


def test_existing_output_needs_overwrite(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    source, output = converted
    target = tmp_path / "target.mrc"
    target.write_bytes(b"keep me")
    with pytest.raises(RestoreError, match="already exists"):
        restore_movie(output, target)
    assert target.read_bytes() == b"keep me"
    restore_movie(output, target, overwrite=True)
    assert target.read_bytes() == source.read_bytes()


def test_cannot_restore_onto_the_tiff(converted: tuple[Path, Path]) -> None:
    _, output = converted
    before = output.read_bytes()
    with pytest.raises(RestoreError):
        restore_movie(output, output, overwrite=True)
    assert output.read_bytes() == before


def test_damaged_tiff_leaves_nothing(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    _, output = converted
    with tifffile.TiffFile(output) as tiff:
        page = tiff.pages[2]
        assert isinstance(page, tifffile.TiffPage)
        offset = page.dataoffsets[0]
    data = bytearray(output.read_bytes())
    data[offset + 3] ^= 0xFF
    output.write_bytes(bytes(data))
    target = tmp_path / "never.mrc"
    with pytest.raises((RestoreError, VerificationError)):
        restore_movie(output, target)
    assert not target.exists()
    assert temporaries_in(tmp_path) == []


def test_not_our_tiff(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((2, 4, 4), dtype=np.uint16), description="just a TIFF")
    with pytest.raises(NotOurTiffError, match="not written by empcompress"):
        restore_movie(plain, tmp_path / "x.mrc")
    assert not (tmp_path / "x.mrc").exists()


def test_missing_pages_are_detected(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    _, output = converted
    record = read_record(output)
    with tifffile.TiffFile(output) as tiff:
        frames = tiff.asarray()
        description = tiff.pages.first.description
    shortened = tmp_path / "short.tif"
    tifffile.imwrite(shortened, frames[:2], description=description, metadata=None)
    assert record.source.nz == 3
    with pytest.raises(EmpCompressError, match="2 pages"):
        restore_movie(shortened, tmp_path / "y.mrc")
    assert not (tmp_path / "y.mrc").exists()


def test_output_directory_must_exist(tmp_path: Path, converted: tuple[Path, Path]) -> None:
    _, output = converted
    with pytest.raises(RestoreError, match="directory does not exist"):
        restore_movie(output, tmp_path / "nowhere" / "x.mrc")
    assert temporaries_in(tmp_path) == []
