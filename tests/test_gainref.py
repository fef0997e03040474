"""Gain reference files (empcompress.gainref): reading MRC / DM4 / TIFF, orienting, writing."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import tifffile
from mrc_factory import write_mrc

from empcompress.errors import GainError
from empcompress.gainref import (
    GAIN_REFERENCE_NAME,
    TRANSFORMS,
    orient_gain,
    place_gain_copy,
    place_gain_reference,
    read_gain_array,
    read_gain_reference,
    write_gain_reference,
)

SHAPE = (48, 48)  # square: every one of the 8 transforms keeps the shape


def normalised(counts: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return (counts.astype(np.float32) * gain).astype(np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- a minimal DM4 writer (test data only)
#
# DM4 layout: version 4 (big-endian int32), root length (int64), byte order
# (int32, 1 = little); tag groups: sorted, open (1 byte each), number of tags
# (int64); each tag: kind (20 group, 21 data), name length (int16), name, size
# (int64), then a group or "%%%%", the info array length and info (int64s) and
# the data in the file's byte order.


def _dm_data(name: bytes, info: list[int], payload: bytes) -> bytes:
    body = b"%%%%" + struct.pack(">q", len(info)) + b"".join(struct.pack(">q", i) for i in info) + payload
    return b"\x15" + struct.pack(">h", len(name)) + name + struct.pack(">q", len(body)) + body


def _dm_group(name: bytes, tags: list[bytes]) -> bytes:
    body = b"\x00\x00" + struct.pack(">q", len(tags)) + b"".join(tags)
    return b"\x14" + struct.pack(">h", len(name)) + name + struct.pack(">q", len(body)) + body


def _dm_calibration(name: bytes) -> bytes:
    return _dm_group(
        name,
        [
            _dm_data(b"Origin", [6], struct.pack("<f", 0.0)),
            _dm_data(b"Scale", [6], struct.pack("<f", 1.0)),
            _dm_data(b"Units", [18, 0], b""),
        ],
    )


def dm4_bytes(image: np.ndarray) -> bytes:
    """A DM4 file holding one float32 image (rows as given, first row first)."""
    ny, nx = image.shape
    data = np.ascontiguousarray(image, dtype="<f4")
    image_data = _dm_group(
        b"ImageData",
        [
            _dm_group(
                b"Calibrations",
                [
                    _dm_calibration(b"Brightness"),
                    _dm_group(b"Dimension", [_dm_calibration(b""), _dm_calibration(b"")]),
                ],
            ),
            _dm_data(b"Data", [20, 6, data.size], data.tobytes()),
            _dm_data(b"DataType", [3], struct.pack("<i", 2)),
            _dm_group(
                b"Dimensions",
                [_dm_data(b"", [3], struct.pack("<i", nx)), _dm_data(b"", [3], struct.pack("<i", ny))],
            ),
        ],
    )
    entry = _dm_group(b"", [image_data, _dm_group(b"ImageTags", [])])
    tags = [_dm_group(b"ImageList", [entry])]
    root = b"\x00\x00" + struct.pack(">q", len(tags)) + b"".join(tags)
    return struct.pack(">i", 4) + struct.pack(">q", len(root)) + struct.pack(">i", 1) + root + bytes(8)


@pytest.fixture
def gain(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.6, 1.6, size=SHAPE).astype(np.float32)


@pytest.fixture
def frames(gain: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    return list(normalised(rng.poisson(1.0, size=(2, *SHAPE)), gain))


# ---------------------------------------------------------------- reading


def test_reads_mrc_dm4_and_tiff_gains(tmp_path: Path, gain: np.ndarray) -> None:
    mrc = tmp_path / "gain.mrc"
    write_mrc(mrc, gain[None], mode=2, byte_order=">")
    dm4 = tmp_path / "CountRef_x.dm4"
    dm4.write_bytes(dm4_bytes(gain))
    tiff = tmp_path / "x.gain"
    tifffile.imwrite(tiff, gain)
    for path, kind in ((mrc, "mrc"), (dm4, "dm"), (tiff, "tiff")):
        reference = read_gain_reference(path)
        assert reference.file_format == kind
        assert reference.data.dtype == np.float32
        assert np.array_equal(reference.data, gain)
        assert reference.sha256 == sha256(path)


def test_unreadable_gains_give_one_clear_error(tmp_path: Path, gain: np.ndarray) -> None:
    with pytest.raises(GainError, match="no such gain reference"):
        read_gain_reference(tmp_path / "missing.mrc")
    junk = tmp_path / "junk.dm4"
    junk.write_bytes(b"\0\0\0\x04" + b"\xff" * 40)
    with pytest.raises(GainError, match=r"junk\.dm4"):
        read_gain_reference(junk)
    stack = write_mrc(tmp_path / "stack.mrc", np.stack([gain, gain]), mode=2)
    with pytest.raises(GainError, match="2 sections"):
        read_gain_reference(stack)
    text = tmp_path / "gain.txt"
    text.write_text("not a gain")
    with pytest.raises(GainError, match=r"gain\.txt"):
        read_gain_reference(text)


# ---------------------------------------------------------------- orienting


@pytest.mark.parametrize("transform", range(len(TRANSFORMS)), ids=[t[0] for t in TRANSFORMS])
def test_every_flip_and_rotation_is_found(gain: np.ndarray, frames: list[np.ndarray], transform: int) -> None:
    name, rot, flip, function = TRANSFORMS[transform]
    # a file whose array needs `function` to become the movie's gain
    inverse = next(f for _, _, _, f in TRANSFORMS if np.array_equal(function(f(gain)), gain))
    stored = np.ascontiguousarray(inverse(gain))
    oriented = orient_gain(stored, frames, max_exception_fraction=1e-3)
    assert np.array_equal(oriented.gain, gain)
    assert oriented.orientation.transform == name
    assert (oriented.orientation.relion_gain_rot, oriented.orientation.relion_gain_flip) == (rot, flip)
    assert oriented.orientation.exception_fraction == 0.0
    assert oriented.is_identity == (transform == 0)
    assert name in oriented.orientation.description


def test_non_square_frames_only_try_shape_preserving_transforms(rng: np.random.Generator) -> None:
    gain = rng.uniform(0.6, 1.6, size=(40, 56)).astype(np.float32)
    frames = list(normalised(rng.poisson(1.0, size=(2, 40, 56)), gain))
    oriented = orient_gain(np.ascontiguousarray(gain.T), frames, max_exception_fraction=1e-3)
    assert np.array_equal(oriented.gain, gain)
    assert oriented.orientation.transform in ("transposed",)
    oriented = orient_gain(np.ascontiguousarray(gain[::-1]), frames, max_exception_fraction=1e-3)
    assert oriented.orientation.transform == "rows reversed (flipped upside down)"


def test_super_resolution_gain_for_counting_movie_is_binned(rng: np.random.Generator) -> None:
    superres = rng.uniform(0.6, 1.6, size=(2 * SHAPE[0], 2 * SHAPE[1])).astype(np.float32)
    binned = (superres.reshape(SHAPE[0], 2, SHAPE[1], 2).sum(axis=(1, 3), dtype=np.float32) / 4).astype(
        np.float32
    )
    frames = list(normalised(rng.poisson(1.0, size=(2, *SHAPE)), binned))
    oriented = orient_gain(superres[::-1].copy(), frames, max_exception_fraction=1e-3)
    assert np.array_equal(oriented.gain, binned)
    assert "2x binned" in oriented.orientation.scale
    assert oriented.orientation.transform.startswith("rows reversed")


def test_counting_gain_for_super_resolution_movie_is_expanded(
    rng: np.random.Generator, gain: np.ndarray
) -> None:
    expanded = np.repeat(np.repeat(gain, 2, axis=0), 2, axis=1)
    frames = list(normalised(rng.poisson(0.3, size=(2, *expanded.shape)), expanded))
    oriented = orient_gain(gain, frames, max_exception_fraction=1e-3)
    assert np.array_equal(oriented.gain, expanded)
    assert "2x expanded" in oriented.orientation.scale


def test_reciprocal_gain_files_are_inverted_when_asked(gain: np.ndarray, frames: list[np.ndarray]) -> None:
    reciprocal = (np.float32(1) / gain).astype(np.float32)
    exact = (np.float32(1) / reciprocal).astype(np.float32)
    frames = [normalised(np.rint(frame / gain), exact) for frame in frames]
    with pytest.raises(GainError):
        orient_gain(reciprocal, frames, max_exception_fraction=1e-3)
    oriented = orient_gain(reciprocal, frames, max_exception_fraction=1e-3, try_reciprocal=True)
    assert oriented.orientation.reciprocal
    assert np.array_equal(oriented.gain, exact)


def test_a_gain_that_fits_no_orientation_is_refused(
    rng: np.random.Generator, frames: list[np.ndarray]
) -> None:
    other = rng.uniform(0.6, 1.6, size=SHAPE).astype(np.float32)
    with pytest.raises(GainError, match="does not belong to the movie") as caught:
        orient_gain(other, frames, max_exception_fraction=1e-3, name="other.mrc")
    assert "other.mrc" in str(caught.value)
    with pytest.raises(GainError, match="does not fit movie frames"):
        orient_gain(other[:10, :20].copy(), frames, max_exception_fraction=1e-3)


# ---------------------------------------------------------------- writing


def test_written_gain_reference_is_float32_mrc_and_deterministic(tmp_path: Path, gain: np.ndarray) -> None:
    first = write_gain_reference(tmp_path / "a.mrc", gain)
    second = write_gain_reference(tmp_path / "b.mrc", gain.copy())
    assert first == second == sha256(tmp_path / "a.mrc")
    with mrcfile.open(tmp_path / "a.mrc") as handle:
        assert handle.header.mode == 2
        assert np.array_equal(handle.data, gain)  # MRC row order: row 0 stored first
    assert np.array_equal(read_gain_array(tmp_path / "a.mrc"), gain)
    # the same gain again: kept; another gain: refused unless overwrite
    assert write_gain_reference(tmp_path / "a.mrc", gain) == first
    other = gain * np.float32(2)
    with pytest.raises(GainError, match="different gain"):
        write_gain_reference(tmp_path / "a.mrc", other)
    assert sha256(tmp_path / "a.mrc") == first
    assert write_gain_reference(tmp_path / "a.mrc", other, overwrite=True) != first
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


def test_place_gain_reference_never_replaces_another_gain(tmp_path: Path, gain: np.ndarray) -> None:
    path, digest, created = place_gain_reference(gain, tmp_path)
    assert (path.name, created) == (GAIN_REFERENCE_NAME, True)
    again, digest_again, created_again = place_gain_reference(gain, tmp_path)
    assert (again, digest_again, created_again) == (path, digest, False)
    other = gain + np.float32(1)
    named, other_digest, created_other = place_gain_reference(other, tmp_path)
    assert named.name == f"gain-reference-{other_digest[:12]}.mrc"
    assert created_other
    assert sha256(path) == digest  # the first one is untouched
    assert place_gain_reference(other, tmp_path)[0] == named


def test_place_gain_copy_keeps_the_bytes(tmp_path: Path, gain: np.ndarray) -> None:
    source_directory = tmp_path / "in"
    source_directory.mkdir()
    dm4 = source_directory / "CountRef_1.dm4"
    dm4.write_bytes(dm4_bytes(gain))
    out = tmp_path / "out"
    out.mkdir()
    copied, digest, created = place_gain_copy(dm4, out)
    assert created and copied == out / dm4.name
    assert copied.read_bytes() == dm4.read_bytes()
    assert digest == sha256(dm4)
    assert place_gain_copy(dm4, out) == (copied, digest, False)
    (source_directory / "other").mkdir()
    different = source_directory / "other" / dm4.name
    different.write_bytes(dm4_bytes(gain * 2))
    renamed, other_digest, _ = place_gain_copy(different, out)
    assert renamed.name == f"CountRef_1-{other_digest[:12]}.dm4"
    assert copied.read_bytes() == dm4.read_bytes()
