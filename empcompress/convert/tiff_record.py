"""The movie's record, the JSON text in the TIFF's first page, and the placeholder it is written as first.

One attempt at the one read fixes the record's source part (the original header's bytes)
and its codec and strips; the pass finds the rest (the sha256, the value range). The
record is written with placeholders for those, each as long as its longest text, and
filled in place afterwards (:func:`empcompress.write.replace_description`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..detect import StorageDecision
from ..encode import Codec
from ..gain import GainRecord
from ..metadata import MovieRecord, SourceRecord, StorageRecord
from ..mrc import MrcHeader

#: What the record holds while the pass runs (the sha256 and value range are filled in afterwards):
#: the longest text each field can take, so that the final record always fits in its place.
PLACEHOLDER_SHA256 = "0" * 64
PLACEHOLDER_VALUE = -2.2250738585072014e-308  # as long as any float's JSON text (24 characters)
PLACEHOLDER_REASON_CHARS = 256  # decide_storage's reasons are under 130 characters


@dataclass(frozen=True)
class TiffRecord:
    """What one attempt fixes in the record: the source, its header's bytes, the storage type, the codec
    and the strips."""

    source: Path
    header: MrcHeader
    header_bytes: bytes
    extended_header_bytes: bytes
    stored_dtype: np.dtype
    codec: Codec
    rows_per_strip: int

    @property
    def n_strips_per_frame(self) -> int:
        return -(-self.header.ny // self.rows_per_strip)

    def text(self, sha256: str, decision: StorageDecision, gain_record: GainRecord | None = None) -> str:
        """The record's JSON text, with what the pass found (or placeholders for it)."""
        header = self.header
        return MovieRecord(
            tool_version=__version__,
            source=SourceRecord(
                name=self.source.name,
                size_bytes=header.file_size_bytes,
                sha256=sha256,
                mode=header.mode,
                byte_order=header.byte_order,
                nx=header.nx,
                ny=header.ny,
                nz=header.nz,
                bytes_are_signed=header.bytes_are_signed,
                pixel_size_angstrom=header.pixel_size_angstrom,
                header_b64=base64.b64encode(self.header_bytes).decode("ascii"),
                extended_header_b64=base64.b64encode(self.extended_header_bytes).decode("ascii"),
                exttyp=header.exttyp,
            ),
            storage=StorageRecord(
                stored_dtype=decision.stored_dtype,
                is_integer=decision.is_integer,
                value_min=decision.value_min,
                value_max=decision.value_max,
                reason=decision.reason,
                codec=self.codec.name,
                codec_level=self.codec.level,
                huffman_only=self.codec.huffman_only,
                predictor=self.codec.predictor,
                rows_per_strip=self.rows_per_strip,
                gain=gain_record.to_dict() if gain_record is not None else None,
            ),
        ).to_json()

    def placeholder(
        self,
        decision: StorageDecision,
        gain_record: GainRecord | None = None,
        *,
        reason_chars: int = PLACEHOLDER_REASON_CHARS,
    ) -> str:
        """The text written before the pass: at least as long as :meth:`text` will be for ``decision``
        (a reason of up to ``reason_chars`` characters, ``gain_record``'s entry as long as the final one).
        """
        held = replace(
            decision, value_min=PLACEHOLDER_VALUE, value_max=PLACEHOLDER_VALUE, reason="?" * reason_chars
        )
        return self.text(PLACEHOLDER_SHA256, held, gain_record)
