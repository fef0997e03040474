"""The bag module's former home: everything now lives in :mod:`empcompress.bag` (re-exported here)."""

from .bag import *  # noqa: F403
from .bag import __all__ as __all__
