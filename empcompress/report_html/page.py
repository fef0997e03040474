"""Write ``report.html``: one self-contained page (every picture a base64 PNG inside it)."""

from __future__ import annotations

import base64
import html
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import __version__
from ..files import write_bytes_atomically
from ..journal import OUTCOME_CONVERTED
from .figures import Picture, counts_picture, gain_picture, ratio_picture, throughput_picture
from .samples import CountSample, run_timeline, sample_counts

if TYPE_CHECKING:
    from ..deposition import DepositionResult
    from ..journal import JournalEntry
    from ..report import CompressSummary

__all__ = ["REPORT_PICTURES", "PageResult", "write_report_page", "MAX_SAMPLED_MOVIES", "MAX_GAIN_PICTURES"]

#: the anchors of the page's fixed pictures, and their titles (report.md links them)
REPORT_PICTURES: tuple[tuple[str, str], ...] = (
    ("ratio", "Ratio per movie against the entropy floor of its counts"),
    ("throughput", "Bytes done over time (throughput, busy workers)"),
    ("counts", "Distribution of counts per movie group"),
)
#: movies whose middle page is read for the pictures (evenly spread over the bag beyond that)
MAX_SAMPLED_MOVIES = 200
MAX_GAIN_PICTURES = 24


@dataclass(frozen=True)
class PageResult:
    """What the page shows: its pictures as (anchor, title), and how many movies were sampled."""

    pictures: tuple[tuple[str, str], ...]
    n_movies_sampled: int
    n_movies_stored_as_counts: int


def _evenly(items: Sequence[Any], n: int) -> list[Any]:
    if len(items) <= n:
        return list(items)
    return [items[int(i * len(items) / n)] for i in range(n)]


def _epoch(started_at: str) -> float:
    try:
        return time.mktime(time.strptime(started_at[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return 0.0


def _gain_image(path: Path, file_format: str) -> np.ndarray | None:
    try:
        if file_format in ("MRC", "MRCS"):
            from ..mrc import MrcMovie

            with MrcMovie(path) as movie:
                return np.asarray(movie.read_frame(0), dtype=np.float64)
        if file_format == "TIFF":
            import tifffile

            from ..files import open_regular
            from ..reconstruct import quiet_tifffile

            with (
                open_regular(path) as handle,
                quiet_tifffile(),
                tifffile.TiffFile(handle, name=path.name) as tiff,
            ):
                return np.asarray(tiff.pages.first.asarray(), dtype=np.float64)
        if file_format in ("DM4", "DM3"):
            from ..gainref import read_gain_reference

            return np.asarray(read_gain_reference(path).data, dtype=np.float64)
    except Exception:  # the page says there is no picture; the report does not fail for it
        return None
    return None


def _img(picture: Picture, alt: str) -> str:
    data = base64.b64encode(picture.png).decode("ascii")
    return (
        f'<img src="data:image/png;base64,{data}" width="{picture.width_px}" height="{picture.height_px}" '
        f'alt="{html.escape(alt)}">'
    )


_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; }
td, th { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: left; }
section { margin-bottom: 2em; }
.ok { color: #060; } .bad { color: #a00; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""


def write_report_page(
    dest: str | os.PathLike[str],
    *,
    name: str,
    summary: CompressSummary,
    entries: Sequence[JournalEntry],
    deposition: DepositionResult | None,
) -> PageResult:
    """Draw the pictures and write ``DEST/<name>`` atomically."""
    from ..report import human_bytes

    dest = Path(dest)
    payload = dest / "data"
    # the sizes of the converted movies only (the pictures sample those), never of every file
    sizes = {
        f"data/{row.output_rel_path}": (row.source_size_bytes, row.output_size_bytes)
        for row in entries
        if row.outcome == OUTCOME_CONVERTED
    }
    samples: dict[str, CountSample] = {}
    counted = []
    if deposition is not None:
        counted = [
            m.image
            for m in deposition.movies
            if m.image.outcome == "converted"
            and m.image.voxel in ("uint8", "uint16")
            and m.image.output in sizes
        ]
        for image in _evenly(sorted(counted, key=lambda image: image.output), MAX_SAMPLED_MOVIES):
            source_size, output_size = sizes[image.output]
            sample = sample_counts(
                payload,
                output=image.output,
                stored_dtype=image.voxel,
                n_frames=image.n_frames,
                width=image.width,
                height=image.height,
                source_size_bytes=source_size,
                output_size_bytes=output_size,
            )
            if sample is not None:
                samples[image.output] = sample
    groups = []
    if deposition is not None:
        for group in deposition.groups:
            members = [samples[output] for output in group.members if output in samples]
            if members:
                groups.append((str(group.imageset.get("name", "")), members))
    timeline = run_timeline(
        lambda: ((row.updated_at, row.elapsed_seconds, row.source_size_bytes) for row in entries),
        run_started_epoch=_epoch(summary.started_at),
    )
    pictures = [
        ("ratio", REPORT_PICTURES[0][1], ratio_picture(list(samples.values()))),
        ("throughput", REPORT_PICTURES[1][1], throughput_picture(timeline)),
        ("counts", REPORT_PICTURES[2][1], counts_picture(groups)),
    ]
    gain_sections: list[tuple[str, str, Picture | None, str]] = []
    for index, gain in enumerate((deposition.gains if deposition is not None else ())[:MAX_GAIN_PICTURES]):
        image = _gain_image(payload / gain.image.output[len("data/") :], gain.image.file_format)
        anchor = f"gain-{index + 1}"
        title = f"Gain reference {gain.image.output}"
        if image is None or image.ndim != 2:
            gain_sections.append((anchor, title, None, gain.orientation))
            continue
        picture = gain_picture(
            image, title=gain.image.output, orientation=f"Relative to the movies: {gain.orientation}"
        )
        gain_sections.append((anchor, title, picture, gain.orientation))
    status = (
        '<span class="ok">complete: audit passed</span>'
        if summary.complete and not summary.audit_problems
        else '<span class="bad">INCOMPLETE (see report.md)</span>'
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>empcompress report: {html.escape(Path(summary.dest).name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>empcompress report</h1>",
        "<table>",
        f"<tr><th>Source</th><td><code>{html.escape(summary.source)}</code></td></tr>",
        f"<tr><th>Bag</th><td><code>{html.escape(summary.dest)}</code></td></tr>",
        f"<tr><th>Tool</th><td>empcompress {html.escape(__version__)}</td></tr>",
        f"<tr><th>Status</th><td>{status}</td></tr>",
        f"<tr><th>Size</th><td>{human_bytes(summary.source_size_bytes)} &rarr; "
        f"{human_bytes(summary.payload_size_bytes)} ({summary.ratio:.2f}x smaller)</td></tr>",
        f"<tr><th>Movies sampled</th><td>{len(samples)} of {len(counted)} stored as counts (one middle "
        f"frame each)</td></tr>",
        "</table>",
    ]
    for anchor, title, picture in pictures:
        parts += [f'<section id="{anchor}"><h2>{html.escape(title)}</h2>', _img(picture, title), "</section>"]
    for anchor, title, gain_png, orientation in gain_sections:
        parts.append(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>')
        parts.append(
            _img(gain_png, title)
            if gain_png is not None
            else "<p>No picture (not an MRC, TIFF or DM image we read).</p>"
        )
        parts.append(f"<p>Orientation relative to the movies: {html.escape(orientation)}</p></section>")
    if deposition is not None:
        parts.append('<section id="deposition"><h2>EMPIAR deposition</h2>')
        valid = deposition.schema.valid
        parts.append(
            f"<p><code>empiar-deposition.json</code>: {len(deposition.groups)} imagesets; "
            + (
                '<span class="ok">valid against the EMPIAR schema</span>'
                if valid
                else '<span class="bad">not yet valid</span>'
            )
            + "</p>"
        )
        if deposition.to_fill:
            parts.append("<p>For a person to fill:</p><ul>")
            parts += [f"<li>{html.escape(item)}</li>" for item in deposition.to_fill]
            parts.append("</ul>")
        parts.append("</section>")
    parts.append("</body></html>\n")
    write_bytes_atomically(dest / name, "\n".join(parts).encode("utf-8"))
    anchors = tuple((anchor, title) for anchor, title, _ in pictures) + tuple(
        (anchor, title) for anchor, title, _, _ in gain_sections
    )
    return PageResult(anchors, len(samples), len(counted))
