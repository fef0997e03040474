"""Writing multi-page TIFF stacks with tifffile, and the temporary-file discipline.

One page per frame, strips (several per frame), SampleFormat always set,
MINISBLACK, no private tags; our JSON record goes in the first page's
ImageDescription. The file is classic TIFF whenever the finished file fits in
4 GiB (old libtiff builds, MotionCor2 of the libtiff 3 era and RELION's own
converter know nothing else): encoded strips are counted as they are written,
and only when their total would pass the classic limit is the file written again
as BigTIFF (:func:`bigtiff_expected` is the one rule; verification checks it).

Frame lifetime: the writer is done with frame ``i`` (every strip encoded into bytes of its
own) before it asks for frame ``i + FRAMES_IN_FLIGHT``, so a producer may fill that many
buffers in turn (the read pass does: frames of 94-377 MB are not allocated afresh).
Enforced while writing: asking for a frame sooner raises ``RuntimeError``.

Outputs are written to a hidden temporary name beside the final one and only
renamed into place after verification (see :mod:`empcompress.files`, re-exported
here), so a file under its final name is always complete and verified.
"""

from __future__ import annotations

import functools
import os
import struct
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import numpy.typing as npt
import tifffile

from . import __version__
from .encode import Codec, StripEncoder
from .files import TEMP_MARKER, commit_output, temporary_output

__all__ = [
    "CLASSIC_TIFF_LIMIT_BYTES",
    "FRAMES_IN_FLIGHT",
    "needs_bigtiff",
    "bigtiff_expected",
    "classic_strip_budget_bytes",
    "write_tiff_stack",
    "write_tiff_attempt",
    "replace_description",
    "ClassicTiffOverflowError",
    "temporary_output",
    "commit_output",
    "TEMP_MARKER",
]

CLASSIC_TIFF_LIMIT_BYTES = 2**32 - 1
#: Frames a producer must keep unchanged for the writer: frame ``i``'s array may be reused for frame
#: ``i + FRAMES_IN_FLIGHT`` (the strip encoder holds one frame in flight ahead of the strips it yields).
FRAMES_IN_FLIGHT = 2
SAMPLE_FORMAT_TAG = 339
SAMPLE_FORMAT_UINT = 1
PLACEHOLDER_TAG = 340  # SMinSampleValue, renamed to SampleFormat after writing
#: Frame sizes some readers take for packed 4-bit data whatever the TIFF says.
PACKED_4BIT_LOOKALIKE_SHAPES = {(8184, 5760), (11520, 4092), (7676, 3710), (7420, 3838)}


def classic_strip_budget_bytes(*, n_frames: int, n_strips_per_frame: int, extra_bytes: int) -> int:
    """How many bytes of encoded strips a classic TIFF of ours can hold (32-bit offsets).

    What is not strips: the header, the record and other tag text (``extra_bytes``), and
    per page an IFD with its strip offset and byte count arrays; a generous margin is
    kept so that the rule never depends on tifffile's exact placement.
    """
    overhead = extra_bytes + n_frames * (4096 + 8 * n_strips_per_frame) + (1 << 20)
    return max(0, CLASSIC_TIFF_LIMIT_BYTES - overhead)


def bigtiff_expected(
    *, total_strip_bytes: int, n_frames: int, n_strips_per_frame: int, extra_bytes: int
) -> bool:
    """Whether our writer makes a BigTIFF: only when the strips do not fit a classic TIFF."""
    budget = classic_strip_budget_bytes(
        n_frames=n_frames, n_strips_per_frame=n_strips_per_frame, extra_bytes=extra_bytes
    )
    return total_strip_bytes > budget


def needs_bigtiff(
    *, n_frames: int, frame_shape: tuple[int, int], itemsize: int, codec: Codec, extra_bytes: int
) -> bool:
    """The rule of empcompress 0.1 (worst-case encoded size), kept to verify files it wrote."""
    raw_bytes = n_frames * frame_shape[0] * frame_shape[1] * itemsize
    overhead = extra_bytes + n_frames * 4096 + (1 << 20)
    return raw_bytes * codec.worst_case_expansion + overhead > CLASSIC_TIFF_LIMIT_BYTES


class ClassicTiffOverflowError(Exception):
    """The encoded strips will not fit a classic TIFF (the file must be written again as BigTIFF)."""


class _StripCounter:
    """Passes strips through, adding up their sizes; past ``budget_bytes`` (if any) raises overflow."""

    def __init__(self, budget_bytes: int | None) -> None:
        self.budget_bytes = budget_bytes
        self.total_bytes = 0
        self.n_strips = 0

    def count(self, strips: Iterable[bytes]) -> Iterator[bytes]:
        for strip in strips:
            self.total_bytes += len(strip)
            self.n_strips += 1
            if self.budget_bytes is not None and self.total_bytes > self.budget_bytes:
                raise ClassicTiffOverflowError()
            yield strip


def looks_like_packed_4bit(frame_shape: tuple[int, int], dtype: np.dtype) -> bool:
    """True for 8-bit frames of a size that some readers treat as packed 4-bit."""
    ny, nx = frame_shape
    return np.dtype(dtype).itemsize == 1 and (
        (ny, nx) in PACKED_4BIT_LOOKALIKE_SHAPES or (nx, ny) in PACKED_4BIT_LOOKALIKE_SHAPES
    )


def write_tiff_stack(
    path: str | os.PathLike[str],
    frames: Iterable[npt.NDArray[np.generic]] | Callable[[], Iterable[npt.NDArray[np.generic]]],
    *,
    n_frames: int,
    frame_shape: tuple[int, int],
    dtype: np.dtype,
    codec: Codec,
    rows_per_strip: int,
    description: str,
    pixel_size_angstrom: float,
    threads: int,
) -> bool:
    """Write ``frames`` (TIFF row order, ``dtype``) as a multi-page TIFF at ``path``; True if BigTIFF.

    Classic TIFF first; if the encoded strips would not fit, the file is written again
    as BigTIFF, which needs the frames again: pass ``frames`` as a function returning
    a fresh iterable (an iterable that cannot be read twice raises ``ValueError`` then).
    """
    attempt = functools.partial(
        write_tiff_attempt,
        path,
        dtype=dtype,
        codec=codec,
        rows_per_strip=rows_per_strip,
        description=description,
        pixel_size_angstrom=pixel_size_angstrom,
        threads=threads,
        n_frames=n_frames,
        frame_shape=frame_shape,
    )
    try:
        attempt(frames() if callable(frames) else frames, bigtiff=False)
        return False
    except ClassicTiffOverflowError:
        if not callable(frames):
            raise ValueError(f"{path}: too large for classic TIFF; pass the frames as a function") from None
        attempt(frames(), bigtiff=True)
        return True


def write_tiff_attempt(
    path: str | os.PathLike[str],
    frames: Iterable[npt.NDArray[np.generic]],
    *,
    bigtiff: bool,
    dtype: np.dtype,
    codec: Codec,
    rows_per_strip: int,
    description: str,
    pixel_size_angstrom: float,
    threads: int,
    n_frames: int,
    frame_shape: tuple[int, int],
    classic_extra_bytes: int | None = None,
) -> int:
    """Write one TIFF of the given kind; the total bytes of encoded strips.

    A classic TIFF raises :class:`ClassicTiffOverflowError` as soon as the strips would
    pass :func:`classic_strip_budget_bytes` for ``description``'s length (or
    ``classic_extra_bytes``: the length of the record that will replace a longer
    placeholder, see :func:`replace_description`); the caller writes the file again as
    BigTIFF. Every page's SampleFormat placeholder is renamed.

    ``frames`` may reuse a frame's array for the frame :data:`FRAMES_IN_FLIGHT` after it (checked).
    """
    dtype = np.dtype(dtype)
    n_strips_per_frame = -(-frame_shape[0] // rows_per_strip)
    extra_bytes = len(description) if classic_extra_bytes is None else classic_extra_bytes
    budget = classic_strip_budget_bytes(
        n_frames=n_frames, n_strips_per_frame=n_strips_per_frame, extra_bytes=extra_bytes
    )
    counter = _StripCounter(None if bigtiff else budget)
    _write(
        path,
        frames,
        counter=counter,
        bigtiff=bigtiff,
        dtype=dtype,
        codec=codec,
        rows_per_strip=rows_per_strip,
        description=description,
        pixel_size_angstrom=pixel_size_angstrom,
        threads=threads,
        n_frames=n_frames,
        frame_shape=frame_shape,
    )
    if dtype.kind == "u":
        _rename_placeholder_tags(path)
    return counter.total_bytes


def replace_description(path: str | os.PathLike[str], description: str) -> None:
    """Replace the first page's ImageDescription in place with ``description``, no longer than it.

    The one-read conversion writes its record before the source's sha256 and statistics
    are known: with placeholders, in a description at least as long as the final one.
    The new text (and its NUL) overwrites the old value, the rest of the old value is
    zeroed, and the tag's count is set to the new length. Verification reads the result.
    """
    text = description.encode("ascii") + b"\0"
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages.first
        tag = page.tags.get(270) if isinstance(page, tifffile.TiffPage) else None
        if tag is None or tag.dtype != 2:
            raise RuntimeError(f"{path}: no ImageDescription on the first page to replace")
        entry_offset, value_offset, old_count, bigtiff = (
            tag.offset,
            tag.valueoffset,
            tag.count,
            tiff.is_bigtiff,
        )
    if len(text) > old_count:
        raise RuntimeError(
            f"{path}: the record ({len(text)} bytes) is longer than its placeholder ({old_count})"
        )
    inline = 8 if bigtiff else 4
    if old_count <= inline or len(text) <= inline:
        raise RuntimeError(f"{path}: a record short enough to lie inside its tag entry")
    with open(path, "r+b") as handle:
        handle.seek(value_offset)
        handle.write(text + b"\0" * (old_count - len(text)))
        handle.seek(entry_offset + 4)
        handle.write(struct.pack("<Q" if bigtiff else "<I", len(text)))


def _write(
    path: str | os.PathLike[str],
    frames: Iterable[npt.NDArray[np.generic]],
    *,
    counter: _StripCounter,
    bigtiff: bool,
    dtype: np.dtype,
    codec: Codec,
    rows_per_strip: int,
    description: str,
    pixel_size_angstrom: float,
    threads: int,
    n_frames: int,
    frame_shape: tuple[int, int],
) -> None:
    """One attempt: classic TIFF (overflow checked by ``counter``) or BigTIFF."""
    resolution = None
    pixels_per_cm = 1e8 / pixel_size_angstrom if pixel_size_angstrom > 0 else 0.0
    if 0 < pixels_per_cm < 2**32 - 1:  # a TIFF rational cannot hold more (nonsense header values)
        resolution = (pixels_per_cm, pixels_per_cm)
    with (
        StripEncoder(codec, rows=rows_per_strip, threads=threads) as encoder,
        tifffile.TiffWriter(path, bigtiff=bigtiff, byteorder="<") as writer,
    ):
        n_strips_per_frame = -(-frame_shape[0] // rows_per_strip)
        checked = _checked(frames, frame_shape, dtype, counter=counter, n_strips_per_frame=n_strips_per_frame)
        strips = counter.count(encoder.encode_frames(checked))
        writer.write(
            strips,
            shape=(n_frames, *frame_shape),
            dtype=dtype,
            photometric="minisblack",
            compression=codec.tiff_compression,
            predictor=codec.predictor if codec.predictor != 1 else None,
            rowsperstrip=rows_per_strip,
            description=description,
            metadata=None,
            software=f"empcompress {__version__}",
            resolution=resolution,
            resolutionunit="CENTIMETER" if resolution else None,
            extratags=[(PLACEHOLDER_TAG, "H", 1, SAMPLE_FORMAT_UINT, False)] if dtype.kind == "u" else None,
        )


def _rename_placeholder_tags(path: str | os.PathLike[str]) -> None:
    """Turn every page's placeholder tag 340 into SampleFormat (339) = 1 (unsigned).

    tifffile leaves SampleFormat out for unsigned data (1 is TIFF's default) and
    will not write it as an extra tag, but cryo-EM readers want it present. We
    write SMinSampleValue (340, unused by us, so sorted where 339 belongs) with
    value 1 and rename its entry in place. Verification then reads the result.
    """
    with tifffile.TiffFile(path) as tiff:
        pages = [tiff.pages[index] for index in range(len(tiff.pages))]
        if any(not isinstance(page, tifffile.TiffPage) or SAMPLE_FORMAT_TAG in page.tags for page in pages):
            raise RuntimeError(f"{path}: unexpected page structure; SampleFormat placeholder not found")
        offsets = [page.tags[PLACEHOLDER_TAG].offset for page in pages if isinstance(page, tifffile.TiffPage)]
    code = struct.pack("<H", SAMPLE_FORMAT_TAG)
    with open(path, "r+b") as handle:
        for offset in offsets:
            handle.seek(offset)
            handle.write(code)


def _checked(
    frames: Iterable[npt.NDArray[np.generic]],
    frame_shape: tuple[int, int],
    dtype: np.dtype,
    *,
    counter: _StripCounter,
    n_strips_per_frame: int,
) -> Iterator[npt.NDArray[np.generic]]:
    """``frames``, each checked for shape and type, and taken only once the frame
    :data:`FRAMES_IN_FLIGHT` before it has left the encoder (every strip counted), so that
    the producer may reuse its buffer."""
    iterator = iter(frames)
    index = 0
    while True:
        done = max(0, index - FRAMES_IN_FLIGHT + 1)  # frames that must be out of the encoder by now
        if counter.n_strips < done * n_strips_per_frame:
            raise RuntimeError(
                f"the encoder asked for frame {index} before it was done with frame {done - 1}; "
                f"a producer's reused buffer would be overwritten (FRAMES_IN_FLIGHT = {FRAMES_IN_FLIGHT})"
            )
        frame = next(iterator, None)
        if frame is None:
            return
        if frame.shape != frame_shape or frame.dtype != dtype:
            raise ValueError(f"frame of shape {frame.shape} {frame.dtype}, expected {frame_shape} {dtype}")
        yield frame
        index += 1
