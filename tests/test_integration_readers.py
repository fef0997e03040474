"""Our TIFF stacks as real readers see them: libtiff's tiffcp and RELION's image handler.

Skipped when the programs are missing, except under CI (``CI`` set), which installs
them (Debian: libtiff-tools, relion) and must run these tests.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
from conftest import require_tool
from mrc_factory import write_mrc

from empcompress import write
from empcompress.convert import convert_movie

pytestmark = pytest.mark.integration

SHAPE = (3, 600, 1000)  # several strips per frame for every storage type
STORAGES = ["uint8", "uint16", "int16", "float32"]
CODECS = ["lzw", "deflate", "zstd"]


def source_values(storage: str) -> tuple[np.ndarray, int]:
    """Source values (native order) and their MRC mode, chosen to be stored as ``storage``."""
    rng = np.random.default_rng(abs(hash(storage)) % 2**32)
    if storage == "uint8":
        return rng.poisson(1.5, size=SHAPE).astype(np.float32), 2
    if storage == "uint16":
        values = rng.poisson(1.5, size=SHAPE).astype(np.float32)
        values[:, ::97, ::89] = 60000  # hot pixels
        return values, 2
    if storage == "int16":
        return rng.integers(-300, 300, size=SHAPE).astype(np.int16), 1
    values = (rng.standard_normal(SHAPE) * 30 + 100).astype(np.float32)  # integrating-mode floats
    values[0, 0, 0] = -0.0
    return values, 2


@pytest.fixture(scope="module")
def movies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray]]:
    directory = tmp_path_factory.mktemp("sources")
    made = {}
    for storage in STORAGES:
        values, mode = source_values(storage)
        made[storage] = (write_mrc(directory / f"{storage}.mrc", values, mode=mode, byte_order="<"), values)
    return made


@pytest.fixture(scope="module")
def converted(
    tmp_path_factory: pytest.TempPathFactory, movies: dict[str, tuple[Path, np.ndarray]]
) -> dict[tuple[str, str], Path]:
    directory = tmp_path_factory.mktemp("converted")
    outputs = {}
    for storage, (source, _) in movies.items():
        for codec in CODECS:
            output = directory / f"{storage}_{codec}.tif"
            result = convert_movie(source, output, codec=codec, threads=2)
            assert result.decision.stored_dtype == storage
            outputs[storage, codec] = output
    return outputs


def run_tool(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 0, (
        f"{argv} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )
    return done


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("storage", STORAGES)
def test_tiffcp_decodes_exact_pixels(
    tmp_path: Path,
    movies: dict[str, tuple[Path, np.ndarray]],
    converted: dict[tuple[str, str], Path],
    storage: str,
    codec: str,
) -> None:
    tiffcp = require_tool("tiffcp")
    plain = tmp_path / "plain.tif"
    done = run_tool([tiffcp, "-c", "none", str(converted[storage, codec]), str(plain)], cwd=tmp_path)
    assert done.stderr.strip() == "", done.stderr  # no warnings about unknown tags
    _, values = movies[storage]
    with tifffile.TiffFile(plain) as tiff:
        assert len(tiff.pages) == SHAPE[0]
        assert tiff.pages.first.compression == 1
        decoded = tiff.asarray()
    assert decoded.dtype == np.dtype(storage)
    flipped = values[:, ::-1, :]  # first TIFF row = last MRC row
    if storage == "float32":
        assert decoded.tobytes() == flipped.tobytes()
    else:
        assert np.array_equal(decoded.astype(np.float64), flipped.astype(np.float64))


def relion_read(tiff: Path, directory: Path) -> np.ndarray:
    """RELION's view of a TIFF stack: ``relion_image_handler --i X.tif --o X.mrcs``, run in ``directory``."""
    handler = require_tool("relion_image_handler")
    link = directory / tiff.name
    if not link.exists():
        link.symlink_to(tiff)
    run_tool([handler, "--i", tiff.name, "--o", "out.mrcs"], cwd=directory)
    with mrcfile.open(directory / "out.mrcs", permissive=True) as mrc:
        return np.array(mrc.data)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("storage", STORAGES)
def test_relion_reads_exact_values_in_mrc_orientation(
    tmp_path: Path,
    movies: dict[str, tuple[Path, np.ndarray]],
    converted: dict[tuple[str, str], Path],
    storage: str,
    codec: str,
) -> None:
    _, values = movies[storage]
    read = relion_read(converted[storage, codec], tmp_path)
    assert read.shape == SHAPE
    # RELION flips TIFF rows back: its picture equals the MRC source, value for value
    if storage == "float32":
        assert read.dtype == np.float32
        assert read.tobytes() == values.tobytes()
    else:
        assert np.array_equal(read.astype(np.float64), values.astype(np.float64))


def test_relion_reads_bigtiff(tmp_path: Path, movies: dict[str, tuple[Path, np.ndarray]]) -> None:
    source, values = movies["uint8"]
    output = tmp_path / "big.tif"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(write, "CLASSIC_TIFF_LIMIT_BYTES", 4096)
        convert_movie(source, output, codec="lzw")
    with tifffile.TiffFile(output) as tiff:
        assert tiff.is_bigtiff
    read = relion_read(output, tmp_path)
    assert np.array_equal(read.astype(np.float64), values.astype(np.float64))


def test_missing_tool_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        require_tool("no-such-program-empcompress")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_tool("no-such-program-empcompress")
