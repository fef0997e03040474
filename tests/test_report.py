"""The reports of a compress run: report.json written as a stream is exactly the document, and writing
the reports of many files needs memory that does not grow with the number of files."""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from empcompress.journal import OUTCOME_COPIED, STATE_DONE, STATE_FAILED, GeneratedEntry, JournalEntry
from empcompress.manifest import BAG_DECLARATION_FILES
from empcompress.report import (
    MAX_LISTED_FILES,
    REPORT_FILES,
    REPORT_JSON,
    REPORT_MARKDOWN,
    CategoryReport,
    CompressSummary,
    FileProblem,
    GainMember,
    GainSetReport,
    file_list_lines,
    file_records,
    report_document,
    report_head,
    report_json_chunks,
    write_reports,
)


def _row(index: int, *, name: str = "", state: str = STATE_DONE, message: str = "") -> JournalEntry:
    rel_path = name or f"Images-Disc1/GridSquare_{index // 500:05d}/Data/FoilHole_{index:07d}_Data.xml"
    return JournalEntry(
        rel_path=rel_path,
        category="other",
        action="copy",
        state=state,
        source_size_bytes=4096,
        source_mtime_ns=1_700_000_000_000_000_000 + index,
        output_rel_path=rel_path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
        source_sha256=f"{index:064x}",
        outcome=OUTCOME_COPIED if state == STATE_DONE else "",
        output_size_bytes=4096,
        output_sha256=f"{index:064x}",
        output_md5=f"{index:032x}",
        message=message,
        elapsed_seconds=0.001,
        updated_at=1.0,
    )


def _summary(rows: list[JournalEntry], **changes: object) -> CompressSummary:
    fields: dict[str, object] = {
        "source": "/drive",
        "dest": "/bag",
        "cluster": "local",
        "dashboard_link": "",
        "started_at": "2026-11-25T23:00:00+0000",
        "elapsed_seconds": 12.5,
        "interrupted": False,
        "n_files": len(rows),
        "n_up_to_date": 0,
        "n_converted": 0,
        "n_copied": len(rows),
        "n_kept_as_is": 0,
        "n_failed": 0,
        "bytes_read": 4096 * len(rows),
        "bytes_written": 4096 * len(rows),
        "n_stale_removed": 0,
        "source_size_bytes": 4096 * len(rows),
        "payload_size_bytes": 4096 * len(rows),
        "categories": (CategoryReport("other", len(rows), 4096 * len(rows), 4096 * len(rows)),),
        "decisions": (),
        "gain_references": (),
        "failures": (),
        "kept_as_is": (),
        "not_touched": (),
        "bag_written": True,
        "sealed": True,
    }
    fields.update(changes)
    return CompressSummary(**fields)  # type: ignore[arg-type]


def _varied_rows() -> list[JournalEntry]:
    """Rows that exercise the encoder: non-UTF-8 and non-ASCII names, quotes, a failure, a gain member."""
    return [
        _row(0),
        _row(1, name=os.fsdecode(b"odd/na\xffme.xml")),
        _row(2, name='Grid "Ä"\\tab/FoilHole_2.jpg', message="note: é ✓"),
        _row(3, state=STATE_FAILED, message="cannot be read: " + os.fsdecode(b"bad-\xfe")),
        _row(4, name="Movies/m_001.tif"),
    ]


def _gain_summary(rows: list[JournalEntry]) -> CompressSummary:
    member = GainMember("Movies/m_001.tif", "identity", "--gain_rot 0 --gain_flip 0", 3)
    group = GainSetReport(
        output_rel_path="Movies/gain-reference.mrc",
        folder="Movies",
        n_members=1,
        n_converted_with_gain=1,
        output_sha256="ab" * 32,
        detail='{"how": "estimated"}',
        relion_orientation="--gain_rot 0 --gain_flip 0",
        members=(member,),
    )
    return _summary(
        rows,
        gain_references=(group,),
        failures=(FileProblem(rows[3].rel_path, rows[3].message),),
        empty_folders=(os.fsdecode(b"empty-\xfa"),),
    )


@pytest.mark.parametrize("n_rows", [0, 1, 5])
def test_streamed_report_json_is_the_document_json_dumps_writes(n_rows: int) -> None:
    rows = _varied_rows()[:n_rows]
    summary = _gain_summary(_varied_rows())
    generated = [GeneratedEntry("Movies/gain-reference.mrc", "gain-reference", STATE_DONE)]
    tail = {"empiar_deposition": {"file": "x.json", "valid": False, "to_fill": ["a", "b"], "problems": []}}
    head = report_head(summary, generated)
    streamed = "".join(report_json_chunks(head, file_records(summary, rows), tail))
    document = {**head, "files": list(file_records(summary, rows)), **tail}
    expected = json.dumps(document, indent=2, ensure_ascii=False)
    assert streamed == expected.encode("utf-8", "backslashreplace").decode("utf-8") + "\n"
    loaded = json.loads(streamed)
    assert list(loaded)[-2:] == ["files", "empiar_deposition"]
    assert len(loaded["files"]) == n_rows
    # the in-memory document (small bags, tests) is the same content
    in_memory = report_document(summary, rows, generated)
    assert {**in_memory, "written_at": ""} == {**head, "files": document["files"], "written_at": ""}


def test_report_records_keep_non_utf8_names_and_gain_orientation() -> None:
    rows = _varied_rows()
    records = list(file_records(_gain_summary(rows), rows))
    assert records[1]["source_path_hex"] == b"odd/na\xffme.xml".hex()
    assert records[4]["gain_orientation"] == "identity"
    assert records[3]["output"] is None and records[3]["state"] == STATE_FAILED


def test_file_list_lists_every_done_file_sorted_after_the_tag_files() -> None:
    rows = [_row(index) for index in (3, 1, 2)] + [_row(9, state=STATE_FAILED)]
    generated = [GeneratedEntry("Movies/gain-reference.mrc", "gain-reference", STATE_DONE)]
    lines = list(file_list_lines(rows, generated))
    tag_files = sorted([*BAG_DECLARATION_FILES, "bag-info.txt", *REPORT_FILES])
    assert lines[: len(tag_files)] == tag_files
    payload = [line for line in lines if line.startswith("data/")]
    assert payload == sorted(payload)
    assert len(payload) == 4  # three done rows and the generated reference, not the failed row


def _write(dest: Path, rows: list[JournalEntry]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    write_reports(dest, summary=_summary(rows, dest=str(dest)), entries=rows, generated=[])


def test_reports_of_many_files_list_a_capped_number_in_markdown_and_all_in_json(tmp_path: Path) -> None:
    rows = [_row(index) for index in range(MAX_LISTED_FILES + 7)]
    _write(tmp_path / "bag", rows)
    document = json.loads((tmp_path / "bag" / REPORT_JSON).read_text(encoding="utf-8"))
    assert [record["source"] for record in document["files"]] == [row.rel_path for row in rows]
    assert document["empiar_deposition"]["file"] == "empiar-deposition.json"
    markdown = (tmp_path / "bag" / REPORT_MARKDOWN).read_text(encoding="utf-8")
    assert f"... and 7 more files: see `{REPORT_JSON}`." in markdown
    assert rows[MAX_LISTED_FILES - 1].rel_path in markdown and rows[-1].rel_path not in markdown
    lines = (tmp_path / "bag" / "ascp-file-list.txt").read_text(encoding="utf-8").splitlines()
    assert sum(line.startswith("data/") for line in lines) == len(rows)
    assert not [path.name for path in (tmp_path / "bag").iterdir() if path.name.startswith(".")]


def _peak_bytes_of_writing(dest: Path, n_rows: int) -> int:
    rows = [_row(index) for index in range(n_rows)]  # the caller's rows: made before measuring
    gc.collect()
    tracemalloc.start()
    try:
        _write(dest, rows)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_memory_of_writing_the_reports_does_not_grow_with_the_files(tmp_path: Path) -> None:
    _peak_bytes_of_writing(tmp_path / "warm", 200)  # imports, matplotlib's caches
    small = _peak_bytes_of_writing(tmp_path / "small", 5_000)
    large = _peak_bytes_of_writing(tmp_path / "large", 30_000)
    # what grows is the upload list's sorted references to the rows' paths (8 bytes a file); the rest
    # is bounded (write buffers, and a global table of Python's that may grow while measuring, ~2 MiB):
    # at most 8 MiB for 25,000 more files, where building the whole document and its text in memory
    # took ~7 KiB a file (170 MiB)
    assert large - small < 8 << 20, (small, large)
