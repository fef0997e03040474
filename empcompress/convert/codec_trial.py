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
    """Every 4th row band of one frame's values, in storage type (counts under ``gain`` when given)."""
    out = np.empty(movie.header.frame_shape, dtype=stored_dtype)
    if gain is not None:
        kernels.gain_counts(values, gain, out)
    else:
        kernels.flip_cast(values, out)
    rows = rows_per_strip(frame_shape=movie.header.frame_shape, itemsize=out.dtype.itemsize)
    bands = [out[start : start + rows] for start in range(0, out.shape[0], 4 * rows)]
    return np.ascontiguousarray(np.concatenate(bands))


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
