"""The hand-off to EMPIAR: ``empiar-deposition.json`` for a bag, from the drive itself.

Parts: :mod:`.sidecars` (EPU and SerialEM acquisition files), :mod:`.acquisition`
(which sidecar describes which movie), :mod:`.movies` (what each image file of the bag
is), :mod:`.imagesets` (grouping into EMPIAR imagesets), :mod:`.schema` (the EMPIAR
deposition schema, packaged, and validation), :mod:`.writer` (templates, the file).
"""

from .writer import (
    DEPOSITION_JSON,
    DepositionResult,
    build_deposition,
    deposition_bytes,
    existing_template,
    read_json_object,
    update_bag_deposition,
    write_deposition,
    write_for_compress,
)

__all__ = [
    "DEPOSITION_JSON",
    "DepositionResult",
    "build_deposition",
    "deposition_bytes",
    "existing_template",
    "read_json_object",
    "update_bag_deposition",
    "write_deposition",
    "write_for_compress",
]
