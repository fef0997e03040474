"""BagIt writing (validated by the bagit package and sha256sum -c) and bag verification."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import bagit
import numpy as np
import pytest
from drives import write_mrc

from empcompress.convert import convert_movie
from empcompress.errors import PipelineError
from empcompress.manifest import (
    PayloadFile,
    decode_manifest_path,
    encode_manifest_path,
    read_bag_info,
    read_manifest,
    seal_bag,
    verify_bag,
    write_bag,
)

NAMES = ["notes.txt", "Session 1/movie é 1.tif", "deep/a/b/c.star", "empty file"]


def _payload_file(root: Path, rel_path: str, content: bytes) -> PayloadFile:
    path = root / "data" / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return PayloadFile(
        rel_path, len(content), hashlib.sha256(content).hexdigest(), hashlib.md5(content).hexdigest()
    )


@pytest.fixture
def bag(tmp_path: Path) -> Path:
    root = tmp_path / "bag"
    payload = [
        _payload_file(root, name, (name * 7).encode() if "empty" not in name else b"") for name in NAMES
    ]
    (root / "report.json").write_text('{"ok": true}\n', encoding="utf-8")
    write_bag(
        root,
        payload=payload,
        bag_info=[
            ("Empcompress-Source", "/media/drive ü"),
            ("Empcompress-Storage-Decision", "3 movies as uint8"),
        ],
        tag_files=["report.json"],
    )
    seal_bag(root)
    return root


def test_written_bag_validates_with_bagit_and_sha256sum(bag: Path) -> None:
    bagit.Bag(str(bag)).validate()  # raises BagValidationError when not valid
    for tool, manifest in (("sha256sum", "manifest-sha256.txt"), ("md5sum", "manifest-md5.txt")):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
        result = subprocess.run([tool, "-c", manifest], cwd=bag, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(": OK") == len(NAMES)
    tags = subprocess.run(
        ["sha256sum", "-c", "tagmanifest-sha256.txt"], cwd=bag, capture_output=True, text=True
    )
    assert tags.returncode == 0, tags.stdout


def test_bag_files_say_what_they_should(bag: Path) -> None:
    assert (bag / "bagit.txt").read_text(
        encoding="utf-8"
    ) == "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n"
    info = dict(read_bag_info(bag / "bag-info.txt"))
    total = sum(len((name * 7).encode()) for name in NAMES if "empty" not in name)
    assert info["Payload-Oxum"] == f"{total}.{len(NAMES)}"
    assert info["Empcompress-Source"] == "/media/drive ü"
    assert "Bag-Software-Agent" in info and "Bagging-Date" in info
    manifest = read_manifest(bag / "manifest-sha256.txt")
    assert sorted(manifest) == sorted(f"data/{name}" for name in NAMES)
    tag_manifest = read_manifest(bag / "tagmanifest-sha256.txt")
    assert {"bagit.txt", "bag-info.txt", "manifest-sha256.txt", "manifest-md5.txt", "report.json"} == set(
        tag_manifest
    )


def test_line_breaks_in_names_are_percent_encoded() -> None:
    name = "data/odd\nname\r.txt"
    assert "\n" not in encode_manifest_path(name) and "\r" not in encode_manifest_path(name)
    assert decode_manifest_path(encode_manifest_path(name)) == name
    # RFC 8493: a literal percent sign is written %25 and read back
    assert encode_manifest_path("data/100%.txt") == "data/100%25.txt"
    assert decode_manifest_path("data/100%25.txt") == "data/100%.txt"
    assert decode_manifest_path("data/a%250A%0a%0D%25") == "data/a%0A\n\r%"


def test_verify_passes_on_a_good_bag(bag: Path) -> None:
    result = verify_bag(bag, threads=2)
    assert result.ok, result.problems
    assert result.n_payload_files == len(NAMES)
    assert result.n_tag_files == 5


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("flip", "sha256 is"),
        ("remove", "listed in the manifests but missing"),
        ("extra", "not in the manifests"),
        ("temporary", "temporary file"),
        ("tag", "sha256 is"),
    ],
)
def test_verify_finds_damage(bag: Path, damage: str, expected: str) -> None:
    target = bag / "data" / "Session 1" / "movie é 1.tif"
    if damage == "flip":
        content = bytearray(target.read_bytes())
        content[3] ^= 0x01
        target.write_bytes(bytes(content))
    elif damage == "remove":
        target.unlink()
    elif damage == "extra":
        (bag / "data" / "stray.txt").write_text("stray", encoding="utf-8")
    elif damage == "temporary":
        (bag / "data" / ".x.tif.empcompress-tmp-1-abcd").write_bytes(b"half")
    elif damage == "tag":
        (bag / "report.json").write_text('{"ok": false}\n', encoding="utf-8")
    result = verify_bag(bag)
    assert not result.ok
    assert any(expected in problem.problem for problem in result.problems), result.problems
    if damage in ("remove", "extra", "temporary"):
        assert any("Payload-Oxum" in problem.problem for problem in result.problems)


def test_verify_refuses_a_folder_that_is_not_a_bag(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="not a finished bag"):
        verify_bag(tmp_path)


def test_full_verification_decodes_our_tiffs_and_skips_foreign_ones(tmp_path: Path) -> None:
    import tifffile

    root = tmp_path / "bag"
    rng = np.random.default_rng(1)
    source = write_mrc(tmp_path / "m.mrc", rng.poisson(1.0, (4, 32, 48)).astype(np.float32))
    (root / "data").mkdir(parents=True)
    result = convert_movie(source, root / "data" / "m.tif")
    tifffile.imwrite(root / "data" / "foreign.tif", np.zeros((8, 8), np.uint8))
    foreign = (root / "data" / "foreign.tif").read_bytes()
    payload = [
        PayloadFile("m.tif", result.output_size_bytes, result.output_sha256, result.output_md5),
        PayloadFile(
            "foreign.tif", len(foreign), hashlib.sha256(foreign).hexdigest(), hashlib.md5(foreign).hexdigest()
        ),
    ]
    write_bag(root, payload=payload, bag_info=[])
    seal_bag(root)
    quick = verify_bag(root)
    assert quick.ok and quick.n_tiffs_decoded == 0
    full = verify_bag(root, full=True)
    assert full.ok, full.problems
    assert full.n_tiffs_decoded == 1
