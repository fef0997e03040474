"""info: what is in an MRC movie or one of our TIFF stacks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from mrc_factory import write_mrc

from empcompress.convert import convert_movie
from empcompress.errors import InputError, NotMrcError, NotOurTiffError
from empcompress.info import describe_file


def test_describe_mrc(tmp_path: Path) -> None:
    values = np.zeros((5, 6, 7), dtype=np.uint16)
    path = write_mrc(
        tmp_path / "m.mrc",
        values,
        mode=6,
        byte_order=">",
        extended_header=b"\0" * 128,
        exttyp=b"SERI",
        labels=["SerialEM"],
        pixel_size_angstrom=1.5,
        ispg=0,
    )
    info = describe_file(path)
    assert info["kind"] == "MRC"
    assert info["mode"] == 6
    assert info["value_type"] == "uint16"
    assert info["byte_order"] == "big"
    assert (info["frame_width"], info["frame_height"], info["n_frames"]) == (7, 6, 5)
    assert info["pixel_size_angstrom"] == pytest.approx(1.5)
    assert info["extended_header_bytes"] == 128
    assert info["extended_header_type"] == "SERI"
    assert info["labels"] == ["SerialEM"]
    assert info["size_bytes"] == path.stat().st_size


def test_describe_mode_0_unsigned(tmp_path: Path) -> None:
    path = write_mrc(tmp_path / "u.mrc", np.zeros((1, 2, 2), dtype=np.uint8), mode=0, imod_flags=0)
    assert describe_file(path)["value_type"] == "uint8"


def test_describe_our_tiff(tmp_path: Path, counts_movie: Path) -> None:
    output = tmp_path / "o.tif"
    convert_movie(counts_movie, output, codec="deflate")
    info = describe_file(output)
    assert info["kind"] == "empcompress TIFF stack"
    assert info["n_frames"] == 4
    assert (info["frame_width"], info["frame_height"]) == (80, 64)
    assert info["stored_type"] == "uint8"
    assert info["codec"] == "deflate (huffman-only)"
    assert info["source_name"] == "movie.mrc"
    assert info["source_sha256"] == hashlib.sha256(counts_movie.read_bytes()).hexdigest()
    assert info["source_size_bytes"] == counts_movie.stat().st_size
    assert info["ratio"] == pytest.approx(counts_movie.stat().st_size / output.stat().st_size, rel=1e-3)
    assert "flipped" in info["row_convention"]


def test_describe_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.mrc"):
        describe_file(tmp_path / "missing.mrc")
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((3, 3), dtype=np.uint8))
    with pytest.raises(NotOurTiffError, match=r"plain\.tif"):
        describe_file(plain)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"junk" * 400)
    with pytest.raises(NotMrcError, match=r"junk\.bin"):
        describe_file(junk)
