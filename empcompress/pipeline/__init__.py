"""The compress job: a whole drive (SRC) to an audited, checksummed, sealed BagIt bag (DEST), on Dask.

Its parts, one module each:

- :mod:`.layout`: the one owner of every payload path (names, collisions, escapes);
- :mod:`.tasks`: what runs on workers (convert or copy one file, gain partials);
- :mod:`.driver`: the loop that submits tasks, runs gain sets and writes the journal;
- :mod:`.reconcile`: SRC, journal and payload compared (what is up to date, what must go);
- :mod:`.seal`: the audit of the finished payload and ``bagit.txt`` written last;
- :mod:`.summary` and :mod:`.events`: what the run reports;
- :mod:`.run`: :func:`compress_drive`, the stages in order.
"""

from __future__ import annotations

from .driver import GAIN_REFERENCE_NAME
from .events import (
    STAGE_REDOING,
    STAGE_SEALING,
    EventCallback,
    FileEvent,
    PipelineEvent,
    PlanEvent,
    StageEvent,
)
from .reconcile import sweep_temporaries
from .run import CompressOptions, compress_drive
from .tasks import FileOutcome, FileTask, copy_with_digests, run_file_task, warm_up_worker

__all__ = [
    "CompressOptions",
    "FileTask",
    "FileOutcome",
    "PlanEvent",
    "FileEvent",
    "StageEvent",
    "STAGE_SEALING",
    "STAGE_REDOING",
    "PipelineEvent",
    "EventCallback",
    "run_file_task",
    "warm_up_worker",
    "copy_with_digests",
    "sweep_temporaries",
    "compress_drive",
    "GAIN_REFERENCE_NAME",
]
