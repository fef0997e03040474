"""Predict what compression will do from a few frames of a few movies of each group, and the memory
its largest conversion needs (:func:`predict_memory`)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..detect import FrameStats, decide_storage, frame_stats
from ..encode import choose_codec
from ..errors import EmpCompressError
from ..mrc import MrcMovie
from .entries import (
    ACTION_CONVERT,
    CATEGORY_GAIN_REFERENCE,
    CONVERT_TIME_FACTOR,
    COPY_BYTES_PER_SECOND,
    KIND_COUNTS,
    KIND_FLOAT,
    KIND_GAIN_NORMALISED,
    KIND_UNREADABLE,
    FileEntry,
    GroupPrediction,
)
from .gain_api import GainApi, gain_support


def _sample_indices(n_frames: int, n_samples: int) -> list[int]:
    if n_frames <= n_samples:
        return list(range(n_frames))
    return sorted({round(v) for v in np.linspace(0, n_frames - 1, n_samples + 2)[1:-1]})


def _evenly(items: list[FileEntry], n: int) -> list[FileEntry]:
    if len(items) <= n:
        return items
    return [items[round(v)] for v in np.linspace(0, len(items) - 1, n)]


@dataclass(frozen=True)
class _Sample:
    kind: str
    stored_dtype: str
    codec: str
    raw_bytes: int
    encoded_bytes: int
    encode_seconds: float
    n_frames: int
    reason: str


def _sample_movie(path: Path, *, n_sample_frames: int, gain: GainApi | None) -> _Sample:
    with MrcMovie(path) as movie:
        header = movie.header
        indices = _sample_indices(header.nz, n_sample_frames)
        frames = [np.array(movie.read_frame(index)) for index in indices]
    merged: FrameStats | None = None
    for frame in frames:
        stats = frame_stats(frame)
        merged = stats if merged is None else merged.merge(stats)
    assert merged is not None
    decision = decide_storage(source_dtype=header.value_dtype, stats=merged)
    kind, reason = KIND_COUNTS if decision.is_integer else KIND_FLOAT, decision.reason
    trial = frames[len(frames) // 2]
    if decision.is_integer:
        stored: npt.NDArray[np.generic] = np.empty(header.frame_shape, dtype=decision.stored_dtype)
        kernels.flip_cast(trial, stored)
        stored_dtype = decision.stored_dtype
    else:
        if gain is not None:
            try:
                movie_class = gain.classify_movie(path, n_sample_frames=n_sample_frames)
                kind = str(getattr(movie_class, "kind", kind))
                reason = str(getattr(movie_class, "reason", reason))
            except EmpCompressError:
                pass
        if kind == KIND_GAIN_NORMALISED:
            positive = trial[trial > 0]
            unit = float(positive.min()) if positive.size else 1.0
            stored = np.clip(np.rint(np.asarray(trial, dtype=np.float64) / unit), 0, 255).astype(np.uint8)[
                ::-1
            ]
            stored_dtype = "uint8 (counts, predicted)"
        else:
            stored = np.ascontiguousarray(np.asarray(trial).astype(trial.dtype.newbyteorder("="))[::-1])
            stored_dtype = decision.stored_dtype
    started = time.perf_counter()
    codec, sizes = choose_codec(
        [np.ascontiguousarray(stored)], is_integer=stored.dtype.kind in "iu", level=None
    )
    encode_seconds = time.perf_counter() - started
    encoded = sizes[codec.label]
    # choose_codec encodes with every candidate; the job encodes once
    encode_seconds /= max(1, len(sizes))
    return _Sample(
        kind,
        stored_dtype,
        codec.label,
        header.frame_size_bytes,
        encoded,
        encode_seconds,
        len(indices),
        reason,
    )


def predict_groups(
    source: Path,
    movies: list[FileEntry],
    *,
    n_sample_movies: int,
    n_sample_frames: int,
) -> tuple[GroupPrediction, ...]:
    """Predict each group's storage from a few frames of a few of its movies."""
    gain = gain_support()
    groups: dict[tuple[str, int, int, int], list[FileEntry]] = defaultdict(list)
    for entry in movies:
        groups[(entry.folder, entry.frame_width, entry.frame_height, entry.mode)].append(entry)
    predictions = []
    for (folder, width, height, mode), members in sorted(groups.items()):
        size_bytes = sum(entry.size_bytes for entry in members)
        readable = [entry for entry in members if not entry.header_error]
        samples: list[_Sample] = []
        sampled: list[str] = []
        for entry in _evenly(readable, n_sample_movies):
            try:
                samples.append(
                    _sample_movie(source / entry.rel_path, n_sample_frames=n_sample_frames, gain=gain)
                )
                sampled.append(entry.rel_path)
            except (EmpCompressError, OSError):
                continue
        if not samples:
            predictions.append(
                GroupPrediction(
                    folder,
                    width,
                    height,
                    mode,
                    len(members),
                    size_bytes,
                    (),
                    0,
                    KIND_UNREADABLE if not readable else "unknown",
                    "",
                    "",
                    1.0,
                    size_bytes,
                    size_bytes / COPY_BYTES_PER_SECOND,
                    "cannot be read as MRC: kept as is" if not readable else "not sampled",
                )
            )
            continue
        raw = sum(sample.raw_bytes for sample in samples)
        encoded = max(1, sum(sample.encoded_bytes for sample in samples))
        ratio = raw / encoded
        seconds_per_byte = CONVERT_TIME_FACTOR * sum(sample.encode_seconds for sample in samples) / raw
        first = samples[0]
        kinds = sorted({sample.kind for sample in samples})
        predictions.append(
            GroupPrediction(
                folder=folder,
                frame_width=width,
                frame_height=height,
                mode=mode,
                n_movies=len(members),
                size_bytes=size_bytes,
                sampled=tuple(sampled),
                n_sampled_frames=sum(sample.n_frames for sample in samples),
                kind="/".join(kinds),
                stored_dtype=first.stored_dtype,
                codec=first.codec,
                predicted_ratio=ratio,
                predicted_output_size_bytes=int(size_bytes / ratio),
                predicted_seconds_one_worker=size_bytes * seconds_per_byte,
                reason=first.reason,
            )
        )
    return tuple(predictions)


def _predict_gain_groups(
    root: Path, files: list[FileEntry], predictions: tuple[GroupPrediction, ...]
) -> tuple[Any, ...]:
    """The sampled gain-normalised movies, by frame size, fitted to the drive's gain references."""
    if gain_support() is None:
        return ()
    from ..gain.prediction import predict_gain_groups

    sampled: dict[tuple[int, int], list[str]] = defaultdict(list)
    n_movies: dict[tuple[int, int], int] = defaultdict(int)
    for prediction in predictions:
        if KIND_GAIN_NORMALISED in prediction.kind.split("/"):
            shape = (prediction.frame_height, prediction.frame_width)
            sampled[shape] += list(prediction.sampled)
            n_movies[shape] += prediction.n_movies
    references = [
        entry.rel_path
        for entry in files
        if entry.category == CATEGORY_GAIN_REFERENCE and entry.mode == 2 and entry.n_frames == 1
    ]
    return predict_gain_groups(
        root, sampled_movies=dict(sampled), n_movies=dict(n_movies), references=references
    )


@dataclass(frozen=True)
class MemoryPrediction:
    """The largest conversion's declared memory, and how many fit at once on this machine."""

    largest_rel_path: str
    frame_width: int
    frame_height: int
    mode: int
    need_bytes: int  # what compress declares for it (pipeline.memory: the float-stored bound for floats)
    usable_memory_bytes: int  # the machine's memory for local workers
    n_workers: int  # a local compress run's workers x threads, and each worker's memory
    threads_per_worker: int
    worker_memory_bytes: int
    n_per_worker: int  # of the largest conversion, at once per local worker
    n_at_once: int  # ... and on the whole machine
    warning: str  # it does not fit a worker of this machine: why, what to do


def predict_memory(
    files: tuple[FileEntry, ...] | list[FileEntry],
    *,
    memory_bytes: int,
    n_cores: int,
    threads_per_task: int = 1,
) -> MemoryPrediction | None:
    """How a local compress run on this machine would be sized for the drive's largest task
    (None when nothing is converted). Uses the model of :mod:`empcompress.pipeline.memory`."""
    from ..cluster import LOCAL_MEMORY_SHARE, local_sizing
    from ..pipeline.memory import describe_task, largest_need

    movies = [entry for entry in files if entry.action == ACTION_CONVERT and not entry.header_error]
    need = largest_need(movies, threads=threads_per_task)
    if need is None or need.frame is None:
        return None
    sizing = local_sizing(
        n_cores=n_cores,
        memory_bytes=memory_bytes,
        largest_need_bytes=need.need_bytes,
        largest_what=describe_task(need),
    )
    return MemoryPrediction(
        largest_rel_path=need.rel_path,
        frame_width=need.frame.width,
        frame_height=need.frame.height,
        mode=need.frame.mode,
        need_bytes=need.need_bytes,
        usable_memory_bytes=int(memory_bytes * LOCAL_MEMORY_SHARE),
        n_workers=sizing.n_workers,
        threads_per_worker=sizing.threads_per_worker,
        worker_memory_bytes=sizing.memory_limit_bytes,
        n_per_worker=sizing.n_largest_per_worker,
        n_at_once=sizing.n_largest_per_worker * sizing.n_workers,
        warning=sizing.warning,
    )
