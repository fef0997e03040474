"""Compare a set's sampled movies' own estimates in bounded memory: kept in scratch files, read by row bands.

``gain estimate`` (:func:`.sets.estimate_set_gain`) compares up to
:data:`~.sets.SEED_SAMPLE_MOVIES` movies' own estimates, every pair in the 8
orientations (:func:`.grouping.compare_estimates`). Held in memory that is 5
bytes a pixel a movie: 3.8 GB for 8 K3 super-resolution movies. Instead, each
estimate is written as it is made to a scratch file in the one form the
comparison needs (:class:`EstimateFiles`): per pixel, the gain's float32 bits
where the pixel is reliable and 0 elsewhere (4 bytes a pixel; a reliable gain
is positive, so its bits are never 0), and for square frames the same
transposed too (the quarter turns and transposes read columns). The
comparison then reads the estimates by row bands: for each band, the rows of
every estimate that the band of each orientation comes from
(:func:`.grouping.source_region`). Both counts a verdict needs (pixels both
estimates confirm, and of those the equal ones) add up over bands, and the
verdict is made from them by :func:`.grouping.comparison_from_counts`, as
:func:`.grouping.compare_estimates` makes it: the comparisons are the same.

Memory: one estimate while it is written, then :data:`COMPARE_BUFFER_BYTES` of
bands, whatever the number of movies (their bands get shorter). Disk: 4 bytes
a pixel a movie (8 for square frames) in files under ``scratch_dir`` (the
system's temporary directory, ``TMPDIR``, when None) whose names are removed as
soon as they are made: the system frees their space when they are closed or
the process ends, even killed (SIGKILL, an out-of-memory kill, a batch job's
end), so nothing is left behind. The space is checked before any estimate is made.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..errors import GainError
from ..gainref import ORIENTATION_CODES, TRANSFORMS
from .estimate import GainEstimate, Rows
from .grouping import Comparison, compared_orientations, comparison_from_counts, source_region

__all__ = ["COMPARE_BUFFER_BYTES", "EstimateFiles", "scratch_bytes_needed", "compare_sampled_estimates"]

#: What the bands of all the estimates compared hold at once (with their masks).
COMPARE_BUFFER_BYTES = 256 << 20
#: Pixels packed and written at a time.
_WRITE_CHUNK_PIXELS = 1 << 22
_ITEM_BYTES = 4  # the packed form: uint32 a pixel
_TRANSFORM_OF = {ORIENTATION_CODES[name]: transform for name, _, _, transform in TRANSFORMS}

Region = tuple[Rows | None, Rows | None]  # (source rows, source columns), as source_region gives it


def scratch_bytes_needed(frame_shapes: Sequence[tuple[int, int]]) -> int:
    """Disk space :class:`EstimateFiles` takes for estimates of these frame shapes."""
    return sum(_ITEM_BYTES * ny * nx * (2 if ny == nx else 1) for ny, nx in frame_shapes)


@dataclass(frozen=True)
class _Stored:
    shape: tuple[int, int]
    rows: io.FileIO  # packed, rows as in the estimate
    columns: io.FileIO | None  # packed and transposed: rows of this are columns of the estimate


class EstimateFiles:
    """Own estimates of movies kept in scratch files (:meth:`add`), compared pairwise (:meth:`compare`).

    A context manager: the files are closed (and their space freed) on leaving it.
    """

    def __init__(
        self,
        frame_shapes: Sequence[tuple[int, int]],
        *,
        scratch_dir: str | os.PathLike[str] | None = None,
        buffer_bytes: int = COMPARE_BUFFER_BYTES,
    ) -> None:
        """Room for estimates of ``frame_shapes`` in nameless files under ``scratch_dir``.

        Raises :class:`GainError` when ``scratch_dir`` is not a directory or has
        too little free space for them (before anything is written).
        """
        if buffer_bytes < 1:
            raise ValueError(f"the comparison's buffer must be at least 1 byte, not {buffer_bytes}")
        parent = Path(scratch_dir) if scratch_dir is not None else Path(tempfile.gettempdir())
        if not parent.is_dir():
            raise GainError(f"{parent}: not a directory; the sampled movies' estimates are kept in one")
        needed = scratch_bytes_needed(frame_shapes)
        free = shutil.disk_usage(parent).free
        if needed > free:
            raise GainError(
                f"{parent}: {free / 1e9:.2f} GB free, but comparing the {len(frame_shapes)} sampled movies' "
                f"own gain estimates keeps {needed / 1e9:.2f} GB there while it runs; free some space or "
                "point TMPDIR at a directory with room"
            )
        self.buffer_bytes = buffer_bytes
        self._parent = parent
        self._stored: list[_Stored] = []

    def __enter__(self) -> EstimateFiles:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the scratch files, which frees their space (idempotent; every file is closed even
        when closing one fails, and the first failure is raised after)."""
        handles = [handle for stored in self._stored for handle in (stored.rows, stored.columns) if handle]
        self._stored = []
        with contextlib.ExitStack() as closing:
            for handle in handles:
                closing.callback(handle.close)

    def __len__(self) -> int:
        return len(self._stored)

    def add(self, estimate: GainEstimate) -> int:
        """Keep ``estimate`` (its reliable pixels' gains) on disk; its index among those added."""
        index = len(self._stored)
        ny, nx = estimate.gain.shape
        if estimate.gain.dtype != np.float32 or estimate.status.shape != (ny, nx):
            raise ValueError("an estimate to keep has a float32 gain and a status of its shape")
        rows = self._write(f"{index}.rows", _packed_rows(estimate))
        try:
            columns = self._write(f"{index}.columns", _packed_columns(estimate)) if ny == nx else None
        except BaseException:
            rows.close()  # (not stored yet: close() would not see it)
            raise
        self._stored.append(_Stored((ny, nx), rows, columns))
        return index

    def _write(self, name: str, chunks: Iterator[npt.NDArray[np.uint32]]) -> io.FileIO:
        """A new scratch file holding ``chunks``, open for reading; its name is removed at once."""
        shown = self._parent / f"empcompress-gain-estimate-{name}"
        try:
            descriptor, path = tempfile.mkstemp(prefix=f"{shown.name}-", dir=self._parent)
        except OSError as error:
            raise self._not_kept(shown, error) from None
        handle: io.FileIO | None = None
        try:
            os.unlink(path)  # nameless from now on: nothing is left behind, however the process ends
            handle = io.FileIO(descriptor, "r+b")  # (closes the descriptor when closed)
            handle.name = f"{path} (a scratch file, removed)"
            for chunk in chunks:
                view = chunk.data.cast("B")
                while view:
                    written = handle.write(view)
                    if not written:
                        raise OSError(errno.EIO, "the write stopped short")
                    view = view[written:]
            handle.seek(0)
        except BaseException as error:
            if handle is not None:
                handle.close()
            else:
                os.close(descriptor)
            with contextlib.suppress(OSError):  # (gone already unless the unlink itself failed)
                os.unlink(path)
            if isinstance(error, OSError):
                raise self._not_kept(Path(path), error) from None
            raise
        return handle  # closed by close()

    @staticmethod
    def _not_kept(path: Path, error: OSError) -> GainError:
        return GainError(
            f"{path}: could not keep a sampled movie's own gain estimate there "
            f"({error.strerror or error}); free some space or point TMPDIR at a directory with room"
        )

    def compare(self) -> list[Comparison]:
        """:func:`~.grouping.compare_estimates` of every pair (i < j) of the estimates, in that order.

        Estimates of different frame shapes are never compared (unknown), as there.
        """
        n = len(self._stored)
        counts: dict[tuple[int, int], dict[str, list[int]]] = {}
        by_shape: dict[tuple[int, int], list[int]] = {}
        for index, stored in enumerate(self._stored):
            by_shape.setdefault(stored.shape, []).append(index)
        for shape, members in by_shape.items():
            if len(members) > 1:
                counts.update(self._count_by_bands(shape, members))
        comparisons = []
        for i in range(n):
            for j in range(i + 1, n):
                pair = counts.get((i, j), {})
                summed = [(code, total[0], total[1]) for code, total in pair.items()]
                comparisons.append(comparison_from_counts(summed, indices=(i, j)))
        return comparisons

    def _count_by_bands(
        self, shape: tuple[int, int], members: list[int]
    ) -> dict[tuple[int, int], dict[str, list[int]]]:
        """Per pair of ``members`` and orientation: [both confirm, equal] summed over row bands."""
        ny, nx = shape
        codes = compared_orientations(shape)
        n_regions = 4 if ny == nx else 2  # same rows, mirrored rows; (square) columns, mirrored columns
        # a band pixel: each member's regions (4 bytes) with their reliable masks (1), two masks of a pair
        per_row = nx * (len(members) * n_regions * (_ITEM_BYTES + 1) + 2)
        band_rows = max(1, self.buffer_bytes // per_row)
        pairs = [(i, j) for position, i in enumerate(members) for j in members[position + 1 :]]
        totals = {pair: {code: [0, 0] for code in codes} for pair in pairs}
        both = np.empty(band_rows * nx, dtype=bool)
        equal = np.empty(band_rows * nx, dtype=bool)
        for start in range(0, ny, band_rows):
            band = (start, min(ny, start + band_rows))
            regions = {code: source_region(code, shape, band) for code in codes}
            own = regions["identity"]  # the band's own rows: the second estimate of each pair
            values: dict[tuple[int, Region], npt.NDArray[np.uint32]] = {}
            confirmed: dict[tuple[int, Region], npt.NDArray[np.bool_]] = {}
            for member in members:
                for region in dict.fromkeys(regions.values()):
                    values[member, region] = self._read_region(member, region)
                    confirmed[member, region] = values[member, region] != 0
            size = (band[1] - band[0]) * nx
            both_band = both[:size].reshape(band[1] - band[0], nx)
            equal_band = equal[:size].reshape(band[1] - band[0], nx)
            for i, j in pairs:
                second, second_confirmed = values[j, own], confirmed[j, own]
                for code in codes:
                    turn = _TRANSFORM_OF[code]
                    region = regions[code]
                    first = turn(values[i, region])  # type: ignore[arg-type]
                    np.logical_and(turn(confirmed[i, region]), second_confirmed, out=both_band)  # type: ignore[arg-type]
                    np.equal(first, second, out=equal_band)
                    np.logical_and(equal_band, both_band, out=equal_band)
                    total = totals[i, j][code]
                    total[0] += int(np.count_nonzero(both_band))
                    total[1] += int(np.count_nonzero(equal_band))
            del values, confirmed
        return totals

    def _read_region(self, index: int, region: Region) -> npt.NDArray[np.uint32]:
        """The packed estimate's pixels of ``region``: whole rows, or whole columns (the transposed file)."""
        stored = self._stored[index]
        ny, nx = stored.shape
        rows, columns = region
        if columns is None:
            start, stop = rows if rows is not None else (0, ny)
            return _read_rows(stored.rows, start, stop, nx)
        assert stored.columns is not None  # columns are read only for square frames
        start, stop = columns
        return _read_rows(stored.columns, start, stop, ny).T


def _read_rows(handle: io.FileIO, start: int, stop: int, width: int) -> npt.NDArray[np.uint32]:
    out = np.empty((stop - start, width), dtype=np.uint32)
    view = out.data.cast("B")
    handle.seek(start * width * _ITEM_BYTES)
    done = 0
    while done < len(view):
        n = handle.readinto(view[done:])
        if not n:
            raise GainError(
                f"{handle.name}: a scratch file of gain estimates ended early (changed by another program?)"
            )
        done += n
    return out


def _packed(gain: npt.NDArray[np.float32], status: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint32]:
    reliable = status == kernels.GAIN_RELIABLE
    bits = gain.view(np.uint32)
    if np.count_nonzero(reliable & (bits == 0)):
        raise GainError("a reliable pixel of a gain estimate has gain +0.0: not a finalized estimate")
    return np.where(reliable, bits, np.uint32(0))


def _packed_rows(estimate: GainEstimate) -> Iterator[npt.NDArray[np.uint32]]:
    ny, nx = estimate.gain.shape
    step = max(1, _WRITE_CHUNK_PIXELS // max(1, nx))
    for start in range(0, ny, step):
        yield _packed(estimate.gain[start : start + step], estimate.status[start : start + step])


def _packed_columns(estimate: GainEstimate) -> Iterator[npt.NDArray[np.uint32]]:
    ny, nx = estimate.gain.shape
    step = max(1, _WRITE_CHUNK_PIXELS // max(1, ny))
    for start in range(0, nx, step):
        packed = _packed(estimate.gain[:, start : start + step], estimate.status[:, start : start + step])
        yield np.ascontiguousarray(packed.T)


def compare_sampled_estimates(
    paths: Sequence[str],
    estimate_of: Callable[[str], GainEstimate],
    frame_shapes: Sequence[tuple[int, int]],
    *,
    scratch_dir: str | os.PathLike[str] | None = None,
    buffer_bytes: int = COMPARE_BUFFER_BYTES,
) -> list[Comparison]:
    """Every pair's comparison of the movies' own estimates (``estimate_of``), one estimate held at a time.

    The same as ``[compare_estimates(e[i], e[j], indices=(i, j)) for i < j]``
    over ``e = [estimate_of(path) for path in paths]``. ``frame_shapes`` are the
    movies' (from their headers: the scratch space is checked first).
    """
    with EstimateFiles(frame_shapes, scratch_dir=scratch_dir, buffer_bytes=buffer_bytes) as files:
        for path in paths:
            estimate = estimate_of(path)
            files.add(estimate)
            del estimate  # not two at once
        return files.compare()
