"""The JSON record kept in the first TIFF page's ImageDescription.

It holds everything needed to rebuild the source MRC file byte for byte from the
TIFF alone: the raw header and extended header (base64), the source's size and
sha256, and how values were stored. Readers that do not know it see a plain
ASCII description.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import NotOurTiffError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "ROW_CONVENTION", "SourceRecord", "StorageRecord", "MovieRecord"]

FORMAT_NAME = "empcompress"
FORMAT_VERSION = 1
ROW_CONVENTION = "flipped-y: TIFF row 0 is MRC row ny-1 (RELION/IMOD convention)"


@dataclass(frozen=True)
class SourceRecord:
    """The source MRC file."""

    name: str
    size_bytes: int
    sha256: str
    mode: int
    byte_order: str
    nx: int
    ny: int
    nz: int
    bytes_are_signed: bool
    pixel_size_angstrom: float
    header_b64: str
    extended_header_b64: str
    exttyp: str = ""

    @property
    def header_bytes(self) -> bytes:
        return base64.b64decode(self.header_b64)

    @property
    def extended_header_bytes(self) -> bytes:
        return base64.b64decode(self.extended_header_b64)


@dataclass(frozen=True)
class StorageRecord:
    """How the values are stored in the TIFF pages."""

    stored_dtype: str
    is_integer: bool
    value_min: float
    value_max: float
    reason: str
    codec: str
    codec_level: int | None
    huffman_only: bool
    predictor: int
    rows_per_strip: int
    gain: dict[str, Any] | None = None  # filled by gain-normalised conversion


@dataclass(frozen=True)
class MovieRecord:
    """The whole record: tool, source, storage and conventions."""

    tool_version: str
    source: SourceRecord
    storage: StorageRecord
    row_convention: str = ROW_CONVENTION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        document = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tool": "empcompress",
            "tool_version": self.tool_version,
            "row_convention": self.row_convention,
            "source": asdict(self.source),
            "storage": asdict(self.storage),
        }
        if self.extra:
            document["extra"] = self.extra
        return json.dumps(document, separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_json(cls, text: str, *, path_name: str) -> MovieRecord:
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            document = None
        if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
            raise NotOurTiffError(
                f"{path_name}: no empcompress record in the TIFF's ImageDescription; "
                f"this file was not written by empcompress"
            )
        version = document.get("format_version")
        if version != FORMAT_VERSION:
            raise NotOurTiffError(
                f"{path_name}: empcompress record format {version} is not supported by this "
                f"version (reads format {FORMAT_VERSION}); upgrade empcompress"
            )
        try:
            return cls(
                tool_version=document["tool_version"],
                source=SourceRecord(**document["source"]),
                storage=StorageRecord(**document["storage"]),
                row_convention=document["row_convention"],
                extra=document.get("extra", {}),
            )
        except (KeyError, TypeError) as error:
            raise NotOurTiffError(f"{path_name}: the empcompress record is incomplete ({error})") from None
