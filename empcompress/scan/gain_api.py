"""Whether the gain functions are available to the scan and the pipeline (see :func:`gain_support`)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------- gain support


@dataclass(frozen=True)
class GainApi:
    """The functions of the gain modules (issue 3) that scan and the pipeline use."""

    classify_movie: Callable[..., Any]
    gain_partial_from_movie: Callable[..., Any]
    merge_gain_partials: Callable[..., Any]
    finalize_gain: Callable[..., Any]
    write_gain_reference: Callable[..., Any]


def gain_support() -> GainApi | None:
    """The gain functions if empcompress.gain (and gainref) provide all of them and
    ``convert_movie`` takes a ``gain``; None otherwise (gain sets are then off)."""
    modules = []
    for name in ("empcompress.gain", "empcompress.gainref"):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            continue
    found: dict[str, Callable[..., Any]] = {}
    for field_name in GainApi.__dataclass_fields__:
        for module in modules:
            function = getattr(module, field_name, None)
            if callable(function):
                found[field_name] = function
                break
    if len(found) != len(GainApi.__dataclass_fields__):
        return None
    from ..convert import convert_movie

    if "gain" not in inspect.signature(convert_movie).parameters:
        return None
    return GainApi(**found)
