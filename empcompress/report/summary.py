"""The bag after a compress run, and what that run did: :class:`CompressSummary` and its parts
(categories, storage decisions, gain groups, problems) as frozen dataclasses, and the totals
as bag-info.txt fields."""

from __future__ import annotations

from dataclasses import dataclass

from .. import __version__
from ..manifest import PAYLOAD_DIRNAME

__all__ = [
    "FileProblem",
    "CategoryReport",
    "DecisionReport",
    "GainMember",
    "GainSetReport",
    "CompressSummary",
    "bag_info_fields",
]


@dataclass(frozen=True)
class FileProblem:
    """A file and what is wrong with it (or why it was handled differently)."""

    rel_path: str
    reason: str


@dataclass(frozen=True)
class CategoryReport:
    category: str
    n_files: int
    source_size_bytes: int
    output_size_bytes: int


@dataclass(frozen=True)
class DecisionReport:
    """Movies stored the same way (storage type and codec)."""

    stored_dtype: str
    codec: str
    n_movies: int
    source_size_bytes: int
    output_size_bytes: int


@dataclass(frozen=True)
class GainMember:
    """One movie stored as counts with a group's reference, and how the reference applies to it."""

    rel_path: str  # the source, relative to SRC
    orientation: str  # a GainTransform orientation code ("identity", "flip-rows", ...)
    relion_orientation: str  # the same in RELION's options: "--gain_rot R --gain_flip F"
    n_exceptions: int


@dataclass(frozen=True)
class GainSetReport:
    """A gain reference and the group of gain-normalised movies stored as counts with it."""

    output_rel_path: str  # payload path of the reference
    folder: str  # the payload folder it is in
    n_members: int
    n_converted_with_gain: int
    output_sha256: str
    detail: str  # JSON text from the estimation (movies sampled, left out, pixel counts)
    origin: str = "estimated"  # "estimated" (written by us) | "depositor" (a file from the drive)
    relion_orientation: str = ""  # the members' most common orientation, in RELION's terms
    members: tuple[GainMember, ...] = ()


@dataclass(frozen=True)
class CompressSummary:
    """The bag after a compress run, and what that run did."""

    source: str
    dest: str
    cluster: str
    dashboard_link: str
    started_at: str
    elapsed_seconds: float
    interrupted: bool
    n_files: int
    n_up_to_date: int
    n_converted: int
    n_copied: int
    n_kept_as_is: int
    n_failed: int
    bytes_read: int
    bytes_written: int
    n_stale_removed: int
    source_size_bytes: int
    payload_size_bytes: int
    categories: tuple[CategoryReport, ...]
    decisions: tuple[DecisionReport, ...]
    gain_references: tuple[GainSetReport, ...]
    failures: tuple[FileProblem, ...]
    kept_as_is: tuple[FileProblem, ...]
    not_touched: tuple[FileProblem, ...]
    bag_written: bool
    sealed: bool = False  # the audit passed and bagit.txt was written
    audit_problems: tuple[FileProblem, ...] = ()
    empty_folders: tuple[str, ...] = ()
    n_unchanged: int = 0  # recheck: sources whose sha256 matched the journal
    #: gain-normalised movies no gain group took (stored as lossless float32), and why
    gain_left_out: tuple[FileProblem, ...] = ()

    @property
    def n_done_this_run(self) -> int:
        return self.n_converted + self.n_copied + self.n_kept_as_is

    @property
    def complete(self) -> bool:
        """Every file of SRC is in the bag (converted, copied or kept as it was), proven by the audit."""
        return self.bag_written and self.sealed and not self.failures and not self.interrupted

    @property
    def exit_code(self) -> int:
        """0 complete, 130 interrupted, 1 anything less than a sealed bag holding every file."""
        if self.interrupted and not self.sealed:
            return 130
        return 0 if self.complete else 1

    @property
    def all_converted(self) -> bool:
        """Complete, and every movie was converted (none kept as it was)."""
        return self.complete and not self.kept_as_is

    @property
    def ratio(self) -> float:
        return self.source_size_bytes / max(1, self.payload_size_bytes)


def bag_info_fields(summary: CompressSummary) -> list[tuple[str, str]]:
    """bag-info.txt fields: source, tool, totals and storage decisions."""
    fields = [
        (
            "External-Description",
            f"Lossless compression of {summary.source}: MRC movies as verified TIFF stacks",
        ),
        ("Empcompress-Source", summary.source),
        ("Empcompress-Version", __version__),
        ("Empcompress-Source-Files", str(summary.n_files)),
        ("Empcompress-Source-Bytes", str(summary.source_size_bytes)),
        ("Empcompress-Payload-Bytes", str(summary.payload_size_bytes)),
        ("Empcompress-Ratio", f"{summary.ratio:.3f}"),
    ]
    for category in summary.categories:
        fields.append(
            (
                "Empcompress-Category",
                f"{category.category}: {category.n_files} files, {category.source_size_bytes} -> "
                f"{category.output_size_bytes} bytes",
            )
        )
    for decision in summary.decisions:
        fields.append(
            (
                "Empcompress-Storage-Decision",
                f"{decision.n_movies} movies stored as {decision.stored_dtype} with {decision.codec}: "
                f"{decision.source_size_bytes} -> {decision.output_size_bytes} bytes",
            )
        )
    for gain in summary.gain_references:
        fields.append(
            (
                "Empcompress-Gain-Reference",
                f"{PAYLOAD_DIRNAME}/{gain.output_rel_path} for {gain.n_members} movies",
            )
        )
    fields.append(("Empcompress-Movies-Kept-As-Is", str(len(summary.kept_as_is))))
    fields.append(("Empcompress-Files-Failed", str(len(summary.failures))))
    fields.append(("Empcompress-Not-Touched", str(len(summary.not_touched))))
    return fields
