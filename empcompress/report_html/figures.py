"""The report's pictures, drawn with matplotlib's Agg canvas (no display, no pyplot state) as PNG bytes."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .samples import CountSample, RunTimeline

__all__ = ["Picture", "ratio_picture", "throughput_picture", "counts_picture", "gain_picture", "DPI"]

DPI = 80
_WIDTH_INCHES = 8.0
_HEIGHT_INCHES = 4.5
#: groups drawn in the counts picture (the largest first)
MAX_COUNT_PANELS = 6
#: the largest side of a gain reference as drawn (block means of the full image)
GAIN_PICTURE_PIXELS = 512


@dataclass(frozen=True)
class Picture:
    """One PNG and its size in pixels."""

    png: bytes
    width_px: int
    height_px: int


def _figure(width_inches: float = _WIDTH_INCHES, height_inches: float = _HEIGHT_INCHES) -> object:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_inches, height_inches), dpi=DPI, layout="constrained")


def _png(figure: object) -> Picture:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)  # type: ignore[attr-defined]
    width, height = figure.canvas.get_width_height()  # type: ignore[attr-defined]
    return Picture(buffer.getvalue(), int(width), int(height))


def ratio_picture(samples: Sequence[CountSample]) -> Picture:
    """Each movie's ratio against the best ratio its counts allow (the entropy floor)."""
    figure = _figure()
    axes = figure.add_subplot()  # type: ignore[attr-defined]
    if samples:
        floor = np.array([s.floor_ratio for s in samples])
        ratio = np.array([s.ratio for s in samples])
        dose = np.array([s.mean_count for s in samples])
        points = axes.scatter(floor, ratio, c=dose, cmap="viridis", s=28, edgecolors="black", linewidths=0.3)
        figure.colorbar(points, ax=axes, label="mean count per pixel per frame")  # type: ignore[attr-defined]
        top = max(float(floor.max()), float(ratio.max())) * 1.08
        axes.plot([0, top], [0, top], color="gray", linestyle="--", label="at the entropy floor")
        axes.plot([0, top], [0, top / 1.25], color="gray", linestyle=":", label="25% above the floor")
        axes.set_xlim(0, top)
        axes.set_ylim(0, top)
        efficiency = float(np.median(ratio / floor))
        axes.set_title(
            f"Ratio per movie against its entropy floor ({len(samples)} movies; median "
            f"{100 * efficiency:.0f}% of the best possible)"
        )
        axes.legend(loc="upper left")
    else:
        axes.text(0.5, 0.5, "no movie stored as counts", ha="center", va="center", transform=axes.transAxes)
        axes.set_title("Ratio per movie against its entropy floor")
    axes.set_xlabel("source size / entropy floor of its counts (best possible ratio)")
    axes.set_ylabel("source size / TIFF size (ratio reached)")
    return _png(figure)


def throughput_picture(timeline: RunTimeline) -> Picture:
    """Source bytes done over the last run, and how many files were in work at once (busy workers)."""
    figure = _figure()
    axes = figure.add_subplot()  # type: ignore[attr-defined]
    if timeline.n_files:
        n_steps = len(timeline.bytes_done)
        ends = (np.arange(n_steps) + 1) * timeline.step_seconds
        done = timeline.bytes_done / 1e9
        axes.step(np.concatenate([[0.0], ends]), np.concatenate([[0.0], done]), where="post", color="C0")
        axes.set_ylabel("source GB done", color="C0")
        busy = timeline.files_in_work
        workers = axes.twinx()
        workers.step(np.concatenate([[0.0], ends]), np.concatenate([busy, [0.0]]), where="post", color="C1")
        workers.set_ylabel("files in work (busy workers)", color="C1")
        workers.set_ylim(0, max(1.0, float(busy.max())) * 1.1)
        span = max(timeline.span_seconds, 1e-9)
        axes.set_title(
            f"Bytes done over time: {timeline.n_files} files, {done[-1] * 1e3 / span:.1f} MB/s over the "
            f"run, at most {float(busy.max()):.1f} at once"
        )
    else:
        axes.text(
            0.5, 0.5, "nothing was done in the last run", ha="center", va="center", transform=axes.transAxes
        )
        axes.set_title("Bytes done over time")
    axes.set_xlabel("seconds since the run started")
    return _png(figure)


def _poisson(mean: float, n: int) -> npt.NDArray[np.float64]:
    k = np.arange(n)
    log_p = k * math.log(max(mean, 1e-12)) - mean - np.array([math.lgamma(x + 1) for x in k])
    return np.exp(log_p)


def counts_picture(groups: Sequence[tuple[str, Sequence[CountSample]]]) -> Picture:
    """The distribution of counts per movie group (sampled pages pooled), one panel per group (up to
    :data:`MAX_COUNT_PANELS`), each with a Poisson of the same mean."""
    shown = [(name, samples) for name, samples in groups if samples][:MAX_COUNT_PANELS]
    if not shown:
        figure = _figure()
        axes = figure.add_subplot()  # type: ignore[attr-defined]
        axes.text(0.5, 0.5, "no movie stored as counts", ha="center", va="center", transform=axes.transAxes)
        axes.set_title("Counts per movie group")
        return _png(figure)
    columns = min(len(shown), 2)
    rows = math.ceil(len(shown) / columns)
    figure = _figure(_WIDTH_INCHES, 3.0 * rows)
    for index, (name, samples) in enumerate(shown):
        axes = figure.add_subplot(rows, columns, index + 1)  # type: ignore[attr-defined]
        length = max(len(s.histogram) for s in samples)
        pooled = np.zeros(length)
        for sample in samples:
            pooled[: len(sample.histogram)] += sample.histogram
        fraction = pooled / max(pooled.sum(), 1)
        counts = np.arange(length)
        mean = float(np.dot(counts, fraction))
        color = f"C{index % 10}"
        axes.semilogy(counts, np.where(fraction > 0, fraction, np.nan), "o-", color=color, markersize=2)
        poisson = _poisson(mean, length)
        axes.semilogy(counts, np.where(poisson > 1e-9, poisson, np.nan), ":", color="black", linewidth=1)
        nonzero = np.flatnonzero(fraction)
        axes.set_xlim(max(0, int(nonzero[0]) - 1), int(nonzero[-1]) + 1)
        axes.set_ylim(bottom=max(1e-9, float(fraction[fraction > 0].min()) / 3))
        movies = f"{len(samples)} movie{'s' if len(samples) != 1 else ''} sampled"
        axes.set_title(f"{name[:55]}\n{movies}, mean {mean:.2f}", fontsize="small")
        axes.set_xlabel("count per pixel per frame", fontsize="small")
        axes.set_ylabel("fraction of pixels", fontsize="small")
    figure.suptitle("Counts per movie group (dotted: Poisson of the same mean)")  # type: ignore[attr-defined]
    return _png(figure)


def _block_mean(image: npt.NDArray[np.floating], max_side: int) -> npt.NDArray[np.float64]:
    factor = max(1, math.ceil(max(image.shape) / max_side))
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    trimmed = image[:height, :width].astype(np.float64)
    return trimmed.reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))


def gain_picture(image: npt.NDArray[np.floating], *, title: str, orientation: str) -> Picture:
    """A gain reference in MRC row order (pixel (0, 0) at the bottom left, as RELION and IMOD show it),
    its first row and column marked, and its orientation relative to the movies."""
    shown = _block_mean(np.nan_to_num(image.astype(np.float64)), GAIN_PICTURE_PIXELS)
    low, high = np.percentile(shown, [1, 99]) if shown.size else (0.0, 1.0)
    figure = _figure(7.0, 6.2)
    axes = figure.add_subplot()  # type: ignore[attr-defined]
    picture = axes.imshow(
        shown,
        origin="lower",
        cmap="gray",
        vmin=low,
        vmax=high if high > low else low + 1,
        extent=(0, image.shape[1], 0, image.shape[0]),
        interpolation="nearest",
    )
    figure.colorbar(picture, ax=axes, shrink=0.8, label="gain")  # type: ignore[attr-defined]
    side = max(image.shape) * 0.2
    axes.annotate("", xy=(side, 0), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "red", "lw": 2})
    axes.annotate("", xy=(0, side), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "red", "lw": 2})
    axes.text(side, side * 0.15, " x (first row)", color="red", fontsize="small")
    axes.text(side * 0.05, side, " y", color="red", fontsize="small")
    axes.set_title(f"{title}\n{orientation}", fontsize="small")
    axes.set_xlabel("x (pixel); (0, 0) = the MRC file's first pixel")
    axes.set_ylabel("y (pixel)")
    return _png(figure)
