"""The plain conversion (no gain): sample the middle frame, then one pass that reads, hashes and encodes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..detect import FrameStats, decide_storage
from ..readpass import DecisionOutgrownError, cast_store, read_first_frame_ahead, read_sample
from ..write import ClassicTiffOverflowError, replace_description
from .codec_trial import trial_frame
from .write_pass import MAX_ATTEMPTS, OneRead, TiffKind, Written


def write_one_read(conversion: OneRead) -> Written:
    """Sample, then read, hash and encode the whole movie in one pass; fill in the record."""
    movie = conversion.movie
    header = movie.header
    seen: FrameStats | None = None  # frames that outgrew an earlier decision
    kind = TiffKind()
    for _ in range(MAX_ATTEMPTS):
        sample = read_sample(movie)
        read_first_frame_ahead(movie, threads=conversion.threads, samples=[sample])  # while the trial runs
        known = sample.stats if seen is None else seen.merge(sample.stats)
        decision = decide_storage(source_dtype=header.value_dtype, stats=known)
        stored_dtype = np.dtype(decision.stored_dtype)
        trial = trial_frame(movie, movie.values_from_raw(sample.raw), stored_dtype)
        record, trial_sizes = conversion.record_for(trial, decision)
        placeholder = record.placeholder(decision)
        kind = kind.guessed(trial, record, trial_sizes, placeholder)
        del trial
        store = cast_store(header, decision, known)
        try:  # the pass lets go of the sample frame once it reaches it
            written = conversion.write(record, kind, store=store, samples=[sample], description=placeholder)
        except DecisionOutgrownError as grown:  # a later frame needs a wider type: read again
            seen = grown.stats if seen is None else seen.merge(grown.stats)
            kind = replace(kind, bigtiff=None)
            continue
        except ClassicTiffOverflowError:  # the guess was classic, the strips do not fit: read again
            kind = replace(kind, bigtiff=True)
            continue
        final = decide_storage(source_dtype=header.value_dtype, stats=written.stats)
        if (final.stored_dtype, final.is_integer) != (decision.stored_dtype, decision.is_integer):
            raise RuntimeError(
                f"{conversion.source}: the storage type changed after the pass ({decision} -> {final})"
            )
        description = record.text(written.sha256, final)
        if written.fits_classic(description):
            # guessed BigTIFF, but the strips fit a classic TIFF with this record: write that, with the
            # classic budget of the final record (the placeholder is longer)
            kind = TiffKind(bigtiff=False, classic_extra_bytes=len(description))
            continue
        replace_description(conversion.temporary, description)
        return Written(written.sha256, final, record.codec, trial_sizes)
    raise RuntimeError(
        f"{conversion.source}: no storage type and TIFF kind settled after {MAX_ATTEMPTS} passes"
    )
