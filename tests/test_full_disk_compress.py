"""compress on a destination disk that fills: during the conversions, during the journal's write, and
during sealing. Each time: a clean error or failures with their reasons, no temporary file, no
``bagit.txt`` (nothing that looks done), and the same command finishes a valid bag once there is room.

Needs root to mount small tmpfs file systems (CI runs as root); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from pathlib import Path
from typing import Any

import bagit
import pytest
from conftest import TEMP_MARKER
from drives import make_drive
from mounts import tmpfs
from test_pipeline import recover_everything, temporaries

from empcompress.errors import EmpCompressError
from empcompress.pipeline import STAGE_SEALING, CompressOptions, FileEvent, StageEvent, compress_drive

pytestmark = pytest.mark.slow

NO_GAIN = CompressOptions(gain_sets=False)


@pytest.fixture
def drive(tmp_path: Path) -> Path:
    """About 1.3 MB of movies and other files (256x256 frames)."""
    return make_drive(tmp_path / "drive", shape=(256, 256), n_frames=6, n_extra_movies=2)


def fill(disk: Path) -> Path:
    """A file that takes every free byte of ``disk``."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        for block_bytes in (65536, 1):
            with contextlib.suppress(OSError):
                while True:
                    handle.write(b"\0" * block_bytes)
    return filler


def assert_nothing_looks_done(dest: Path) -> None:
    assert not (dest / "bagit.txt").exists()
    assert temporaries(dest) == []


def _run_expecting_trouble(drive: Path, dest: Path, client: Any, on_event: Any) -> str:
    """Either a clean error (the journal or a tag file could not be written: said so, naming the disk)
    or an incomplete run whose failures say why (space freed by abandoned temporaries let it go on)."""
    try:
        summary = compress_drive(drive, dest, client=client, options=NO_GAIN, on_event=on_event)
    except EmpCompressError as error:
        assert "full" in str(error) and "run the same command again" in str(error), error
        return "error"
    except OSError as error:
        assert error.errno == errno.ENOSPC and error.filename, error
        assert TEMP_MARKER not in str(error.filename), error  # names the file, not our temporary
        return "error"
    assert not summary.complete and summary.exit_code == 1
    assert not summary.sealed
    return "failures"


def finish_and_check(drive: Path, dest: Path, client: Any, scratch: Path) -> None:
    summary = compress_drive(drive, dest, client=client, options=NO_GAIN)
    assert summary.complete and summary.exit_code == 0, summary.failures
    bagit.Bag(str(dest)).validate()
    result = subprocess.run(["sha256sum", "--quiet", "-c", "manifest-sha256.txt"], cwd=dest)
    assert result.returncode == 0
    recover_everything(drive, dest, scratch)


def test_a_disk_too_small_fails_files_then_the_same_command_finishes(
    tmp_path: Path, drive: Path, client: Any
) -> None:
    with tmpfs(tmp_path / "disk", "size=600k") as disk:
        dest = disk / "bag"
        try:
            summary = compress_drive(drive, dest, client=client, options=NO_GAIN)
        except EmpCompressError as error:  # the disk filled while the journal wrote a row: said so
            assert "the disk holding the destination is full" in str(error)
        else:  # the files that did not fit failed, with the reason
            assert not summary.complete and summary.exit_code == 1
            assert summary.failures
            assert all("No space left" in problem.reason for problem in summary.failures)
            assert summary.n_kept_as_is <= 1  # only the corrupt movie: a full disk never means "kept"
        assert_nothing_looks_done(dest)
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        finish_and_check(drive, dest, client, tmp_path / "scratch")


def test_the_journal_s_disk_fills_mid_run(tmp_path: Path, drive: Path, client: Any) -> None:
    with tmpfs(tmp_path / "disk", "size=32m") as disk:
        dest = disk / "bag"
        filled: list[Path] = []

        def on_event(event: object) -> None:
            if isinstance(event, FileEvent) and not filled:
                filled.append(fill(disk))

        _run_expecting_trouble(drive, dest, client, on_event)
        assert filled, "the disk was never filled"
        assert_nothing_looks_done(dest)
        filled[0].unlink()
        finish_and_check(drive, dest, client, tmp_path / "scratch")


def test_the_disk_fills_while_sealing(tmp_path: Path, drive: Path, client: Any) -> None:
    with tmpfs(tmp_path / "disk", "size=32m") as disk:
        dest = disk / "bag"
        filled: list[Path] = []

        def on_event(event: object) -> None:
            if isinstance(event, StageEvent) and event.stage == STAGE_SEALING and not filled:
                filled.append(fill(disk))

        assert _run_expecting_trouble(drive, dest, client, on_event) == "error"
        assert filled, "the disk was never filled"
        assert_nothing_looks_done(dest)
        filled[0].unlink()
        finish_and_check(drive, dest, client, tmp_path / "scratch")
