"""Classic TIFF whenever the finished file fits (issue 10): a movie of more than 4 GiB whose counts
compress well becomes a classic TIFF that libtiff reads; BigTIFF is written only when the encoded strips
do not fit (tests/test_write.py checks that side with a lowered limit)."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
from conftest import require_tool
from mrc_factory import write_mrc

from empcompress.convert import convert_movie
from empcompress.write import CLASSIC_TIFF_LIMIT_BYTES


def sparse_mrc(path: Path, *, nx: int, ny: int, nz: int) -> Path:
    """A mode-0 MRC of zeros of any size, stored sparsely (it takes no disk space)."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.zeros((2, 8, 8), np.uint8))
    with open(path, "r+b") as handle:
        header = bytearray(handle.read(1024))
        struct.pack_into("<3i", header, 0, nx, ny, nz)
        struct.pack_into("<i", header, 12, 0)
        struct.pack_into("<3i", header, 28, nx, ny, nz)
        handle.seek(0)
        handle.write(header)
        handle.truncate(1024 + nx * ny * nz)
    return path


@pytest.mark.slow
@pytest.mark.integration
def test_a_movie_over_4_gib_that_compresses_is_a_classic_tiff(tmp_path: Path) -> None:
    tiffinfo = require_tool("tiffinfo")
    source = sparse_mrc(tmp_path / "huge.mrc", nx=8192, ny=8192, nz=66)
    assert source.stat().st_size > CLASSIC_TIFF_LIMIT_BYTES
    result = convert_movie(source, tmp_path / "huge.tif", threads=2)  # verified bit for bit before the rename
    assert result.output_size_bytes < 64 << 20
    with tifffile.TiffFile(tmp_path / "huge.tif") as tiff:
        assert not tiff.is_bigtiff and len(tiff.pages) == 66
    listing = subprocess.run([tiffinfo, str(tmp_path / "huge.tif")], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.count("TIFF Directory") == 66


@pytest.mark.slow
@pytest.mark.integration
def test_relion_reads_a_classic_super_resolution_tiff(tmp_path: Path) -> None:
    """A K3 super-resolution movie (11520x8184, mode 101 as SerialEM writes it) becomes a classic TIFF
    that RELION's reader gives back value for value, in MRC orientation."""
    handler = require_tool("relion_image_handler")
    rng = np.random.default_rng(11520)
    values = np.minimum(rng.poisson(0.25, size=(2, 8184, 11520)), 15).astype(np.uint8)
    source = write_mrc(tmp_path / "k3.mrc", values, mode=101)
    result = convert_movie(source, tmp_path / "k3.tif", threads=2)
    assert result.decision.stored_dtype == "uint8"
    with tifffile.TiffFile(tmp_path / "k3.tif") as tiff:
        assert not tiff.is_bigtiff and len(tiff.pages) == 2
    done = subprocess.run(
        [handler, "--i", "k3.tif", "--o", "relion.mrcs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with mrcfile.mmap(tmp_path / "relion.mrcs", permissive=True) as mrc:
        assert mrc.data.shape == values.shape
        for index in range(values.shape[0]):
            assert np.array_equal(mrc.data[index], values[index])
