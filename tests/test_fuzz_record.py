"""Fuzzing the record parser: a damaged or crafted record gives a clean error, or restores the same bytes."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import counts
from hypothesis import event, given, settings
from hypothesis import strategies as st
from mrc_factory import write_mrc
from test_record import record_document, rewrite_with_description

from empcompress.convert import convert_movie
from empcompress.errors import EmpCompressError, NotOurTiffError, RecordError
from empcompress.info import describe_file
from empcompress.record import canonical_record_text, parse_record
from empcompress.restore import restore_movie
from empcompress.verify import verify_tiff

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", "/etc/passwd", "../../x", "uint8", "<", ">", "lzw", "AAAA", "=" * 4]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def ours(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("fuzz_record")
    rng = np.random.default_rng(17)
    source = write_mrc(
        directory / "m.mrc", counts(rng, (2, 8, 10)), mode=2, extended_header=b"\x01" * 32, exttyp=b"SERI"
    )
    convert_movie(source, directory / "m.tif")
    return source, directory / "m.tif"


@pytest.fixture(scope="module")
def document(ours: tuple[Path, Path]) -> dict[str, Any]:
    return record_document(ours[1])


def leaf_paths(document: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            paths += leaf_paths(value, (*prefix, key))
    return paths


def mutate(document: dict[str, Any], where: tuple[str, ...], action: str, value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(document)
    target = changed
    for key in where[:-1]:
        target = target[key]
    if action == "delete":
        del target[where[-1]]
    elif action == "add":
        target[where[-1] + "_"] = value
    else:
        target[where[-1]] = value
    return changed


@settings(max_examples=300)
@given(data=st.data())
def test_field_mutations_give_record_errors_or_valid_records(
    document: dict[str, Any], data: st.DataObject
) -> None:
    where = data.draw(st.sampled_from(leaf_paths(document)), label="field")
    action = data.draw(st.sampled_from(["replace", "replace", "delete", "add"]), label="action")
    changed = mutate(document, where, action, data.draw(JSON_VALUES, label="value"))
    try:
        parse_record(json.dumps(changed), path_name="m.tif")
    except (RecordError, NotOurTiffError) as error:
        assert "m.tif" in str(error)
        event("refused")
    else:
        event("accepted")


@settings(max_examples=300)
@given(data=st.data())
def test_text_mutations_are_clean(document: dict[str, Any], data: st.DataObject) -> None:
    text = canonical_record_text(document)
    position = data.draw(st.integers(0, len(text) - 1), label="position")
    kind = data.draw(st.sampled_from(["flip", "insert", "delete"]), label="kind")
    if kind == "flip":
        text = (
            text[:position]
            + chr(ord(text[position]) ^ (1 << data.draw(st.integers(0, 7))))
            + text[position + 1 :]
        )
    elif kind == "insert":
        text = text[:position] + data.draw(st.text(min_size=1, max_size=3)) + text[position:]
    else:
        text = text[:position] + text[position + 1 :]
    with contextlib.suppress(RecordError, NotOurTiffError):
        parse_record(text, path_name="m.tif")


@settings(max_examples=25)
@given(data=st.data())
def test_crafted_records_in_real_files_never_crash_nor_restore_other_bytes(
    ours: tuple[Path, Path],
    document: dict[str, Any],
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    """verify, restore and info on a TIFF carrying a mutated record: clean errors, or the exact original."""
    source, tiff = ours
    where = data.draw(st.sampled_from(leaf_paths(document)), label="field")
    action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
    changed = mutate(document, where, action, data.draw(JSON_VALUES, label="value"))
    directory = tmp_path_factory.mktemp("crafted")
    crafted = rewrite_with_description(tiff, directory / "c.tif", canonical_record_text(changed))
    for call in (lambda: verify_tiff(crafted), lambda: describe_file(crafted)):
        try:
            call()
        except EmpCompressError as error:
            assert str(crafted) in str(error)
    try:
        restore_movie(crafted, directory / "back.mrc")
    except EmpCompressError:
        assert not (directory / "back.mrc").exists()
        event("refused")
        return
    event("restored")
    assert (directory / "back.mrc").read_bytes() == source.read_bytes()
