"""``python -m empcompress``: the same as the ``empcompress`` command."""

from __future__ import annotations

import sys

from . import interrupts

if __name__ == "__main__":
    interrupts.install_for_startup()  # before the command line's imports
    from .cli import main

    sys.exit(main())
