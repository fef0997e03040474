"""The codec: resolved from the user's choice, ``auto`` by a trial on a sample frame's bands."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .. import kernels
from ..detect import StorageDecision
from ..encode import Codec, choose_codec, make_codec, rows_per_strip
from ..errors import InputError
from ..mrc import MrcMovie


def trial_frame(
    movie: MrcMovie,
    values: npt.NDArray[np.generic],
    stored_dtype: np.dtype,
    gain: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.generic]:
    """Every 4th row band of one frame's values (TIFF row order), in storage type (counts under
    ``gain`` when given).

    Only those bands are cast, each straight into its place in the trial: no stored frame of the
    whole frame's size is made (94 MB of fresh pages for a super-resolution frame).
    """
    header = movie.header
    ny = header.ny
    rows = rows_per_strip(frame_shape=header.frame_shape, itemsize=np.dtype(stored_dtype).itemsize)
    starts = range(0, ny, 4 * rows)
    heights = [min(rows, ny - start) for start in starts]
    out = np.empty((sum(heights), header.nx), dtype=stored_dtype)
    at = 0
    for start, height in zip(starts, heights, strict=True):
        # TIFF rows start..start + height are MRC rows ny - start - height..ny - start, upside down
        source_rows = slice(ny - start - height, ny - start)
        band = out[at : at + height]
        if gain is not None:
            kernels.gain_counts(values[source_rows], gain[source_rows], band, max_exceptions=0)
        else:
            kernels.flip_cast(values[source_rows], band)
        at += height
    return out


def resolve_codec(
    movie: MrcMovie,
    trial: npt.NDArray[np.generic],
    decision: StorageDecision,
    *,
    codec: str,
    level: int | None,
) -> tuple[Codec, dict[str, int]]:
    """The codec named by ``codec`` (``auto``: the smallest on ``trial``) and the trial's sizes by label."""
    try:
        if codec == "auto":
            return choose_codec([trial], is_integer=decision.is_integer, level=level)
        return make_codec(codec, level=level, is_integer=decision.is_integer), {}
    except ValueError as error:
        raise InputError(f"{movie.path}: {error}") from None
