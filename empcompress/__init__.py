"""empcompress: lossless compression of cryo-EM movies for the EMPIAR archive."""

from __future__ import annotations

# First of all: in the empcompress program itself (not when imported as a library), this installs the
# handlers that turn SIGINT, SIGTERM and SIGHUP into a clean stop, so that even the imports are covered.
from . import interrupts as _interrupts  # noqa: F401

__version__ = "0.2.0"

__all__ = ["__version__"]
