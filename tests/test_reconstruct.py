"""Rebuilding source frames into reused buffers (CompressedMovie's ``out`` arrays)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import counts
from mrc_factory import write_mrc

from empcompress import kernels, reconstruct
from empcompress.convert import convert_movie
from empcompress.errors import VerificationError
from empcompress.reconstruct import CompressedMovie
from empcompress.verify import verify_tiff


def distinct_movie(tmp_path: Path, rng: np.random.Generator, *, mode: int = 2, byte_order: str = "<") -> Path:
    values = counts(rng, (5, 40, 30), dose=2.0)
    for index in range(values.shape[0]):
        values[index, index, :] = index + 1  # every frame differs from the others
    return write_mrc(tmp_path / "m.mrc", values, mode=mode, byte_order=byte_order)


@pytest.mark.parametrize(("mode", "byte_order"), [(2, "<"), (2, ">"), (1, "<"), (101, "<"), (0, "<")])
def test_frames_rebuilt_into_one_buffer_are_each_frame_in_turn(
    tmp_path: Path, rng: np.random.Generator, mode: int, byte_order: str
) -> None:
    source = distinct_movie(tmp_path, rng, mode=mode, byte_order=byte_order)
    convert_movie(source, tmp_path / "m.tif")
    data = source.read_bytes()
    with CompressedMovie(tmp_path / "m.tif") as movie:
        frame_size_bytes = (len(data) - 1024) // movie.n_pages
        expected = [data[1024 + index * frame_size_bytes :][:frame_size_bytes] for index in range(5)]
        assert [frame.tobytes() for frame in movie.iter_source_frame_bytes()] == expected
        stored, rebuilt = movie.new_stored_frame(), movie.new_source_frame()
        for index in (3, 1, 4):
            fresh = movie.source_frame_bytes(movie.read_stored_frame(index), index=index).tobytes()
            into = movie.source_frame_bytes(
                movie.read_stored_frame(index, out=stored), index=index, out=rebuilt
            )
            assert fresh == into.tobytes() == expected[index]
            if (mode, byte_order) in {(2, "<"), (1, "<")}:  # a view of the buffer, no copy
                assert np.shares_memory(into, rebuilt)


def test_buffers_of_the_wrong_shape_or_type_are_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    source = distinct_movie(tmp_path, rng)
    convert_movie(source, tmp_path / "m.tif")
    with CompressedMovie(tmp_path / "m.tif") as movie:
        stored = movie.read_stored_frame(0)
        for wrong in (np.empty((30, 40), np.uint8), np.empty((40, 30), np.uint16), np.empty(1200, np.uint8)):
            with pytest.raises(ValueError, match="out is"):
                movie.read_stored_frame(0, out=wrong)
        with pytest.raises(ValueError, match="out is"):
            movie.source_values(stored, out=np.empty((40, 30), np.float64))


@pytest.mark.parametrize("threads", [1, 2])
def test_verification_with_reused_buffers_still_catches_one_changed_frame(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """Decode and rebuild buffers serve every frame (two rebuild buffers while a helper hashes):
    a good file passes on the threaded path, and a page swapped for another frame's fails."""
    monkeypatch.setattr(kernels, "SINGLE_THREAD_FRAME_BYTES", 0)  # small frames on the threaded path
    source = distinct_movie(tmp_path, rng)
    output = tmp_path / "m.tif"
    convert_movie(source, output, codec="none")
    for _ in range(5):
        assert verify_tiff(output, against=source, threads=threads).n_frames == 5
    # frame 3's strip now holds frame 2's pixels: decodes fine, rebuilds the wrong source
    with CompressedMovie(output) as movie:
        page2, page3 = movie._tiff.pages[2], movie._tiff.pages[3]
        offsets = (page2.dataoffsets[0], page3.dataoffsets[0])  # type: ignore[union-attr]
        size = page3.databytecounts[0]  # type: ignore[union-attr]
    data = bytearray(output.read_bytes())
    data[offsets[1] : offsets[1] + size] = data[offsets[0] : offsets[0] + size]
    output.write_bytes(bytes(data))
    with pytest.raises(VerificationError, match="sha256"):
        verify_tiff(output, threads=threads)
    with pytest.raises(VerificationError, match="frame 3 differs"):
        verify_tiff(output, against=source, threads=threads)


@pytest.mark.parametrize(
    ("mode", "byte_order"), [(2, "<"), (2, ">"), (1, "<"), (101, "<"), (0, "<"), (12, "<")]
)
@pytest.mark.parametrize("n_buffers", [1, 2])
def test_frames_rebuilt_piece_by_piece_are_the_source_bytes_in_order(
    tmp_path: Path,
    rng: np.random.Generator,
    monkeypatch: pytest.MonkeyPatch,
    mode: int,
    byte_order: str,
    n_buffers: int,
) -> None:
    """Verification rebuilds a frame in bands of rows (7 rows here: the last of 40 is short), band k
    (counted over all frames) in buffer k % n_buffers; other storage a whole frame at a time."""
    source = distinct_movie(tmp_path, rng, mode=mode, byte_order=byte_order)
    convert_movie(source, tmp_path / "m.tif")
    data = source.read_bytes()
    in_bands = byte_order == "<" and mode != 101
    with CompressedMovie(tmp_path / "m.tif") as movie:
        monkeypatch.setattr(reconstruct, "REBUILD_PIECE_BYTES", 7 * 30 * movie.source_dtype.itemsize + 1)
        rebuilder = movie.source_rebuilder(n_buffers=n_buffers)
        assert rebuilder.in_bands is in_bands
        assert len(rebuilder.buffers) == n_buffers
        frame_size_bytes = (len(data) - 1024) // movie.n_pages
        stored = movie.new_stored_frame()
        made = 0
        for index in (0, 3, 4, 1):
            rebuilt = []
            for piece in rebuilder.pieces(movie.read_stored_frame(index, out=stored), index=index):
                rebuilt.append(piece.tobytes())
                if in_bands:
                    assert np.shares_memory(piece, rebuilder.buffers[made % n_buffers])
                made += 1
            assert len(rebuilt) == (6 if in_bands else 1)
            assert b"".join(rebuilt) == data[1024 + index * frame_size_bytes :][:frame_size_bytes]
