"""A disk that fills during a conversion, and a read-only one: one line naming the user's file, what went
wrong and what to do; nothing half-written left behind.

Needs root to mount small tmpfs file systems (CI runs as root); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TEMP_MARKER
from mounts import tmpfs
from mrc_factory import write_mrc


def empcompress() -> list[str]:
    beside = Path(sys.executable).with_name("empcompress")
    found = str(beside) if beside.exists() else shutil.which("empcompress")
    assert found, "the empcompress console script is not installed; run pip install -e .[test]"
    return [found]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*empcompress(), *argv], capture_output=True, text=True, timeout=300)


def assert_one_error_line(stderr: str, *parts: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr and TEMP_MARKER not in stderr
    for part in parts:
        assert part in lines[0], stderr


@pytest.fixture
def noisy_movie(tmp_path: Path) -> Path:
    """Counts 0-199 on 256x256 frames, 24 frames: about 1.5 MB as uint8 whatever the codec."""
    values = np.random.default_rng(5).integers(0, 200, size=(24, 256, 256)).astype(np.float32)
    return write_mrc(tmp_path / "noisy.mrc", values, mode=2)


def test_convert_and_restore_on_a_disk_that_fills(tmp_path: Path, noisy_movie: Path) -> None:
    with tmpfs(tmp_path / "small", "size=1m") as disk:
        output = disk / "noisy.tif"
        done = run("convert", str(noisy_movie), "-o", str(output))
        assert done.returncode == 1 and done.stdout == ""
        assert_one_error_line(
            done.stderr,
            f"Error: {output}: No space left on device",
            f"free space on the disk holding {disk} and run the same command again",
        )
        assert list(disk.iterdir()) == []  # nothing half-written, no temporary file

        tiff = tmp_path / "noisy.tif"
        assert run("convert", str(noisy_movie), "-o", str(tiff), "-q").returncode == 0
        restored = disk / "noisy.mrc"
        done = run("restore", str(tiff), "-o", str(restored))
        assert done.returncode == 1 and done.stdout == ""
        assert_one_error_line(done.stderr, f"Error: {restored}: No space left on device", str(disk))
        assert list(disk.iterdir()) == []


def test_a_disk_already_full(tmp_path: Path, noisy_movie: Path) -> None:
    with tmpfs(tmp_path / "full", "size=256k") as disk:
        filler = disk / "filler"
        with open(filler, "wb") as handle, contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 65536)
        output = disk / "noisy.tif"
        done = run("convert", str(noisy_movie), "-o", str(output))
        assert done.returncode == 1
        assert_one_error_line(done.stderr, f"Error: {output}: No space left on device")
        assert [path.name for path in disk.iterdir()] == ["filler"]


def test_a_read_only_output_folder_is_named_not_our_temporary(tmp_path: Path, noisy_movie: Path) -> None:
    with tmpfs(tmp_path / "read-only", "size=1m", "ro") as folder:
        output = folder / "noisy.tif"
        done = run("convert", str(noisy_movie), "-o", str(output))
        assert done.returncode == 1
        assert_one_error_line(
            done.stderr, f"Error: {output}: Read-only file system", "choose a folder you can write to"
        )
