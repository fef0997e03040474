"""Strict single-file verification: damage libtiff readers see fails ``verify`` even when pixels decode."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import counts, require_tool
from hypothesis import given, settings
from hypothesis import strategies as st
from mrc_factory import write_mrc
from test_record import record_document, rewrite_with_description

import empcompress.write
from empcompress.convert import convert_movie
from empcompress.errors import EmpCompressError, VerificationError
from empcompress.record import parse_record
from empcompress.verify import expected_resolution, verify_tiff

#: Record fields with no second copy in the file (see docs/record-format.md, section 4).
INFORMATIONAL = {
    ("source", "name"),
    ("storage", "reason"),
    ("storage", "value_min"),
    ("storage", "value_max"),
    ("storage", "codec_level"),
}


@pytest.fixture(scope="module")
def tiffs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small TIFFs of every kind our writer makes: counts (deflate, LZW, none), floats, 16-bit multi-strip."""
    directory = tmp_path_factory.mktemp("layout")
    rng = np.random.default_rng(3)
    made = {}
    count_movie = write_mrc(directory / "c.mrc", counts(rng, (3, 20, 24)), mode=2, pixel_size_angstrom=0.83)
    for codec in ("deflate", "lzw", "none"):
        made[codec] = directory / f"c_{codec}.tif"
        convert_movie(count_movie, made[codec], codec=codec)
    floats = write_mrc(
        directory / "f.mrc",
        rng.standard_normal((2, 16, 20)).astype(np.float32),
        mode=2,
        pixel_size_angstrom=0,
    )
    made["float"] = directory / "f.tif"
    convert_movie(floats, made["float"])
    wide = write_mrc(
        directory / "w.mrc", rng.integers(0, 3000, (2, 600, 500)).astype(np.uint16), mode=6, byte_order=">"
    )
    made["multistrip"] = directory / "w.tif"
    convert_movie(wide, made["multistrip"], codec="lzw")
    return made


def entry_offset(path: Path, page: int, tag: int) -> int:
    with tifffile.TiffFile(path) as handle:
        ifd = handle.pages[page]
        assert isinstance(ifd, tifffile.TiffPage)
        return int(ifd.tags[tag].offset)


def damaged_copy(path: Path, directory: Path, edits: list[tuple[int, bytes]]) -> Path:
    data = bytearray(path.read_bytes())
    for offset, replacement in edits:
        data[offset : offset + len(replacement)] = replacement
    out = directory / f"damaged_{path.name}"
    out.write_bytes(bytes(data))
    return out


def test_all_our_kinds_pass(tiffs: dict[str, Path]) -> None:
    for path in tiffs.values():
        verify_tiff(path)
    with tifffile.TiffFile(tiffs["multistrip"]) as handle:
        page = handle.pages[0]
        assert isinstance(page, tifffile.TiffPage) and len(page.dataoffsets) > 1


def inline_value(path: Path, page: int, tag: int) -> int:
    return entry_offset(path, page, tag) + 8


@pytest.mark.parametrize(
    ("what", "tag", "page", "value"),
    [
        ("photometric min-is-white", 262, 1, struct.pack("<H", 0)),
        ("sample format signed", 339, 2, struct.pack("<H", 2)),
        ("rows per strip", 278, 1, struct.pack("<I", 7)),
        ("resolution unit inch", 296, 0, struct.pack("<H", 2)),
        ("bits per sample", 258, 1, struct.pack("<H", 16)),
        ("samples per pixel", 277, 2, struct.pack("<H", 3)),
        ("image width", 256, 1, struct.pack("<I", 23)),
    ],
)
def test_tag_damage_fails(
    tiffs: dict[str, Path], tmp_path: Path, what: str, tag: int, page: int, value: bytes
) -> None:
    path = tiffs["deflate"]
    damaged = damaged_copy(path, tmp_path, [(inline_value(path, page, tag), value)])
    with pytest.raises(EmpCompressError, match=damaged.name):
        verify_tiff(damaged)


def test_tag_code_damage_fails(tiffs: dict[str, Path], tmp_path: Path) -> None:
    """SampleFormat's entry renamed (what a flipped bit in the tag code does): libtiff loses it."""
    path = tiffs["deflate"]
    damaged = damaged_copy(path, tmp_path, [(entry_offset(path, 1, 339), struct.pack("<H", 338))])
    with pytest.raises(VerificationError, match="unexpected tags"):
        verify_tiff(damaged)


def test_strip_byte_count_and_resolution_damage_fail(tiffs: dict[str, Path], tmp_path: Path) -> None:
    """(An LZW strip one byte shorter may lose only its end-of-information code, which libtiff does
    not need: the bit-flip property below covers that case.)"""
    path = tiffs["deflate"]
    with tifffile.TiffFile(path) as handle:
        page = handle.pages[1]
        assert isinstance(page, tifffile.TiffPage)
        count_at = int(page.tags[279].offset) + 8
        resolution_at = int(page.tags[282].valueoffset)
        byte_count = page.databytecounts[0]
    for edit in ([(count_at, struct.pack("<I", byte_count - 1))], [(resolution_at + 4, b"\x07")]):
        with pytest.raises(VerificationError):
            verify_tiff(damaged_copy(path, tmp_path, edit))


def test_fewer_pages_and_loops_fail(tiffs: dict[str, Path], tmp_path: Path) -> None:
    path = tiffs["deflate"]
    with tifffile.TiffFile(path) as handle:
        pages = [handle.pages[index] for index in range(3)]
        offsets = [int(page.offset) for page in pages]  # type: ignore[union-attr]
        next_at = [offset + 2 + 12 * len(page.tags) for offset, page in zip(offsets, pages, strict=True)]  # type: ignore[union-attr]
    for edit, message in (
        ((next_at[1], struct.pack("<I", 0)), "pages|chain"),
        ((next_at[2], struct.pack("<I", offsets[1])), "chain|pages"),
        ((next_at[0], struct.pack("<I", offsets[2])), "pages|chain"),
    ):
        with pytest.raises(VerificationError, match=message):
            verify_tiff(damaged_copy(path, tmp_path, [edit]))


def test_non_canonical_record_text_fails(tiffs: dict[str, Path], tmp_path: Path) -> None:
    """Same record, other spelling (spaces): libtiff copies the text, so it must be ours exactly."""
    path = tiffs["deflate"]
    document = record_document(path)
    spaced = rewrite_with_description(path, tmp_path / "spaced.tif", json.dumps(document))
    parse_record(json.dumps(document), path_name="ok")  # the record itself is fine
    with pytest.raises(VerificationError, match="spelled"):
        verify_tiff(spaced)


def test_bigtiff_exactly_when_the_writer_would(
    tiffs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rng: np.random.Generator
) -> None:
    source = write_mrc(tmp_path / "b.mrc", counts(rng, (2, 20, 24)), mode=2)
    with monkeypatch.context() as patch:
        patch.setattr(empcompress.write, "CLASSIC_TIFF_LIMIT_BYTES", 1000)
        convert_movie(source, tmp_path / "b.tif")
        verify_tiff(tmp_path / "b.tif")
    assert (tmp_path / "b.tif").read_bytes()[2:4] == b"+\0"
    with pytest.raises(VerificationError, match="writes a classic TIFF"):
        verify_tiff(tmp_path / "b.tif")  # the writer would have written classic TIFF


def test_expected_resolution_matches_what_tifffile_writes(tmp_path: Path) -> None:
    for size in (0.83, 1.0, 0.5, 1e-9, 3.3e-5, 1234.5, 0.0, -1.0, float("nan"), float("inf")):
        per_cm = 1e8 / size if size > 0 and np.isfinite(size) else 0.0
        if 0 < per_cm < 2**32 - 1:
            tifffile.imwrite(tmp_path / "r.tif", np.zeros((2, 2), np.uint8), resolution=(per_cm, per_cm))
            with tifffile.TiffFile(tmp_path / "r.tif") as handle:
                written = handle.pages.first.tags[282].value
            assert expected_resolution(size) == (tuple(written), 3)
        else:
            assert expected_resolution(size) == ((1, 1), 1)


# ---------------------------------------------------------------- random bit flips against libtiff


def libtiff_copy(path: Path, tiffcp: str) -> bytes | None:
    """What libtiff reads: ``tiffcp -c none`` output, or None when libtiff refuses the file."""
    out = path.with_name(path.stem + ".tiffcp.tif")
    result = subprocess.run([tiffcp, "-c", "none", str(path), str(out)], capture_output=True, timeout=60)
    if result.returncode != 0 or not out.exists():
        return None
    data = out.read_bytes()
    out.unlink()
    return data


def description_span(path: Path) -> tuple[int, int]:
    with tifffile.TiffFile(path) as handle:
        tag = handle.pages.first.tags[270]
        return int(tag.valueoffset), int(tag.count)


@pytest.fixture(scope="module")
def baselines(tiffs: dict[str, Path]) -> dict[str, bytes]:
    tiffcp = require_tool("tiffcp")
    copies = {}
    for name, path in tiffs.items():
        if name == "multistrip":
            continue
        copied = libtiff_copy(path, tiffcp)
        assert copied is not None
        copies[name] = copied
    return copies


def changed_fields(before: dict[str, object], after: dict[str, object]) -> set[tuple[str, str]]:
    changed = set()
    for section in ("source", "storage"):
        first, second = before[section], after[section]
        assert isinstance(first, dict) and isinstance(second, dict)
        changed |= {
            (section, key) for key in first.keys() | second.keys() if first.get(key) != second.get(key)
        }
    changed |= {
        ("", key)
        for key in before.keys() | after.keys()
        if key not in ("source", "storage") and before.get(key) != after.get(key)
    }
    return changed


@pytest.mark.integration
@settings(max_examples=300)
@given(data=st.data())
def test_random_bit_flips_fail_verify_or_change_nothing_libtiff_reads(
    tiffs: dict[str, Path],
    baselines: dict[str, bytes],
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    """Flip one bit anywhere. Either verify fails, or libtiff (``tiffcp -c none``) reads exactly what it
    reads from the undamaged file; a flip inside the record may pass only if it changes nothing but an
    informational field, which no copy in the file can confirm (docs/record-format.md, section 4)."""
    tiffcp = require_tool("tiffcp")
    name = data.draw(st.sampled_from(sorted(baselines)), label="file")
    path = tiffs[name]
    original = path.read_bytes()
    bit = data.draw(st.integers(0, 8 * len(original) - 1), label="bit")
    damaged_bytes = bytearray(original)
    damaged_bytes[bit // 8] ^= 1 << (bit % 8)
    damaged = tmp_path_factory.mktemp("flip") / path.name
    damaged.write_bytes(bytes(damaged_bytes))
    try:
        verify_tiff(damaged)
    except EmpCompressError:
        return
    copied = libtiff_copy(damaged, tiffcp)
    assert copied is not None, f"verify passed, libtiff refuses the file (bit {bit})"
    start, size = description_span(path)
    if start <= bit // 8 < start + size:
        before, after = record_document(path), record_document(damaged)
        assert changed_fields(before, after) <= INFORMATIONAL, (
            f"bit {bit} changed {changed_fields(before, after)}"
        )
        ours = original[start : start + size]
        copied = copied.replace(bytes(damaged_bytes[start : start + size]), ours)
    assert copied == baselines[name], f"verify passed, libtiff reads something else (bit {bit})"
