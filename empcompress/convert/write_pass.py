"""One attempt at the one read: the pass that writes the temporary TIFF, and the TIFF kind it writes.

Both conversions (:mod:`.plain`, :mod:`.with_gain`) decide a storage type from sample
frames, then per attempt: the codec and the record (:meth:`OneRead.record_for`), the
TIFF kind (classic or BigTIFF, guessed from the codec trial: :meth:`TiffKind.guessed`),
and the pass (:meth:`OneRead.write`) that reads, hashes and stores every frame and
writes them with the record's placeholder. What cannot be known before the pass starts
the pass again: a frame that outgrows the storage type, strips past a classic TIFF, a
BigTIFF guess whose strips fit a classic TIFF after all (:meth:`PassWritten.fits_classic`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..detect import FrameStats, StorageDecision
from ..encode import Codec, encode_frame_strips, rows_per_strip
from ..mrc import MrcHeader, MrcMovie
from ..readpass import FrameSample, FrameStore, ProgressCallback, SourcePass
from ..write import bigtiff_expected, classic_strip_budget_bytes, write_tiff_attempt
from .codec_trial import resolve_codec
from .tiff_record import TiffRecord

#: At most this many attempts at the one read (a wider storage type, the other TIFF kind).
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Written:
    """What a conversion left in the temporary file, its record filled in."""

    sha256: str  # of the source bytes read
    decision: StorageDecision
    codec: Codec
    trial_sizes: dict[str, int]


@dataclass(frozen=True)
class TiffKind:
    """The TIFF kind the next attempt writes, from what the attempts before it found."""

    bigtiff: bool | None = None  # None: guessed from the codec trial
    #: the record length a classic TIFF's strip budget leaves room for (None: the placeholder's)
    classic_extra_bytes: int | None = None

    def guessed(
        self,
        trial: npt.NDArray[np.generic],
        record: TiffRecord,
        trial_sizes: dict[str, int],
        description: str,
    ) -> TiffKind:
        """This kind, BigTIFF or not guessed from the trial frame when not known yet."""
        if self.bigtiff is not None:
            return self
        guess = predicted_bigtiff(trial, record, trial_sizes, description_bytes=len(description))
        return replace(self, bigtiff=guess)


def predicted_bigtiff(
    trial: npt.NDArray[np.generic], record: TiffRecord, trial_sizes: dict[str, int], *, description_bytes: int
) -> bool:
    """Whether the strips will clearly not fit a classic TIFF, estimated from the trial frame.

    Only a guess to spare a second read: a wrong guess costs one more pass, never a wrong
    file (the kind is checked against the real strip sizes afterwards).
    """
    header, rows = record.header, record.rows_per_strip
    trial_bytes = trial_sizes.get(record.codec.label)
    if trial_bytes is None:
        trial_bytes = sum(len(strip) for strip in encode_frame_strips(trial, record.codec, rows=rows))
    estimate = trial_bytes * (header.ny / max(1, trial.shape[0])) * header.nz
    budget = classic_strip_budget_bytes(
        n_frames=header.nz, n_strips_per_frame=record.n_strips_per_frame, extra_bytes=description_bytes
    )
    return estimate > 1.1 * budget


@dataclass(frozen=True)
class PassWritten:
    """What one :meth:`OneRead.write` read and wrote."""

    sha256: str  # of the source bytes read
    stats: FrameStats  # of every frame
    bigtiff: bool
    total_strip_bytes: int
    n_frames: int
    n_strips_per_frame: int

    def fits_classic(self, description: str) -> bool:
        """Written as BigTIFF, but the strips fit a classic TIFF with the record ``description``."""
        return self.bigtiff and not bigtiff_expected(
            total_strip_bytes=self.total_strip_bytes,
            n_frames=self.n_frames,
            n_strips_per_frame=self.n_strips_per_frame,
            extra_bytes=len(description),
        )


@dataclass(frozen=True)
class OneRead:
    """What a conversion fixes for all its attempts: the source, the temporary file, the options."""

    source: Path
    movie: MrcMovie
    temporary: Path
    header_bytes: bytes
    extended_header_bytes: bytes
    codec: str  # as the user asked: a name or "auto"
    level: int | None
    threads: int
    progress: ProgressCallback | None

    def record_for(
        self, trial: npt.NDArray[np.generic], decision: StorageDecision
    ) -> tuple[TiffRecord, dict[str, int]]:
        """The record of an attempt storing ``trial``'s type, the codec chosen on it, the trial's sizes."""
        chosen, trial_sizes = resolve_codec(self.movie, trial, decision, codec=self.codec, level=self.level)
        header = self.movie.header
        rows = rows_per_strip(frame_shape=header.frame_shape, itemsize=trial.dtype.itemsize)
        record = TiffRecord(
            self.source, header, self.header_bytes, self.extended_header_bytes, trial.dtype, chosen, rows
        )
        return record, trial_sizes

    def write(
        self,
        record: TiffRecord,
        kind: TiffKind,
        *,
        store: FrameStore,
        samples: Sequence[FrameSample],
        description: str,
    ) -> PassWritten:
        """Read, hash and ``store`` every frame in one pass; write them to the temporary file as ``kind``.

        ``samples`` are taken from memory when the pass reaches them; ``description`` is the
        record's placeholder. Raises :class:`~empcompress.readpass.DecisionOutgrownError` when
        a frame does not fit the store's type and :class:`~empcompress.write.ClassicTiffOverflowError`
        when the strips outgrow a classic TIFF: the caller reads again, wider.
        """
        assert kind.bigtiff is not None, "guess the kind first"
        header = self.movie.header
        with SourcePass(
            self.movie,
            store=store,
            samples=samples,
            threads=self.threads,
            progress=self.progress,
            header_bytes=self.header_bytes,
            extended_header_bytes=self.extended_header_bytes,
        ) as read:
            total_strip_bytes = write_tiff_attempt(
                self.temporary,
                read.stored_frames(),
                bigtiff=kind.bigtiff,
                classic_extra_bytes=kind.classic_extra_bytes,
                n_frames=header.nz,
                frame_shape=header.frame_shape,
                dtype=record.stored_dtype,
                codec=record.codec,
                rows_per_strip=record.rows_per_strip,
                description=description,
                pixel_size_angstrom=_tiff_pixel_size_angstrom(header),
                threads=self.threads,
            )
            sha256, stats = read.sha256, read.stats
        return PassWritten(
            sha256, stats, kind.bigtiff, total_strip_bytes, header.nz, record.n_strips_per_frame
        )


def _tiff_pixel_size_angstrom(header: MrcHeader) -> float:
    """The pixel size the TIFF's resolution tags get (0: none, for a header that holds no number)."""
    return header.pixel_size_angstrom if np.isfinite(header.pixel_size_angstrom) else 0.0
