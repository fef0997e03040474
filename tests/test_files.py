"""The shared file rules: temporary-file-then-rename, hashing, opening untrusted files."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from empcompress.files import (
    TEMP_MARKER,
    NotRegularFileError,
    commit_output,
    file_digests,
    file_sha256,
    is_temporary_name,
    open_regular,
    temporary_output,
    temporary_path_for,
    write_bytes_atomically,
)


def test_temporary_output_is_removed_on_error(tmp_path: Path) -> None:
    final = tmp_path / "out.tif"
    with pytest.raises(RuntimeError), temporary_output(final) as temporary:
        assert is_temporary_name(temporary.name)
        assert temporary.parent == tmp_path
        assert temporary.name.startswith(".")
        temporary.write_bytes(b"half written")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_temporary_output_without_commit_leaves_nothing(tmp_path: Path) -> None:
    with temporary_output(tmp_path / "out.tif") as temporary:
        temporary.write_bytes(b"data")
    assert list(tmp_path.iterdir()) == []


def test_commit_output_renames(tmp_path: Path) -> None:
    final = tmp_path / "out.tif"
    with temporary_output(final) as temporary:
        temporary.write_bytes(b"verified")
        commit_output(temporary, final)
    assert final.read_bytes() == b"verified"
    assert [p for p in tmp_path.iterdir() if TEMP_MARKER in p.name] == []


def test_temporary_names_are_unique_and_short(tmp_path: Path) -> None:
    names = {temporary_path_for(tmp_path / "x.tif").name for _ in range(50)}
    assert len(names) == 50
    assert all(len(name.encode()) <= 40 for name in names)


def test_a_255_byte_name_can_be_written(tmp_path: Path) -> None:
    """The temporary name never makes a path longer than its final name allows."""
    final = tmp_path / ("a" * 251 + ".tif")
    write_bytes_atomically(final, b"x")
    assert final.read_bytes() == b"x"


def test_file_digests_match_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) * 3
    path = tmp_path / "f"
    path.write_bytes(data)
    digests = file_digests(path)
    assert digests == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
    assert file_sha256(path) == digests["sha256"]


def test_open_regular_reads_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    with open_regular(path) as handle:
        assert handle.read() == b"hello"


def test_open_regular_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "f")
    with pytest.raises(NotRegularFileError):
        open_regular(tmp_path / "link")


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "trap"
    os.mkfifo(fifo)
    done = threading.Event()

    def attempt() -> None:
        with pytest.raises(NotRegularFileError):
            open_regular(fifo)
        done.set()

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(5)
    assert done.is_set(), "open_regular blocked on a FIFO"


def test_open_regular_refuses_a_folder_and_a_device(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFileError):
        open_regular(tmp_path)
    with pytest.raises(NotRegularFileError):
        open_regular("/dev/zero")
