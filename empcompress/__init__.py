"""empcompress: lossless compression of cryo-EM movies for the EMPIAR archive."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
