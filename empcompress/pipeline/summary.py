"""The summary of a compress run: the bag as the journal describes it, and what this run did."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath

from ..errors import EmpCompressError
from ..journal import (
    OUTCOME_CONVERTED,
    OUTCOME_COPIED,
    OUTCOME_KEPT_AS_IS,
    STATE_DONE,
    STATE_FAILED,
    GeneratedEntry,
    JournalEntry,
)
from ..manifest import PAYLOAD_DIRNAME
from ..report import (
    CategoryReport,
    CompressSummary,
    DecisionReport,
    FileProblem,
    GainMember,
    GainSetReport,
)
from ..scan import CATEGORIES, ScanPlan
from .driver import Driver
from .gain_groups import LEFT_OUT_PREFIX, ORIGIN_DEPOSITOR, ORIGIN_ESTIMATED

__all__ = ["build_summary"]


def build_summary(
    *,
    plan: ScanPlan,
    rows: dict[str, JournalEntry],
    generated: dict[str, GeneratedEntry],
    driver: Driver,
    source: Path,
    dest: Path,
    started_at: str,
    elapsed_seconds: float,
    n_up_to_date: int,
    n_stale: int,
    cluster: str,
    dashboard_link: str,
    bag_written: bool,
    sealed: bool = False,
    audit_problems: tuple[FileProblem, ...] = (),
) -> CompressSummary:
    planned = {entry.rel_path: entry for entry in plan.files}
    in_bag = [row for name, row in rows.items() if name in planned and row.state == STATE_DONE]
    categories = []
    for category in CATEGORIES:
        members = [entry for entry in plan.files if entry.category == category]
        outputs = [
            rows[e.rel_path] for e in members if e.rel_path in rows and rows[e.rel_path].state == STATE_DONE
        ]
        categories.append(
            CategoryReport(
                category=category,
                n_files=len(members),
                source_size_bytes=sum(entry.size_bytes for entry in members),
                output_size_bytes=sum(row.output_size_bytes for row in outputs),
            )
        )
    decisions: dict[tuple[str, str], list[JournalEntry]] = defaultdict(list)
    for row in in_bag:
        if row.outcome == OUTCOME_CONVERTED:
            stored = row.stored_dtype + (" (counts with a gain reference)" if row.gain_reference else "")
            decisions[(stored, row.codec)].append(row)
    decision_reports = tuple(
        DecisionReport(
            stored_dtype=stored,
            codec=codec,
            n_movies=len(members),
            source_size_bytes=sum(row.source_size_bytes for row in members),
            output_size_bytes=sum(row.output_size_bytes for row in members),
        )
        for (stored, codec), members in sorted(decisions.items())
    )
    gain_reports = _gain_groups(in_bag, generated, dest / PAYLOAD_DIRNAME)
    gain_left_out = tuple(
        FileProblem(row.rel_path, row.message.split("; ")[0].removeprefix(LEFT_OUT_PREFIX))
        for row in sorted(in_bag, key=lambda r: r.rel_path)
        if row.message.startswith(LEFT_OUT_PREFIX)
    )
    failures = tuple(
        FileProblem(name, row.message or "failed")
        for name, row in sorted(rows.items())
        if name in planned and row.state == STATE_FAILED
    ) + tuple(FileProblem(item.rel_path, item.reason) for item in plan.skipped if item.unreadable)
    kept = tuple(
        FileProblem(row.rel_path, row.message or "kept as it was")
        for row in sorted(in_bag, key=lambda r: r.rel_path)
        if row.outcome == OUTCOME_KEPT_AS_IS
    )
    payload_size = sum(row.output_size_bytes for row in in_bag)
    payload_size += sum(entry.output_size_bytes for entry in generated.values() if entry.state == STATE_DONE)
    return CompressSummary(
        source=str(source),
        dest=str(dest),
        cluster=cluster,
        dashboard_link=dashboard_link,
        started_at=started_at,
        elapsed_seconds=elapsed_seconds,
        interrupted=driver.interrupted,
        n_files=len(plan.files),
        n_up_to_date=n_up_to_date,
        n_converted=driver.counts[OUTCOME_CONVERTED],
        n_copied=driver.counts[OUTCOME_COPIED],
        n_kept_as_is=driver.counts[OUTCOME_KEPT_AS_IS],
        n_failed=driver.counts["failed"] + sum(item.unreadable for item in plan.skipped),
        bytes_read=driver.bytes_read,
        bytes_written=driver.bytes_written,
        n_stale_removed=n_stale,
        source_size_bytes=sum(entry.size_bytes for entry in plan.files),
        payload_size_bytes=payload_size,
        categories=tuple(categories),
        decisions=decision_reports,
        gain_references=tuple(gain_reports),
        failures=failures,
        kept_as_is=kept,
        not_touched=tuple(
            FileProblem(item.rel_path, item.reason) for item in plan.skipped if not item.unreadable
        ),
        bag_written=bag_written,
        sealed=sealed,
        audit_problems=audit_problems,
        empty_folders=plan.empty_folders,
        n_unchanged=driver.counts["unchanged"],
        gain_left_out=gain_left_out,
    )


def _gain_groups(
    in_bag: list[JournalEntry], generated: dict[str, GeneratedEntry], payload: Path
) -> tuple[GainSetReport, ...]:
    """One report per reference the bag's TIFFs name, with each member's orientation from its record."""
    users: dict[str, list[JournalEntry]] = defaultdict(list)
    for row in in_bag:
        if row.gain_reference and row.outcome == OUTCOME_CONVERTED:
            users[row.gain_reference].append(row)
    reports = []
    for reference, rows in sorted(users.items()):
        members = tuple(_member(row, payload) for row in sorted(rows, key=lambda r: r.rel_path))
        entry = generated.get(reference)
        folder = str(PurePosixPath(reference).parent)
        common = Counter(member.relion_orientation for member in members).most_common(1)
        reports.append(
            GainSetReport(
                output_rel_path=reference,
                folder="" if folder == "." else folder,
                n_members=len(rows),
                n_converted_with_gain=len(rows),
                output_sha256=entry.output_sha256 if entry is not None else "",
                detail=entry.detail_json if entry is not None else "{}",
                origin=ORIGIN_ESTIMATED if entry is not None else ORIGIN_DEPOSITOR,
                relion_orientation=common[0][0] if common else "",
                members=members,
            )
        )
    return tuple(reports)


def _member(row: JournalEntry, payload: Path) -> GainMember:
    """How the reference applies to this movie, as its TIFF's record says."""
    from ..gain import GainRecord
    from ..reconstruct import read_record

    try:
        record = read_record(payload / row.output_rel_path)
        entry = record.storage.gain
        gain = GainRecord.from_dict(entry, name=row.output_rel_path) if entry is not None else None
    except (EmpCompressError, OSError):
        gain = None
    if gain is None:
        return GainMember(row.rel_path, "unknown", "unknown", 0)
    return GainMember(
        row.rel_path, gain.transform.orientation, gain.transform.relion_terms(), gain.n_exceptions
    )
