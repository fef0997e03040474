"""The survey: the whole file's sha256 and every frame's statistics in one read, storing nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..detect import FrameStats, StorageDecision, decide_storage
from ..mrc import MrcHeader, MrcMovie
from ..readpass import ProgressCallback, SourcePass


@dataclass(frozen=True)
class MovieSurvey:
    """Result of the survey pass: header, whole-file sha256, merged stats, decision."""

    path: str
    header: MrcHeader
    sha256: str
    stats: FrameStats
    decision: StorageDecision


def survey_movie(
    path: str | os.PathLike[str],
    *,
    progress: ProgressCallback | None = None,
    frame_hook: Callable[[int, npt.NDArray[np.generic]], None] | None = None,
    threads: int = 1,
) -> MovieSurvey:
    """sha256 of the whole file and stats of every frame, in one read (the read pass, storing nothing).

    Conversion does not need it (it surveys while it encodes); tests and benchmarks compare
    with it. ``frame_hook(index, values)``, if given, sees every frame's values in the same
    pass. With ``threads`` > 1 each frame is hashed on a helper thread (two read buffers).
    """
    nothing = np.empty(0, dtype=np.uint8)

    def store(index: int, values: npt.NDArray[np.generic], merged: FrameStats) -> npt.NDArray[np.generic]:
        if frame_hook is not None:
            frame_hook(index, values)
        return nothing

    def surveyed(stage: str, size_bytes: int) -> None:
        assert progress is not None
        progress("survey", size_bytes)

    with MrcMovie(path) as movie:
        with SourcePass(
            movie,
            store=store,
            threads=threads,
            progress=surveyed if progress is not None else None,
            header_bytes=movie.read_header_bytes(),
            extended_header_bytes=movie.read_extended_header_bytes(),
        ) as read:
            for _ in read.stored_frames():
                pass
        header = movie.header
    decision = decide_storage(source_dtype=header.value_dtype, stats=read.stats)
    return MovieSurvey(str(path), header, read.sha256, read.stats, decision)
