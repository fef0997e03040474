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

__all__ = ["write_example_movie", "write_example_drive", "example_counts", "example_gain"]


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


def example_gain(*, frame_shape: tuple[int, int], seed: int) -> np.ndarray:
    """A float32 per-pixel gain reference around 1 (MRC row order)."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.8, 1.25, size=frame_shape).astype(np.float32)


def write_example_movie(
    path: str | os.PathLike[str],
    *,
    n_frames: int = 8,
    frame_shape: tuple[int, int] = (512, 512),
    dose_per_pixel: float = 1.0,
    pixel_size_angstrom: float = 0.83,
    seed: int = 0,
    gain: np.ndarray | None = None,
) -> Path:
    """Write a float32 MRC movie of integer counts (times ``gain`` if given); returns its path."""
    path = Path(path)
    counts = example_counts(
        n_frames=n_frames, frame_shape=frame_shape, dose_per_pixel=dose_per_pixel, seed=seed
    )
    data = counts.astype("<f4")
    if gain is not None:
        data = (data * gain.astype("<f4")).astype("<f4")  # float32(count x gain): gain-normalised
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


def write_example_drive(
    directory: str | os.PathLike[str], *, frame_shape: tuple[int, int] = (256, 256)
) -> Path:
    """Write a small depositor's drive: count movies, a gain-normalised set, other files.

    Layout::

        counts/Movie 1.mrc, counts/Movie 2.mrc   float32 integer counts
        gain-normalised/frames_001.mrc ...       float32 counts x one shared gain
        gain-normalised/README.txt, run_it001_data.star, notes/ünïcode notes.txt
    """
    root = Path(directory)
    for sub in ("counts", "gain-normalised", "notes"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for index in (1, 2):
        write_example_movie(root / "counts" / f"Movie {index}.mrc", frame_shape=frame_shape, seed=index)
    gain = example_gain(frame_shape=frame_shape, seed=99)
    for index in (1, 2, 3):
        write_example_movie(
            root / "gain-normalised" / f"frames_{index:03d}.mrc",
            n_frames=24,
            frame_shape=frame_shape,
            seed=10 + index,
            gain=gain,
        )
    (root / "gain-normalised" / "README.txt").write_text(
        "Movies normalised by the session's gain reference.\n"
    )
    (root / "run_it001_data.star").write_text(
        "data_\nloop_\n_rlnMicrographMovieName #1\ncounts/Movie 1.mrc\n"
    )
    (root / "notes" / "ünïcode notes.txt").write_text("collected 2026-11-20, 300 kV\n", encoding="utf-8")
    return root
