"""What the compress job tells its caller as it goes (the CLI prints them; stages never print)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "PlanEvent",
    "FileEvent",
    "StageEvent",
    "PipelineEvent",
    "EventCallback",
    "STAGE_SEALING",
    "STAGE_REDOING",
]

#: The run writes manifests and reports, audits and seals (fast: nothing is decoded or hashed).
STAGE_SEALING = "sealing"
#: The audit found problems and the affected files are being redone.
STAGE_REDOING = "redoing"


@dataclass(frozen=True)
class PlanEvent:
    """The plan of this run, once SRC is scanned and compared with the journal."""

    n_files: int
    n_todo: int
    n_up_to_date: int
    bytes_todo: int
    n_stale_removed: int
    n_not_touched: int
    n_temporaries_removed: int
    n_unreadable: int = 0


@dataclass(frozen=True)
class FileEvent:
    """One file finished (or failed)."""

    rel_path: str
    outcome: str  # converted | copied | kept-as-is | failed | unchanged
    source_size_bytes: int
    output_size_bytes: int
    message: str


@dataclass(frozen=True)
class StageEvent:
    """Something worth a line in the log (gain estimation, stopping, the audit, sealing)."""

    message: str
    stage: str = ""  # STAGE_SEALING, STAGE_REDOING, or "" for a plain log line


PipelineEvent = PlanEvent | FileEvent | StageEvent
EventCallback = Callable[[PipelineEvent], None]
