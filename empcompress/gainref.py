"""Gain reference files: read the field's formats, orient them to a movie, write ours.

Reading (:func:`read_gain_reference`): MRC (any readable mode, one section),
Gatan DM4/DM3 (``CountRef_*.dm4``, ``SuperRef_*.dm4``, through RosettaSciIO) and
Falcon/EER ``.gain`` TIFF files. The array is returned as the file stores it:
row 0 is the first stored row, whatever the format.

Orienting (:func:`orient_gain`): a depositor's gain often needs a flip or a
rotation before it applies to the movie (the field's most common gain mistake),
and a super-resolution gain may come with counting-mode movies (or the other
way round). Given sample frames of a gain-normalised movie (MRC row order), we
try the 8 flips/rotations, at the same size or 2x binned/expanded, and keep the
one under which the values are integral counts (float32(n * g) == v bit for bit
for the most values). The result says which one it was.

Writing (:func:`write_gain_reference`): our gain reference is a float32 MRC
(mode 2) in the movie's MRC row order, so that it applies unchanged to our
flipped TIFF movies as RELION, MotionCor and cryoSPARC apply an MRC gain to a
TIFF movie. The bytes depend only on the gain (no time stamp), so writing the
same gain twice gives the same sha256.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import numpy.typing as npt
import tifffile

from . import kernels
from .errors import EmpCompressError, GainError
from .files import commit_output, file_sha256, temporary_output
from .mrc import MrcMovie

__all__ = [
    "GAIN_REFERENCE_NAME",
    "GAIN_LABEL",
    "TRANSFORMS",
    "GainReference",
    "GainTransform",
    "ORIENTATION_CODES",
    "SCALE_CODES",
    "GainOrientation",
    "OrientedGain",
    "read_gain_reference",
    "read_gain_array",
    "orient_gain",
    "exception_counts",
    "exception_fraction",
    "write_gain_reference",
    "place_gain_reference",
    "place_gain_copy",
    "file_sha256",
]

#: Default name of the gain reference written beside the TIFF movies of a set.
GAIN_REFERENCE_NAME = "gain-reference.mrc"
#: The label our gain references carry (no time stamp: same gain, same bytes).
GAIN_LABEL = b"empcompress gain reference: float32, MRC row order of the movies"

GainArray = npt.NDArray[np.float32]


def _rows_reversed(a: GainArray) -> GainArray:
    return a[::-1]


def _columns_reversed(a: GainArray) -> GainArray:
    return a[:, ::-1]


def _transposed(a: GainArray) -> GainArray:
    return a.T


def _anti_transposed(a: GainArray) -> GainArray:
    return a[::-1, ::-1].T


#: The 8 flips/rotations: (name, RELION --gain_rot, RELION --gain_flip, transform).
#: Rotations are counter-clockwise in array terms (numpy.rot90); RELION's
#: gain_flip is 1 for upside down (rows reversed) and 2 for left-right.
TRANSFORMS: tuple[tuple[str, int, int, Callable[[GainArray], GainArray]], ...] = (
    ("as stored", 0, 0, lambda a: a),
    ("rows reversed (flipped upside down)", 0, 1, _rows_reversed),
    ("columns reversed (flipped left-right)", 0, 2, _columns_reversed),
    ("rotated 180 degrees", 2, 0, lambda a: np.rot90(a, 2)),
    ("rotated 90 degrees", 1, 0, lambda a: np.rot90(a, 1)),
    ("rotated 270 degrees", 3, 0, lambda a: np.rot90(a, 3)),
    ("transposed", 1, 2, _transposed),
    ("anti-transposed", 1, 1, _anti_transposed),
)


#: Short names of the 8 flips/rotations, as records store them, in TRANSFORMS' order.
ORIENTATION_CODES: dict[str, str] = {
    "as stored": "identity",
    "rows reversed (flipped upside down)": "flip-rows",
    "columns reversed (flipped left-right)": "flip-columns",
    "rotated 180 degrees": "rotate-180",
    "rotated 90 degrees": "rotate-90",
    "rotated 270 degrees": "rotate-270",
    "transposed": "transpose",
    "anti-transposed": "anti-transpose",
}
#: Short names of the size changes, as records store them.
SCALE_CODES: dict[str, str] = {
    "same size": "same",
    "2x binned (float32 mean of 2x2)": "bin2-float32",
    "2x binned (float64 mean of 2x2)": "bin2-float64",
    "2x expanded (each pixel to 2x2)": "expand2",
}


@dataclass(frozen=True)
class GainTransform:
    """How a reference file's array becomes one movie's gain (MRC row order, frame size).

    Applied in this order: ``reciprocal`` (the file holds 1/gain), then the flip or
    rotation ``orientation`` (a code of :data:`ORIENTATION_CODES`), then ``scale``
    (a code of :data:`SCALE_CODES`). A TIFF's record stores it, so that one
    reference file serves movies of every orientation.
    """

    orientation: str = "identity"
    scale: str = "same"
    reciprocal: bool = False

    def __post_init__(self) -> None:
        if self.orientation not in ORIENTATION_CODES.values():
            raise GainError(f"unknown gain orientation {self.orientation!r}")
        if self.scale not in SCALE_CODES.values():
            raise GainError(f"unknown gain scale {self.scale!r}")

    @property
    def is_identity(self) -> bool:
        return self.orientation == "identity" and self.scale == "same" and not self.reciprocal

    @property
    def _entry(self) -> tuple[str, int, int, Callable[[GainArray], GainArray]]:
        name = next(key for key, code in ORIENTATION_CODES.items() if code == self.orientation)
        return next(entry for entry in TRANSFORMS if entry[0] == name)

    @property
    def relion_gain_rot(self) -> int:
        return self._entry[1]

    @property
    def relion_gain_flip(self) -> int:
        return self._entry[2]

    def file_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        """The shape the reference file must have for frames of ``frame_shape``."""
        ny, nx = frame_shape
        if self.scale in ("bin2-float32", "bin2-float64"):
            ny, nx = 2 * ny, 2 * nx
        elif self.scale == "expand2":
            if ny % 2 or nx % 2:
                raise GainError(f"frames of {nx}x{ny} cannot come from a 2x expanded gain")
            ny, nx = ny // 2, nx // 2
        swaps = self.orientation in ("rotate-90", "rotate-270", "transpose", "anti-transpose")
        return (nx, ny) if swaps else (ny, nx)

    def apply(self, data: GainArray) -> GainArray:
        """The movie's gain from the file's array (a new float32 array)."""
        values = np.asarray(data, dtype=np.float32)
        if self.reciprocal:
            with np.errstate(divide="ignore", invalid="ignore"):
                values = (np.float32(1) / values).astype(np.float32)
        values = self._entry[3](values)
        scale = next(key for key, code in SCALE_CODES.items() if code == self.scale)
        if scale == "same size":
            return np.ascontiguousarray(values, dtype=np.float32)
        if scale.startswith("2x binned"):
            return np.ascontiguousarray(_bin2(values, wide="float64" in scale), dtype=np.float32)
        return np.ascontiguousarray(np.repeat(np.repeat(values, 2, axis=0), 2, axis=1), dtype=np.float32)

    def relion_terms(self) -> str:
        """The transform as RELION's options name it (and what else it takes)."""
        text = f"--gain_rot {self.relion_gain_rot} --gain_flip {self.relion_gain_flip}"
        if self.scale != "same":
            text += f", {self.scale}"
        if self.reciprocal:
            text += ", file holds 1/gain"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "orientation": self.orientation,
            "scale": self.scale,
            "reciprocal": self.reciprocal,
            "relion_gain_rot": self.relion_gain_rot,
            "relion_gain_flip": self.relion_gain_flip,
        }


@dataclass(frozen=True, eq=False)
class GainReference:
    """A gain reference file as read: values in the file's own row order."""

    path: str
    file_format: str  # "mrc", "dm", "tiff"
    data: GainArray
    sha256: str

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.data.shape[0]), int(self.data.shape[1]))


@dataclass(frozen=True)
class GainOrientation:
    """How a supplied gain was fitted to a movie."""

    transform: str  # one of TRANSFORMS' names
    relion_gain_rot: int
    relion_gain_flip: int
    scale: str  # "same size", "2x binned (mean of 2x2)", "2x expanded (each pixel 2x2)"
    reciprocal: bool  # the file holds 1/gain (tried for EER .gain files)
    exception_fraction: float  # of the sampled values, under this orientation
    n_tested: int
    description: str

    @property
    def as_transform(self) -> GainTransform:
        """The same orientation as the record stores it."""
        return GainTransform(ORIENTATION_CODES[self.transform], SCALE_CODES[self.scale], self.reciprocal)


@dataclass(frozen=True, eq=False)
class OrientedGain:
    """A supplied gain brought to the movie's MRC row order and size."""

    gain: GainArray
    orientation: GainOrientation
    is_identity: bool  # the file's array applies as it is (same size, as stored, not inverted)


# ---------------------------------------------------------------- reading


def read_gain_reference(path: str | os.PathLike[str]) -> GainReference:
    """Read a gain reference (MRC, DM3/DM4, or TIFF such as EER ``.gain``) as float32.

    Raises :class:`GainError` naming the file when it cannot be read or does not
    hold one 2-D image.
    """
    path = Path(path)
    if not path.is_file():
        raise GainError(f"{path}: no such gain reference file")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    suffix = path.suffix.lower()
    try:
        if magic in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"):
            data, file_format = _read_tiff(path), "tiff"
        elif suffix in (".dm4", ".dm3") or magic in (b"\0\0\0\x04", b"\0\0\0\x03"):
            data, file_format = _read_dm(path), "dm"
        else:
            data, file_format = read_gain_array(path), "mrc"
    except GainError:
        raise
    except EmpCompressError as error:
        raise GainError(f"{path}: cannot be read as a gain reference ({error})") from None
    except Exception as error:  # third-party readers raise anything
        raise GainError(
            f"{path}: cannot be read as a gain reference ({type(error).__name__}: {error})"
        ) from None
    if data.ndim != 2 or 0 in data.shape:
        raise GainError(f"{path}: a gain reference must be one 2-D image, this one has shape {data.shape}")
    return GainReference(str(path), file_format, data, file_sha256(path))


def read_gain_array(path: str | os.PathLike[str]) -> GainArray:
    """The single section of an MRC gain reference as float32, MRC row order."""
    with MrcMovie(path) as movie:
        if movie.header.nz != 1:
            raise GainError(f"{path}: has {movie.header.nz} sections; a gain reference has exactly one")
        values = movie.read_frame(0)
        return _as_float32(values, path)


def _as_float32(values: npt.NDArray[np.generic], path: str | os.PathLike[str]) -> GainArray:
    array = np.asarray(values)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.dtype.kind not in "fiu":
        raise GainError(f"{path}: gain values of type {array.dtype} are not supported")
    return np.ascontiguousarray(array, dtype=np.float32)


def _read_tiff(path: Path) -> GainArray:
    with tifffile.TiffFile(path) as tiff:
        return _as_float32(tiff.asarray(key=0), path)


def _read_dm(path: Path) -> GainArray:
    try:
        from rsciio.digitalmicrograph import file_reader
    except ImportError:
        raise GainError(
            f"{path}: reading Gatan DM files needs RosettaSciIO; install it with 'pip install rosettasciio'"
        ) from None
    images = [entry["data"] for entry in file_reader(str(path)) if np.ndim(entry["data"]) == 2]
    if len(images) != 1:
        raise GainError(f"{path}: expected one 2-D image in the DM file, found {len(images)}")
    return _as_float32(images[0], path)


# ---------------------------------------------------------------- orienting


def exception_counts(frames: Iterable[npt.NDArray[np.float32]], gain: GainArray) -> tuple[int, int]:
    """(values float32(n * gain) does not reproduce, values) of the frames.

    Per value, so it adds up over frames and over row bands (pass each band's
    rows of the frames with the same rows of the gain): one frame at a time,
    counted without building the counts or the exceptions (a wrong gain makes
    nearly every value one).
    """
    n_bad = n_values = 0
    for frame in frames:
        bad, _ = kernels.gain_exception_count(frame, gain)
        n_bad += bad
        n_values += frame.size
    return n_bad, n_values


def exception_fraction(frames: Iterable[npt.NDArray[np.float32]], gain: GainArray) -> float:
    """Fraction of the frames' values that float32(n * gain) does not reproduce."""
    n_bad, n_values = exception_counts(frames, gain)
    return n_bad / max(1, n_values)


def _bin2(gain: GainArray, *, wide: bool) -> GainArray:
    ny, nx = gain.shape[0] // 2, gain.shape[1] // 2
    blocks = gain[: 2 * ny, : 2 * nx].reshape(ny, 2, nx, 2)
    if wide:
        return blocks.astype(np.float64).mean(axis=(1, 3)).astype(np.float32)
    return (blocks.sum(axis=(1, 3), dtype=np.float32) / np.float32(4)).astype(np.float32)


def _scalings(
    frame_shape: tuple[int, int], shape: tuple[int, ...]
) -> list[tuple[str, Callable[[GainArray], GainArray]]]:
    ny, nx = frame_shape
    options: list[tuple[str, Callable[[GainArray], GainArray]]] = []
    if shape == (ny, nx):
        options.append(("same size", lambda a: a))
    if shape == (2 * ny, 2 * nx):
        options.append(("2x binned (float32 mean of 2x2)", lambda a: _bin2(a, wide=False)))
        options.append(("2x binned (float64 mean of 2x2)", lambda a: _bin2(a, wide=True)))
    if 2 * shape[0] == ny and 2 * shape[1] == nx:
        options.append(
            ("2x expanded (each pixel to 2x2)", lambda a: np.repeat(np.repeat(a, 2, axis=0), 2, axis=1))
        )
    return options


def orient_gain(
    data: GainArray,
    sample_frames: Sequence[npt.NDArray[np.float32]],
    *,
    max_exception_fraction: float,
    try_reciprocal: bool = False,
    name: str = "the gain reference",
) -> OrientedGain:
    """Bring a supplied gain (file row order) to the sample frames' MRC row order and size.

    The identity (same size, as stored) is tried first and kept if it fits;
    otherwise every flip/rotation and 2x size change that gives the frames'
    shape is tried and the one reproducing the most values wins. Raises
    :class:`GainError` when none reproduces all but ``max_exception_fraction``
    of the values, naming the best few.
    """
    if not sample_frames:
        raise GainError(f"{name}: no frames to orient the gain against")
    frame_shape = (int(sample_frames[0].shape[0]), int(sample_frames[0].shape[1]))
    variants: list[tuple[bool, GainArray]] = [(False, data)]
    if try_reciprocal:
        with np.errstate(divide="ignore", invalid="ignore"):
            variants.append((True, (np.float32(1) / data).astype(np.float32)))
    # only the scores are kept (a candidate is as big as a frame): the winner is rebuilt at the end
    results: list[tuple[float, str, int, int, str, bool]] = []
    builders: dict[tuple[str, str, bool], Callable[[], GainArray]] = {}
    for reciprocal, values in variants:
        for transform_name, rot, flip, transform in TRANSFORMS:
            for scale_name, scale in _scalings(frame_shape, transform(values).shape):

                def build(
                    values: GainArray = values,
                    transform: Callable[[GainArray], GainArray] = transform,
                    scale: Callable[[GainArray], GainArray] = scale,
                ) -> GainArray:
                    return np.ascontiguousarray(scale(transform(values)), dtype=np.float32)

                candidate = build()
                fraction = exception_fraction(sample_frames, candidate)
                del candidate
                results.append((fraction, transform_name, rot, flip, scale_name, reciprocal))
                builders[(transform_name, scale_name, reciprocal)] = build
                is_identity = not reciprocal and rot == 0 and flip == 0 and scale_name == "same size"
                if is_identity and fraction <= max_exception_fraction:
                    return _oriented((*results[-1], build()), n_tested=1, is_identity=True)
    if not results:
        raise GainError(
            f"{name}: its size {data.shape[1]}x{data.shape[0]} does not fit movie frames of "
            f"{frame_shape[1]}x{frame_shape[0]} in any orientation, nor at 2x or 1/2 size"
        )
    ranked = sorted(results, key=lambda result: result[0])
    best = ranked[0]
    if best[0] > max_exception_fraction:
        tried = "; ".join(
            f"{r[1]}, {r[4]}{', inverted' if r[5] else ''}: {100 * (1 - r[0]):.2f}%" for r in ranked[:3]
        )
        hint = (
            "this gain does not belong to the movie (another session or detector?) or the movie is not "
            "gain-normalised"
            if best[0] > 0.5
            else "too many values are not counts x this gain"
        )
        raise GainError(
            f"{name}: no orientation makes the movie's values integral counts: values reproduced, best "
            f"first: {tried} (at least {100 * (1 - max_exception_fraction):g}% needed); {hint}"
        )
    winner = builders[(best[1], best[4], best[5])]()
    return _oriented((*best, winner), n_tested=len(results), is_identity=False)


def _oriented(
    result: tuple[float, str, int, int, str, bool, GainArray], *, n_tested: int, is_identity: bool
) -> OrientedGain:
    fraction, transform_name, rot, flip, scale_name, reciprocal, candidate = result
    parts = [transform_name, scale_name]
    if reciprocal:
        parts.append("inverted (the file holds 1/gain)")
    description = (
        f"{', '.join(parts)} (RELION --gain_rot {rot} --gain_flip {flip}); "
        f"{100 * (1 - fraction):.3f}% of the sampled values are integral counts"
    )
    orientation = GainOrientation(
        transform=transform_name,
        relion_gain_rot=rot,
        relion_gain_flip=flip,
        scale=scale_name,
        reciprocal=reciprocal,
        exception_fraction=fraction,
        n_tested=n_tested,
        description=description,
    )
    return OrientedGain(candidate, orientation, is_identity)


# ---------------------------------------------------------------- writing


def _mrc_bytes_equal(path: Path, gain: GainArray) -> bool:
    try:
        existing = read_gain_array(path)
    except EmpCompressError:
        return False
    return existing.shape == gain.shape and bool(
        np.array_equal(existing.view(np.uint32), gain.view(np.uint32))
    )


def write_gain_reference(
    path: str | os.PathLike[str],
    gain: GainArray,
    *,
    overwrite: bool = False,
    pixel_size_angstrom: float | None = None,
) -> str:
    """Write ``gain`` (float32, MRC row order) as a float32 MRC file; returns its sha256.

    The file is written under a temporary name, read back and compared bit for
    bit, then renamed into place. An existing file holding the same gain is
    kept as it is; one holding another gain is an error unless ``overwrite``
    (TIFFs converted with it would no longer restore).
    """
    path = Path(path)
    gain = np.ascontiguousarray(gain, dtype=np.float32)
    if gain.ndim != 2:
        raise GainError(f"{path}: a gain reference is one 2-D image, not shape {gain.shape}")
    if path.exists():
        if not overwrite and _mrc_bytes_equal(path, gain):
            return file_sha256(path)
        if not overwrite:
            raise GainError(
                f"{path}: already exists and holds a different gain; movies converted with it need it "
                f"to restore. Choose another name (or pass overwrite)"
            )
    if not path.parent.is_dir():
        raise GainError(f"{path.parent}: the directory for the gain reference does not exist")
    with temporary_output(path) as temporary:
        with mrcfile.new(temporary, overwrite=True) as handle:
            handle.set_data(gain)
            handle.header.label[0] = GAIN_LABEL
            handle.header.nlabl = 1
            if (
                pixel_size_angstrom is not None
                and np.isfinite(pixel_size_angstrom)
                and pixel_size_angstrom > 0
            ):
                handle.voxel_size = pixel_size_angstrom
        if not _mrc_bytes_equal(temporary, gain):
            raise GainError(
                f"{path}: the written gain reference does not read back bit for bit; disk problem?"
            )
        digest = file_sha256(temporary)
        commit_output(temporary, path)
    return digest


def place_gain_reference(
    gain: GainArray, directory: str | os.PathLike[str], *, name: str = GAIN_REFERENCE_NAME
) -> tuple[Path, str, bool]:
    """Write ``gain`` into ``directory`` as ``name``, or reuse a file there holding the same gain.

    When ``name`` is taken by another gain, the file is named after its content
    (``gain-reference-<sha256 prefix>.mrc``) so that no existing reference is
    replaced. Returns (path, sha256, created).
    """
    directory = Path(directory)
    target = directory / name
    if target.exists() and _mrc_bytes_equal(target, gain):
        return target, file_sha256(target), False
    if not target.exists():
        return target, write_gain_reference(target, gain), True
    with temporary_output(target) as temporary:
        digest = write_gain_reference(temporary, gain)
        stem, suffix = os.path.splitext(name)
        named = directory / f"{stem}-{digest[:12]}{suffix}"
        if named.exists() and file_sha256(named) == digest:
            return named, digest, False
        commit_output(temporary, named)
        return named, digest, True


def place_gain_copy(
    source: str | os.PathLike[str], directory: str | os.PathLike[str]
) -> tuple[Path, str, bool]:
    """Copy a gain file unchanged into ``directory`` (for raw-count movies); (path, sha256, created).

    A file of the same name and content there is reused; one with other
    content makes the copy's name carry its sha256 prefix.
    """
    source, directory = Path(source), Path(directory)
    digest = file_sha256(source)
    target = directory / source.name
    if target.exists() and target.resolve() == source.resolve():
        return target, digest, False
    if target.exists():
        if file_sha256(target) == digest:
            return target, digest, False
        target = directory / f"{source.stem}-{digest[:12]}{source.suffix}"
        if target.exists() and file_sha256(target) == digest:
            return target, digest, False
    with temporary_output(target) as temporary:
        shutil.copyfile(source, temporary)
        if file_sha256(temporary) != digest:
            raise GainError(
                f"{source}: the copy of the gain reference differs from the original; disk problem?"
            )
        commit_output(temporary, target)
    return target, digest, True
