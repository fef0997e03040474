"""Realistic synthetic counting-detector movies for the benchmarks.

A movie is Poisson-distributed electron counts at a given dose (mean
e-/pixel/frame) over a slowly varying, slightly noisy illumination, plus a few
hot pixels, stored as float32 MRC (mode 2) the way many pipelines store counts.
Frames are generated and written one at a time, so memory does not grow with
the number of frames. Everything is deterministic given the seed: frame ``i``
uses its own generator seeded by ``(seed, i)``, and the illumination and hot
pixels by ``(seed, "illumination")``, so a movie's first frames do not depend on
how many frames it has.

The writer also returns the count histogram of the whole movie, from which the
order-0 entropy floor (n_pixels x entropy of the histogram / 8 bytes) follows.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from mrcfile.dtypes import HEADER_DTYPE

__all__ = [
    "SyntheticMovieSpec",
    "SyntheticMovie",
    "illumination",
    "hot_pixels",
    "write_synthetic_movie",
    "entropy_bits",
]

MRC_HEADER_BYTES = 1024
MODE_FLOAT32 = 2
_ILLUMINATION_STREAM = 1_000_003  # seeds the illumination generator, apart from the frame streams


@dataclass(frozen=True)
class SyntheticMovieSpec:
    """What to generate."""

    dose_per_pixel_per_frame: float  # mean electrons per pixel per frame
    n_frames: int = 16
    ny: int = 4096
    nx: int = 4096
    seed: int = 20240601
    illumination_variation: float = 0.15  # peak-to-centre fall-off of the beam (smooth)
    illumination_noise: float = 0.03  # relative per-pixel noise of the illumination (fixed per pixel)
    hot_pixel_fraction: float = 2e-5  # share of pixels that are hot
    hot_pixel_rate_range: tuple[float, float] = (8.0, 60.0)  # their mean counts per frame
    pixel_size_angstrom: float = 0.83


@dataclass(frozen=True)
class SyntheticMovie:
    """A written movie and what the benchmark needs to know about it."""

    path: str
    spec: SyntheticMovieSpec
    size_bytes: int
    n_pixels: int
    count_histogram: tuple[int, ...]  # number of pixels holding 0, 1, 2, ... counts (whole movie)

    @property
    def entropy_bits_per_pixel(self) -> float:
        return entropy_bits(self.count_histogram)

    @property
    def entropy_floor_bytes(self) -> float:
        """Order-0 entropy floor of the counts: n_pixels x H(histogram) / 8."""
        return self.n_pixels * self.entropy_bits_per_pixel / 8

    @property
    def max_count(self) -> int:
        return len(self.count_histogram) - 1

    def save_sidecar(self) -> Path:
        sidecar = Path(self.path).with_suffix(".json")
        data = asdict(self)
        sidecar.write_text(json.dumps(data))
        return sidecar


def illumination(spec: SyntheticMovieSpec) -> npt.NDArray[np.float64]:
    """Relative illumination (mean 1): a smooth, slightly off-centre beam profile with a gentle
    tilt and low-frequency ripple, times a fixed per-pixel noise."""
    rng = np.random.default_rng([spec.seed, _ILLUMINATION_STREAM])
    y = np.linspace(-1.0, 1.0, spec.ny)[:, None]
    x = np.linspace(-1.0, 1.0, spec.nx)[None, :]
    cy, cx = rng.uniform(-0.2, 0.2, size=2)
    r2 = ((y - cy) ** 2 + (x - cx) ** 2) / 2.0
    profile = 1.0 - spec.illumination_variation * r2
    profile = profile * (1.0 + 0.03 * x - 0.02 * y)
    profile = profile * (1.0 + 0.01 * np.sin(3.1 * np.pi * x + 0.7) * np.cos(2.3 * np.pi * y + 0.2))
    profile = profile * (1.0 + spec.illumination_noise * rng.standard_normal((spec.ny, spec.nx)))
    np.clip(profile, 0.0, None, out=profile)
    profile /= profile.mean()
    return profile


def hot_pixels(spec: SyntheticMovieSpec) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
    """Flat indices and mean counts per frame of the hot pixels (fixed for the movie)."""
    rng = np.random.default_rng([spec.seed, _ILLUMINATION_STREAM, 1])
    n_pixels = spec.ny * spec.nx
    n_hot = max(1, round(spec.hot_pixel_fraction * n_pixels))
    indices = rng.choice(n_pixels, size=n_hot, replace=False)
    rates = rng.uniform(*spec.hot_pixel_rate_range, size=n_hot)
    return indices.astype(np.intp), rates


def _header_bytes(spec: SyntheticMovieSpec) -> bytes:
    header = np.zeros((), dtype=HEADER_DTYPE.newbyteorder("<"))
    header["nx"], header["ny"], header["nz"] = spec.nx, spec.ny, spec.n_frames
    header["mode"] = MODE_FLOAT32
    header["mx"], header["my"], header["mz"] = spec.nx, spec.ny, spec.n_frames
    header["cella"] = (
        spec.nx * spec.pixel_size_angstrom,
        spec.ny * spec.pixel_size_angstrom,
        spec.n_frames * spec.pixel_size_angstrom,
    )
    header["cellb"] = (90.0, 90.0, 90.0)
    header["mapc"], header["mapr"], header["maps"] = 1, 2, 3
    header["dmin"], header["dmax"], header["dmean"], header["rms"] = 0.0, -1.0, -2.0, -1.0  # not computed
    header["ispg"] = 0
    header["nsymbt"] = 0
    header["exttyp"] = b"    "
    header["nversion"] = 20141
    header["map"] = b"MAP "
    header["machst"] = (0x44, 0x44, 0x00, 0x00)  # little endian
    header["nlabl"] = 1
    label = f"empcompress benchmark: Poisson {spec.dose_per_pixel_per_frame:g} e-/px/frame seed {spec.seed}"
    header["label"][0] = label.encode("ascii")[:80]
    raw = header.tobytes()
    assert len(raw) == MRC_HEADER_BYTES
    return raw


def write_synthetic_movie(path: str | os.PathLike[str], spec: SyntheticMovieSpec) -> SyntheticMovie:
    """Write the movie frame by frame as a float32 little-endian MRC file at ``path``."""
    base = illumination(spec) * spec.dose_per_pixel_per_frame
    hot_indices, hot_rates = hot_pixels(spec)
    base.reshape(-1)[hot_indices] = hot_rates
    histogram = np.zeros(1, dtype=np.int64)
    frame32 = np.empty((spec.ny, spec.nx), dtype="<f4")
    with open(path, "wb") as handle:
        handle.write(_header_bytes(spec))
        for index in range(spec.n_frames):
            rng = np.random.default_rng([spec.seed, index])
            counts = rng.poisson(base)
            frame_histogram = np.bincount(counts.reshape(-1))
            if frame_histogram.size > histogram.size:
                histogram = np.pad(histogram, (0, frame_histogram.size - histogram.size))
            histogram[: frame_histogram.size] += frame_histogram
            frame32[...] = counts
            handle.write(memoryview(frame32).cast("B"))
            del counts
    n_pixels = spec.n_frames * spec.ny * spec.nx
    size_bytes = Path(path).stat().st_size
    assert size_bytes == MRC_HEADER_BYTES + 4 * n_pixels
    return SyntheticMovie(
        path=str(path),
        spec=spec,
        size_bytes=size_bytes,
        n_pixels=n_pixels,
        count_histogram=tuple(int(n) for n in histogram),
    )


def entropy_bits(histogram: npt.ArrayLike) -> float:
    """Order-0 entropy in bits per symbol of a histogram."""
    counts = np.asarray(histogram, dtype=np.float64)
    total = counts.sum()
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum()) if total else math.nan
