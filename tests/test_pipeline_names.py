"""Odd and hostile names and paths through compress: every name a POSIX file system holds ends in a bag
that `bagit`, `sha256sum -c`, `verify` and the upload list all accept, and the original tree can be
rebuilt from report.json; DEST reached through a symlink into SRC is refused."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import bagit
import numpy as np
import pytest
from drives import write_mrc

from empcompress.errors import PipelineError
from empcompress.manifest import verify_bag
from empcompress.pipeline import CompressOptions, compress_drive
from empcompress.restore import restore_movie

pytestmark = pytest.mark.slow

NO_GAIN = CompressOptions(gain_sets=False)
NOT_UTF8 = os.fsdecode(b"caf\xe9 \xff.txt")  # Latin-1 bytes from an old Windows drive
NOT_UTF8_MOVIE = os.fsdecode(b"m\xe9ta.mrc")
LONG = "x" * 251 + ".mrc"  # 255 bytes: the longest name a file system allows


def odd_drive(root: Path) -> dict[bytes, bytes]:
    """A drive with every kind of awkward name; returns {path bytes: content}."""
    rng = np.random.default_rng(3)
    movie = rng.poisson(1.0, (3, 16, 16)).astype(np.float32)
    root.mkdir(parents=True)
    write_mrc(root / NOT_UTF8_MOVIE, movie)
    write_mrc(root / "line\nbreak.mrc", movie * 2)
    write_mrc(root / LONG, movie * 3)
    (root / NOT_UTF8).write_bytes(b"latin-1 name")
    (root / "percent%0Aname.txt").write_bytes(b"%0A in a name")
    (root / "carriage\rreturn.txt").write_bytes(b"CR")
    (root / "50% dose.txt").write_bytes(b"percent")
    (root / "back\\slash.txt").write_bytes(b"backslash")
    (root / ".empcompress-tmp-1-abc").write_bytes(b"named like our temporaries")
    (root / "empty folder").mkdir()
    (root / "sub").mkdir()
    (root / "sub" / ("y" * 255)).write_bytes(b"long copied name")
    return {
        os.fsencode(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def test_every_name_ends_in_a_bag_every_tool_accepts(tmp_path: Path, client: Any) -> None:
    source, dest = tmp_path / "src", tmp_path / "bag"
    originals = odd_drive(source)
    for _ in range(2):  # and a second run changes nothing
        summary = compress_drive(source, dest, client=client, options=NO_GAIN)
        assert summary.complete and summary.exit_code == 0, summary.failures
        assert summary.all_converted, summary.kept_as_is  # a line break in a name is no reason to keep
    bagit.Bag(str(dest)).validate()
    checked = subprocess.run(["sha256sum", "--quiet", "-c", "manifest-sha256.txt"], cwd=dest)
    assert checked.returncode == 0
    assert verify_bag(dest).ok
    payload = {p.relative_to(dest).as_posix() for p in (dest / "data").rglob("*") if p.is_file()}
    listed = (dest / "ascp-file-list.txt").read_text(encoding="utf-8").splitlines()
    assert payload <= set(listed), payload - set(listed)
    for path in payload:  # valid UTF-8, no control character, within 255 bytes a name
        assert all(ord(c) >= 0x20 for c in path) and all(len(p.encode()) <= 255 for p in path.split("/"))
    # the original tree, rebuilt from report.json alone
    report = json.loads((dest / "report.json").read_text(encoding="utf-8"))
    rebuilt: dict[bytes, bytes] = {}
    for record in report["files"]:
        name = bytes.fromhex(record["source_path_hex"]) if "source_path_hex" in record else None
        name = name if name is not None else record["source"].encode("utf-8")
        output = dest / record["output"]
        if record["outcome"] == "converted":
            restored = tmp_path / hashlib.sha256(name).hexdigest()
            restore_movie(output, restored)
            rebuilt[name] = restored.read_bytes()
        else:
            rebuilt[name] = output.read_bytes()
    assert rebuilt == originals
    assert report["empty_folders"] == ["empty folder"]


def test_dest_through_a_symlink_into_src_is_refused(tmp_path: Path, client: Any) -> None:
    source = tmp_path / "src"
    (source / "empty").mkdir(parents=True)
    (source / "a.txt").write_bytes(b"a")
    link = tmp_path / "link"
    link.symlink_to(source / "empty")
    with pytest.raises(PipelineError, match="inside the source"):
        compress_drive(source, link, client=client, options=NO_GAIN)
    assert sorted(p.name for p in source.rglob("*")) == ["a.txt", "empty"]
    with pytest.raises(PipelineError, match="contains the source"):
        compress_drive(source, tmp_path, client=client, options=NO_GAIN)
