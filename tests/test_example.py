"""The built-in examples: what the README's demo runs on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from empcompress.example import example_gain, write_example_drive, write_example_movie
from empcompress.gain import classify_movie
from empcompress.mrc import MrcMovie, read_header


def test_example_movie_is_float32_integer_counts(tmp_path: Path) -> None:
    path = write_example_movie(tmp_path / "m.mrc", n_frames=3, frame_shape=(32, 48))
    header = read_header(path)
    assert (header.mode, header.nx, header.ny, header.nz) == (2, 48, 32, 3)
    with MrcMovie(path) as movie:
        frame = movie.read_frame(1)
    assert np.array_equal(frame, np.floor(frame)) and frame.min() >= 0


def test_example_drive_has_every_kind_of_file(tmp_path: Path) -> None:
    root = write_example_drive(tmp_path / "drive", frame_shape=(64, 64))
    names = {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}
    assert {"counts/Movie 1.mrc", "gain-normalised/frames_001.mrc", "notes/ünïcode notes.txt"} <= names
    assert classify_movie(root / "counts" / "Movie 1.mrc").kind == "counts"
    assert classify_movie(root / "gain-normalised" / "frames_002.mrc").kind == "gain-normalised"


def test_gain_normalised_example_is_counts_times_gain(tmp_path: Path) -> None:
    gain = example_gain(frame_shape=(16, 16), seed=1)
    plain = write_example_movie(tmp_path / "plain.mrc", n_frames=2, frame_shape=(16, 16), seed=5)
    scaled = write_example_movie(tmp_path / "gain.mrc", n_frames=2, frame_shape=(16, 16), seed=5, gain=gain)
    with MrcMovie(plain) as counts_movie, MrcMovie(scaled) as gain_movie:
        counts = counts_movie.read_frame(0).copy()
        values = gain_movie.read_frame(0)
    assert np.array_equal(values, (counts * gain).astype(np.float32))
