"""Synthetic depositor drives for the pipeline tests: small movies of several kinds and their neighbours."""

from __future__ import annotations

import os
from pathlib import Path

import mrcfile
import numpy as np

__all__ = ["write_mrc", "make_drive", "snapshot_tree", "gain_normalised_movie", "make_epu_session"]


def write_mrc(path: Path, data: np.ndarray, *, stack: bool = True, pixel_size_angstrom: float = 1.1) -> Path:
    """An MRC file of ``data`` (mode from its dtype), as an image stack unless ``stack`` is False."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        if stack and data.ndim == 3:
            mrc.set_image_stack()
        mrc.voxel_size = pixel_size_angstrom
    return path


def _counts(rng: np.random.Generator, shape: tuple[int, ...], dose: float = 1.0) -> np.ndarray:
    return rng.poisson(dose, size=shape)


def gain_normalised_movie(rng: np.random.Generator, gain: np.ndarray, n_frames: int) -> np.ndarray:
    """float32(counts x gain) for a float32 gain, at about 1 e-/pixel/frame."""
    counts = _counts(rng, (n_frames, *gain.shape)).astype(np.float32)
    return (counts * gain[None]).astype(np.float32)


def make_drive(
    root: Path,
    *,
    shape: tuple[int, int] = (64, 64),
    n_frames: int = 6,
    gain_sets: bool = False,
    n_extra_movies: int = 0,
    seed: int = 0,
) -> Path:
    """A small drive with nested folders, odd names, movies of several kinds and their neighbours."""
    rng = np.random.default_rng(seed)
    movies = root / "Session 1" / "Movies"
    write_mrc(movies / "movie_001.mrc", _counts(rng, (n_frames, *shape)).astype(np.float32))
    write_mrc(movies / "movie_002.mrc", _counts(rng, (n_frames, *shape), 40.0).astype(np.uint16))
    write_mrc(movies / "film é 3.mrc", _counts(rng, (n_frames, *shape)).astype(np.int8))
    write_mrc(movies / "noisy float.mrcs", rng.normal(0, 1, (n_frames, *shape)).astype(np.float32))
    for index in range(n_extra_movies):
        write_mrc(movies / f"extra_{index:03d}.mrc", _counts(rng, (n_frames, *shape)).astype(np.float32))
    corrupt = movies / "corrupt.mrc"
    write_mrc(corrupt, _counts(rng, (n_frames, *shape)).astype(np.float32))
    with open(corrupt, "r+b") as handle:
        handle.truncate(os.path.getsize(corrupt) - 1000)
    (movies / "movie_001.mrc.mdoc").write_text("[ZValue = 0]\nExposureDose = 1.0\n", encoding="utf-8")
    write_mrc(
        root / "Session 1" / "gain_ref.mrc", rng.uniform(0.9, 1.1, shape).astype(np.float32), stack=False
    )
    (root / "Session 1" / "defects.txt").write_text("0 0 1 64\n", encoding="utf-8")
    write_mrc(root / "Session 1" / "micrograph.mrc", rng.normal(0, 1, (1, *shape)).astype(np.float32))
    processing = root / "Processing" / "job 001 ünï"
    processing.mkdir(parents=True)
    (processing / "run_it001_data.star").write_text(
        "data_\nloop_\n_rlnMicrographMovieName #1\nMovies/movie_001.mrc\n", encoding="utf-8"
    )
    (root / "notes.txt").write_text("Collected on a Krios.\n", encoding="utf-8")
    (root / "empty.txt").write_bytes(b"")
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "deep.log").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    if gain_sets:
        gain = rng.uniform(0.8, 1.25, shape).astype(np.float32)
        for index in range(3):
            write_mrc(root / "Gain set" / f"gn_{index}.mrc", gain_normalised_movie(rng, gain, n_frames))
    return root


def snapshot_tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime (ns), by relative path."""
    result = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            result[path.relative_to(root).as_posix()] = (path.read_bytes(), path.stat().st_mtime_ns)
    return result


def make_epu_session(
    root: Path,
    *,
    rng: np.random.Generator,
    gain: np.ndarray,
    squares: tuple[int, ...] = (2, 3, 1),
    n_frames: int = 12,
    dose: float = 1.0,
    flipped: tuple[str, ...] = (),
    prefix: str = "",
) -> list[Path]:
    """An EPU-like session: ``Images-Disc1/GridSquare_<id>/Data/FoilHole_*_Data_*.mrc`` sharing one gain.

    ``squares`` gives the number of movies per grid square; each movie has the
    ``.xml`` and ``.jpg`` EPU writes beside it. Movies named in ``flipped`` (by
    file name) were normalised with the gain flipped upside down. Returns the movies.
    """
    movies = []
    for square, n_movies in enumerate(squares):
        folder = root / "Images-Disc1" / f"GridSquare_{1000 + square}" / "Data"
        for index in range(n_movies):
            name = f"{prefix}FoilHole_{2000 + square}_Data_{3000 + index}_{4000 + index}_20240101_120000"
            applied = gain[::-1] if f"{name}.mrc" in flipped else gain
            counts = rng.poisson(dose, size=(n_frames, *gain.shape)).astype(np.float32)
            movie = write_mrc(folder / f"{name}.mrc", (counts * applied[None]).astype(np.float32))
            (folder / f"{name}.xml").write_text(f"<MicroscopeImage><name>{name}</name></MicroscopeImage>\n")
            (folder / f"{name}.jpg").write_bytes(
                b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 64, dtype=np.uint8))
            )
            movies.append(movie)
    return movies
