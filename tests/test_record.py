"""The record schema: damaged or crafted records give one clean RecordError naming the file and the field."""

from __future__ import annotations

import base64
import copy
import json
import logging
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import counts
from mrc_factory import write_mrc

from empcompress.cli import main
from empcompress.convert import convert_movie
from empcompress.encode import Codec
from empcompress.errors import EmpCompressError, NotOurTiffError, RecordError
from empcompress.info import describe_file
from empcompress.record import canonical_record_text, check_relative_reference, parse_record
from empcompress.restore import restore_movie
from empcompress.verify import verify_tiff
from empcompress.write import write_tiff_stack

Document = dict[str, Any]


def record_document(tiff: Path) -> Document:
    with tifffile.TiffFile(tiff) as handle:
        document: Document = json.loads(handle.pages.first.description)
    return document


def rewrite_with_description(tiff: Path, output: Path, description: str) -> Path:
    """Write ``tiff``'s pages again with our writer, under another (possibly crafted) record text."""
    document = record_document(tiff)
    storage, source = document["storage"], document["source"]
    with tifffile.TiffFile(tiff) as handle:
        frames = handle.asarray()
    frames = frames.reshape(-1, *frames.shape[-2:])
    codec = Codec(
        storage["codec"],
        level=storage["codec_level"],
        huffman_only=storage["huffman_only"],
        predictor=storage["predictor"],
    )
    write_tiff_stack(
        output,
        iter(list(frames)),
        n_frames=frames.shape[0],
        frame_shape=frames.shape[1:],
        dtype=frames.dtype,
        codec=codec,
        rows_per_strip=storage["rows_per_strip"],
        description=description,
        pixel_size_angstrom=float(source["pixel_size_angstrom"]),
        threads=1,
    )
    return output


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source MRC, our TIFF) of a small movie with an extended header."""
    directory = tmp_path_factory.mktemp("record")
    rng = np.random.default_rng(7)
    source = write_mrc(
        directory / "movie.mrc",
        counts(rng, (3, 16, 12), dose=2.0),
        mode=2,
        extended_header=b"\x07" * 128,
        exttyp=b"FEI1",
        pixel_size_angstrom=1.1,
    )
    output = directory / "movie.tif"
    convert_movie(source, output)
    return source, output


def set_field(document: Document, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    target = document
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value


_DELETE = object()
_B64_OF_5_BYTES = base64.b64encode(b"12345").decode()

# (dotted field, crafted value, field named in the message)
CRAFTED: list[tuple[str, Any, str]] = [
    ("source.mode", 7, "source.mode"),
    ("source.mode", "2", "source.mode"),
    ("source.mode", 1, "source.mode"),  # a supported mode that disagrees with the kept header
    ("source.byte_order", "=", "source.byte_order"),
    ("source.byte_order", ">", "source.byte_order"),
    ("source.header_b64", "!!!notbase64", "source.header_b64"),
    ("source.header_b64", _B64_OF_5_BYTES, "source.header_b64"),
    ("source.extended_header_b64", _B64_OF_5_BYTES, "source.extended_header_b64"),
    ("source.extended_header_b64", "", "source.extended_header_b64"),
    ("source.sha256", None, "source.sha256"),
    ("source.sha256", "abc", "source.sha256"),
    ("source.sha256", "A" * 64, "source.sha256"),
    ("source.name", "/etc/passwd", "source.name"),
    ("source.name", "../../x.mrc", "source.name"),
    ("source.name", "", "source.name"),
    ("source.name", "..", "source.name"),
    ("source.name", "a\0b.mrc", "source.name"),  # NUL: never in a POSIX name (a line break may be)
    ("source.name", 5, "source.name"),
    ("source.nx", 10**30, "source.nx"),
    ("source.nx", -3, "source.nx"),
    ("source.nx", 13, "source.nx"),
    ("source.nz", 4, "source.nz"),
    ("source.nz", True, "source.nz"),
    ("source.ny", 1.5, "source.ny"),
    ("source.size_bytes", 2**70, "source.size_bytes"),
    ("source.size_bytes", 5000, "source.header_b64"),
    ("source.bytes_are_signed", "yes", "source.bytes_are_signed"),
    ("source.pixel_size_angstrom", "1.1", "source.pixel_size_angstrom"),
    ("source.pixel_size_angstrom", 1.2, "source.pixel_size_angstrom"),
    ("source.exttyp", "SERI", "source.exttyp"),
    ("source.unexpected", 1, "source.unexpected"),
    ("source.nx", _DELETE, "source.nx"),
    ("source", [], "source"),
    ("storage.stored_dtype", "complex64", "storage.stored_dtype"),
    ("storage.stored_dtype", "float64", "storage.stored_dtype"),
    ("storage.stored_dtype", "float32", "storage.is_integer"),
    ("storage.is_integer", False, "storage.is_integer"),
    ("storage.value_max", 1e9, "storage.value_min"),
    ("storage.codec", "jpeg", "storage.codec"),
    ("storage.codec_level", 99, "storage.codec_level"),
    ("storage.predictor", 2, "storage.predictor"),
    ("storage.predictor", 3, "storage.predictor"),
    ("storage.rows_per_strip", 0, "storage.rows_per_strip"),
    ("storage.rows_per_strip", 10**9, "storage.rows_per_strip"),
    ("storage.huffman_only", 1, "storage.huffman_only"),
    ("storage.reason", {"a": 1}, "storage.reason"),
    ("storage.gain", "yes", "storage.gain"),
    ("storage", None, "storage"),
    ("tool_version", "0.1 ; rm -rf", "tool_version"),
    ("tool", "other", "tool"),
    ("row_convention", "as is", "row_convention"),
    ("format_version", "1", "format_version"),
    ("format_version", 0, "format_version"),
    ("extra", 5, "extra"),
    ("unknown_top", 1, "unknown_top"),
]


@pytest.mark.parametrize(("field", "value", "named"), CRAFTED, ids=[f"{f}={v!r}"[:40] for f, v, _ in CRAFTED])
def test_crafted_field_gives_a_record_error_naming_file_and_field(
    original: tuple[Path, Path], field: str, value: Any, named: str
) -> None:
    document = record_document(original[1])
    set_field(document, field, value)
    with pytest.raises(RecordError, match=re.escape(named)) as raised:
        parse_record(json.dumps(document), path_name="/data/movie.tif")
    assert "/data/movie.tif" in str(raised.value)
    assert pickle.loads(pickle.dumps(raised.value)).message == raised.value.message


GAIN_ENTRY: Document = {
    "version": 1,
    "kind": "gain-normalised",
    "reference": "gain-reference.mrc",
    "reference_sha256": "0" * 64,
    "formula": "f",
    "n_exceptions": 0,
    "exception_encoding": "e",
    "exceptions": "",
}


def gain_entry_record(original: tuple[Path, Path], **changes: Any) -> Document:
    document = record_document(original[1])
    import zlib

    gain = dict(GAIN_ENTRY)
    gain["exceptions"] = base64.b64encode(zlib.compress(np.zeros(3, "<u4").tobytes())).decode()
    gain.update(changes)
    document["storage"]["gain"] = {key: value for key, value in gain.items() if value is not _DELETE}
    return document


TRANSFORM = {
    "orientation": "flip-rows",
    "scale": "same",
    "reciprocal": False,
    "relion_gain_rot": 0,
    "relion_gain_flip": 1,
}


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"reference": "/etc/passwd"}, "storage.gain.reference"),
        ({"reference": "C:/gain.mrc"}, "storage.gain.reference"),
        ({"reference": "a//b.mrc"}, "storage.gain.reference"),
        ({"reference": "./gain.mrc"}, "storage.gain.reference"),
        ({"reference": "a\\..\\b"}, "storage.gain.reference"),
        ({"reference": ""}, "storage.gain.reference"),
        ({"reference": 3}, "storage.gain.reference"),
        ({"reference_sha256": None}, "storage.gain.reference_sha256"),
        ({"kind": "magic"}, "storage.gain.kind"),
        ({"version": 3}, "storage.gain.version"),
        ({"version": 0}, "storage.gain.version"),
        ({"transform": TRANSFORM}, "storage.gain.transform"),  # version 1 has none
        ({"version": 2, "transform": "flip"}, "storage.gain.transform"),
        ({"version": 2, "transform": {**TRANSFORM, "orientation": "sideways"}}, "transform.orientation"),
        ({"version": 2, "transform": {**TRANSFORM, "scale": "bin3"}}, "transform.scale"),
        ({"version": 2, "transform": {**TRANSFORM, "reciprocal": 1}}, "transform.reciprocal"),
        ({"version": 2, "transform": {**TRANSFORM, "relion_gain_flip": 2}}, "transform.relion_gain_rot"),
        ({"version": 2, "transform": {**TRANSFORM, "extra": 1}}, "transform.extra"),
        ({"n_exceptions": -1}, "storage.gain.n_exceptions"),
        ({"n_exceptions": 10**12}, "storage.gain.n_exceptions"),
        ({"exceptions": "%%%"}, "storage.gain.exceptions"),
        ({"exceptions": base64.b64encode(b"not zlib").decode()}, "storage.gain.exceptions"),
        # a zlib bomb: small text, huge output; never inflated past the expected size
        (
            {"exceptions": base64.b64encode(__import__("zlib").compress(b"\0" * (1 << 24))).decode()},
            "exceptions",
        ),
        ({"kind": "carried-over"}, "storage.gain.formula"),
    ],
)
def test_crafted_gain_entry(original: tuple[Path, Path], changes: Document, named: str) -> None:
    document = gain_entry_record(original, **changes)
    with pytest.raises(RecordError, match=re.escape(named)):
        parse_record(json.dumps(document), path_name="x.tif")


def test_a_valid_gain_entry_passes(original: tuple[Path, Path]) -> None:
    record = parse_record(json.dumps(gain_entry_record(original)), path_name="x.tif")
    assert record.storage.gain is not None and record.storage.gain["kind"] == "gain-normalised"


def test_our_records_parse_and_are_canonical(original: tuple[Path, Path]) -> None:
    source, output = original
    with tifffile.TiffFile(output) as handle:
        text = handle.pages.first.description
    record = parse_record(text, path_name=str(output))
    assert record.source.header_bytes == source.read_bytes()[:1024]
    assert record.source.extended_header_bytes == b"\x07" * 128
    assert canonical_record_text(json.loads(text)) == text


def test_not_a_record_is_not_ours() -> None:
    for text in ("", "hello", "[1]", '{"format":"other"}', None, b"bytes"):
        with pytest.raises(NotOurTiffError):
            parse_record(text, path_name="x.tif")
    with pytest.raises(RecordError, match="not valid JSON"):
        parse_record('{"format":"empcompress","format_version":1,', path_name="x.tif")
    with pytest.raises(NotOurTiffError, match="upgrade"):
        parse_record('{"format":"empcompress","format_version":2}', path_name="x.tif")


def test_deeply_nested_or_huge_numbers_are_clean(original: tuple[Path, Path]) -> None:
    with pytest.raises(EmpCompressError):
        parse_record('{"format":"empcompress","extra":' + "[" * 100000 + "]" * 100000 + "}", path_name="x")
    document = record_document(original[1])
    text = canonical_record_text(document).replace('"nz":3', '"nz":' + "9" * 5000)
    assert text != canonical_record_text(document)
    with pytest.raises(EmpCompressError):
        parse_record(text, path_name="x")


@pytest.mark.parametrize(
    "reference",
    ["gain.mrc", "../gain.mrc", "a/b/../gain-reference.mrc", "sub/gain.mrc"],
)
def test_relative_references_accepted(reference: str) -> None:
    assert check_relative_reference(reference) is None


# ---------------------------------------------------------------- through the commands


def crafted_tiff(original: tuple[Path, Path], directory: Path, change: Callable[[Document], None]) -> Path:
    document = record_document(original[1])
    change(document)
    return rewrite_with_description(original[1], directory / "crafted.tif", canonical_record_text(document))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d["source"].update(mode=7), "source.mode"),
        (lambda d: d["source"].update(name="/etc/passwd"), "source.name"),
        (lambda d: d["source"].update(nx=2**40), "source.nx"),
        (lambda d: d["storage"].update(stored_dtype="float64"), "storage.stored_dtype"),
        (lambda d: d["source"].update(extended_header_b64=""), "source.extended_header_b64"),
    ],
)
def test_commands_print_one_error_line_for_a_crafted_record(
    original: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    change: Callable[[Document], None],
    named: str,
) -> None:
    crafted = crafted_tiff(original, tmp_path, change)
    caplog.set_level(logging.DEBUG)
    for call in (
        lambda: verify_tiff(crafted),
        lambda: restore_movie(crafted, tmp_path / "out.mrc"),
        lambda: describe_file(crafted),
    ):
        with pytest.raises(RecordError, match=re.escape(named)):
            call()
    assert not (tmp_path / "out.mrc").exists()
    capsys.readouterr()
    for command in (["verify", str(crafted)], ["restore", str(crafted)], ["info", str(crafted)]):
        assert main([*command, "-q"] if command[0] != "info" else command) == 1
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and str(crafted) in lines[0], captured
        assert "Traceback" not in captured.err + captured.out
    assert not [r for r in caplog.records if r.name.startswith("tifffile")]


def test_damaged_tiff_structure_gives_one_line_and_no_tifffile_log(
    original: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tifffile's own warnings about a broken IFD chain never reach the terminal."""
    data = bytearray(original[1].read_bytes())
    with tifffile.TiffFile(original[1]) as handle:
        page = handle.pages[1]
        assert isinstance(page, tifffile.TiffPage)
        second_ifd = page.offset
    data[second_ifd : second_ifd + 2] = b"\xff\xff"  # an absurd entry count
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(bytes(data))
    for command in (["verify", str(damaged), "-q"], ["restore", str(damaged), "-q"], ["info", str(damaged)]):
        assert main(command) == 1
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), captured


def test_a_copy_with_an_unchanged_record_still_round_trips(
    original: tuple[Path, Path], tmp_path: Path
) -> None:
    """The rewrite helper itself is faithful: the same record gives a TIFF that verifies and restores."""
    source, output = original
    same = crafted_tiff(original, tmp_path, lambda d: None)
    verify_tiff(same, against=source)
    restore_movie(same, tmp_path / "back.mrc")
    assert (tmp_path / "back.mrc").read_bytes() == source.read_bytes()
    assert copy.deepcopy(record_document(same)) == record_document(output)
