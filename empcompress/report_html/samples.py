"""The numbers behind the report's pictures, read from the bag and the journal (nothing re-encoded).

- :func:`sample_counts`: the counts of one page (the middle frame) of a converted movie
  stored as integers: their histogram and order-0 entropy, which gives the movie's
  *entropy floor* (bits per value x values in the movie / 8): no lossless coder of
  independent values does better;
- :func:`run_timeline`: the source bytes finished and the files in work over the last run, in
  a fixed number of time steps (from the journal: each file finished at ``updated_at``, after
  ``elapsed_seconds``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..files import open_regular

__all__ = [
    "MAX_HISTOGRAM_BINS",
    "CountSample",
    "sample_counts",
    "entropy_bits",
    "TIMELINE_STEPS",
    "RunTimeline",
    "run_timeline",
]

#: the histogram keeps counts 0..MAX_HISTOGRAM_BINS-2 and folds larger ones into the last bin (uint16
#: counts at high doses stay well inside)
MAX_HISTOGRAM_BINS = 2048
_INTEGER_STORAGE = ("uint8", "uint16")


@dataclass(frozen=True)
class CountSample:
    """A movie's counts, from one sampled page."""

    output: str
    histogram: tuple[int, ...]  # occurrences of 0, 1, ..., the last bin holding every larger value
    entropy_bits_per_value: float
    n_values_in_movie: int
    source_size_bytes: int
    output_size_bytes: int

    @property
    def floor_bytes(self) -> float:
        """The order-0 entropy floor of the whole movie's counts, in bytes."""
        return self.entropy_bits_per_value * self.n_values_in_movie / 8

    @property
    def floor_ratio(self) -> float:
        """Source size over the entropy floor: the best ratio a coder of independent values reaches."""
        return self.source_size_bytes / max(self.floor_bytes, 1.0)

    @property
    def ratio(self) -> float:
        return self.source_size_bytes / max(self.output_size_bytes, 1)

    @property
    def mean_count(self) -> float:
        values = np.arange(len(self.histogram))
        total = max(sum(self.histogram), 1)
        return float(np.dot(values, self.histogram) / total)


def entropy_bits(occurrences: np.ndarray) -> float:
    """Order-0 entropy (bits per value) of values with these occurrence counts."""
    counts = occurrences[occurrences > 0].astype(np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0


def sample_counts(
    payload: str | os.PathLike[str],
    *,
    output: str,
    stored_dtype: str,
    n_frames: int,
    width: int,
    height: int,
    source_size_bytes: int,
    output_size_bytes: int,
) -> CountSample | None:
    """The counts of the middle page of our TIFF ``output`` (``data/...``); None unless stored as counts."""
    import tifffile

    from ..reconstruct import quiet_tifffile

    if stored_dtype not in _INTEGER_STORAGE or not output.startswith("data/"):
        return None
    path = Path(payload) / output[len("data/") :]
    try:
        with (
            open_regular(path) as handle,
            quiet_tifffile(),
            tifffile.TiffFile(handle, name=path.name) as tiff,
        ):
            pages = tiff.pages
            page = pages[min(len(pages) - 1, n_frames // 2)]
            values = np.asarray(page.asarray())
    except Exception:  # a picture is not worth failing the report for: the movie is left out
        return None
    if values.dtype.kind != "u" or values.size != width * height:
        return None
    occurrences = np.bincount(values.ravel())
    folded = occurrences[: MAX_HISTOGRAM_BINS - 1].tolist()
    folded += [0] * (MAX_HISTOGRAM_BINS - 1 - len(folded))
    folded.append(int(occurrences[MAX_HISTOGRAM_BINS - 1 :].sum()))
    while len(folded) > 2 and folded[-1] == 0:
        folded.pop()
    return CountSample(
        output=output,
        histogram=tuple(int(n) for n in folded),
        entropy_bits_per_value=entropy_bits(occurrences),
        n_values_in_movie=n_frames * width * height,
        source_size_bytes=source_size_bytes,
        output_size_bytes=output_size_bytes,
    )


#: the throughput picture's time steps (whatever the number of files: memory stays bounded)
TIMELINE_STEPS = 1000


@dataclass(frozen=True)
class RunTimeline:
    """The last run in equal time steps: the source bytes finished by the end of each step, and the
    mean number of files in work during each (the time they spent in it over the step's length)."""

    step_seconds: float
    bytes_done: np.ndarray  # cumulative, one value per step
    files_in_work: np.ndarray  # one value per step
    n_files: int

    @property
    def span_seconds(self) -> float:
        return self.step_seconds * len(self.bytes_done)


def run_timeline(
    rows: Callable[[], Iterable[tuple[float, float, int]]],
    *,
    run_started_epoch: float,
    n_steps: int = TIMELINE_STEPS,
) -> RunTimeline:
    """``(updated_at, elapsed_seconds, source_size_bytes)`` of journal rows (each call of ``rows``
    reads them again) -> the last run's timeline, in ``n_steps`` steps: two passes, nothing per file kept."""

    def intervals() -> Iterator[tuple[float, float, int]]:
        for updated_at, elapsed_seconds, size_bytes in rows():
            if not math.isfinite(updated_at) or updated_at < run_started_epoch:
                continue
            end = updated_at - run_started_epoch
            yield max(0.0, end - max(elapsed_seconds, 0.0)), end, size_bytes

    n_files, span = 0, 0.0
    for _, end, _ in intervals():
        n_files += 1
        span = max(span, end)
    step = max(span, 1e-9) / n_steps
    last = n_steps - 1
    done = [0] * n_steps
    partial = [0.0] * n_steps  # steps a file is in work for part of
    whole = [0] * (n_steps + 1)  # steps a file is in work for all of, as differences
    for start, end, size_bytes in intervals():
        first, final = min(int(start / step), last), min(int(end / step), last)
        done[final] += size_bytes
        if first == final:
            partial[first] += (end - start) / step
            continue
        partial[first] += (first + 1) - start / step
        partial[final] += end / step - final
        whole[first + 1] += 1
        whole[final] -= 1
    in_work = np.cumsum(whole[:n_steps], dtype=np.float64) + np.asarray(partial)
    return RunTimeline(step, np.cumsum(done, dtype=np.float64), in_work, n_files)
