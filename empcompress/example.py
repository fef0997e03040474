"""A built-in example: small synthetic movies to try empcompress on.

``write_example_movie`` writes a deterministic float32 MRC movie of electron
counts (Poisson, about 1 e-/pixel/frame over a slowly varying illumination,
with a few hot pixels), the kind of file depositors hand over uncompressed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .mrc import HEADER_SIZE_BYTES

__all__ = ["write_example_movie", "example_counts"]


def example_counts(
    *, n_frames: int, frame_shape: tuple[int, int], dose_per_pixel: float, seed: int
) -> np.ndarray:
    """Poisson counts (n_frames, ny, nx) over a smooth illumination with hot pixels."""
    rng = np.random.default_rng(seed)
    ny, nx = frame_shape
    y, x = np.mgrid[0:ny, 0:nx]
    illumination = 1.0 + 0.15 * np.cos(2 * np.pi * x / nx) * np.sin(np.pi * y / ny)
    rate = dose_per_pixel * illumination * rng.normal(1.0, 0.02, size=frame_shape)
    counts = rng.poisson(np.clip(rate, 0, None), size=(n_frames, ny, nx))
    hot = rng.integers(0, ny * nx, size=max(1, ny * nx // 20000))
    counts.reshape(n_frames, -1)[:, hot] += rng.poisson(20, size=(n_frames, hot.size))
    return counts


def write_example_movie(
    path: str | os.PathLike[str],
    *,
    n_frames: int = 8,
    frame_shape: tuple[int, int] = (512, 512),
    dose_per_pixel: float = 1.0,
    pixel_size_angstrom: float = 0.83,
    seed: int = 0,
) -> Path:
    """Write a float32 MRC movie of integer counts; returns its path."""
    path = Path(path)
    counts = example_counts(
        n_frames=n_frames, frame_shape=frame_shape, dose_per_pixel=dose_per_pixel, seed=seed
    )
    data = counts.astype("<f4")
    ny, nx = frame_shape
    header = np.zeros(HEADER_SIZE_BYTES, dtype=np.uint8)
    words = header.view("<i4")
    floats = header.view("<f4")
    words[0:4] = (nx, ny, n_frames, 2)
    words[7:10] = (nx, ny, n_frames)
    floats[10:13] = (nx * pixel_size_angstrom, ny * pixel_size_angstrom, n_frames * pixel_size_angstrom)
    floats[13:16] = 90.0
    words[16:19] = (1, 2, 3)
    floats[19:22] = (float(data.min()), float(data.max()), float(data.mean()))
    words[22] = 0  # ispg: image stack
    words[27] = 20140  # nversion: MRC2014
    header[208:212] = np.frombuffer(b"MAP ", dtype=np.uint8)
    header[212:216] = (0x44, 0x44, 0, 0)
    floats[54] = float(data.std())  # rms
    words[55] = 1  # nlabl
    label = b"empcompress example movie: float32 electron counts".ljust(80)
    header[224:304] = np.frombuffer(label, dtype=np.uint8)
    with open(path, "wb") as handle:
        handle.write(header.tobytes())
        handle.write(data.tobytes())
    return path
