"""The record schema: the one place that decides whether a TIFF's record can be trusted.

Every TIFF empcompress writes carries a JSON record in its first page's
ImageDescription (see ``docs/record-format.md``, which describes every field).
:func:`parse_record` is the only reader of that text: it checks every field's
type, allowed values and limits, and that the fields agree with each other and
with the original MRC header kept inside the record, *before* anything is
allocated or opened from them. Any damaged or crafted field becomes one
:class:`~empcompress.errors.RecordError` whose message names the TIFF and the
field.

A record that passes is internally consistent; whether the TIFF's pages match it
is checked by the readers (:mod:`empcompress.reconstruct`, :mod:`empcompress.verify`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import EmpCompressError, NotOurTiffError, RecordError
from .gain import GAIN_RECORD_VERSION, MAX_EXCEPTION_FRACTION
from .metadata import FORMAT_NAME, FORMAT_VERSION, ROW_CONVENTION, MovieRecord, SourceRecord, StorageRecord
from .mrc import HEADER_SIZE_BYTES, MODE_DTYPES, parse_header, value_dtype_for

__all__ = [
    "MAX_SIDE_PIXELS",
    "MAX_FRAME_PIXELS",
    "MAX_FRAMES",
    "STORED_DTYPES",
    "CODECS",
    "GAIN_KINDS",
    "parse_record",
    "parse_record_document",
    "canonical_record_text",
    "check_gain_entry",
    "check_relative_reference",
    "exceptions_raw_size_bytes",
]

#: Limits of this reader (generous: the largest detectors write 11520 x 8184 frames).
MAX_SIDE_PIXELS = (1 << 20) - 1
MAX_FRAME_PIXELS = 1 << 30
MAX_FRAMES = (1 << 24) - 1
MAX_NAME_BYTES = 255
MAX_REFERENCE_BYTES = 4096
MAX_TEXT_CHARS = 65536
#: Stored value types and the TIFF SampleFormat of each kind.
STORED_DTYPES = ("uint8", "uint16", "uint32", "int16", "int32", "float16", "float32")
CODECS: dict[str, tuple[int, int] | None] = {"none": None, "lzw": None, "deflate": (0, 9), "zstd": (1, 22)}
PREDICTORS = (1, 3)
GAIN_KINDS = ("gain-normalised", "carried-over")

_TOP_KEYS = ("format", "format_version", "tool", "tool_version", "row_convention", "source", "storage")
_SOURCE_KEYS = (
    "name",
    "size_bytes",
    "sha256",
    "mode",
    "byte_order",
    "nx",
    "ny",
    "nz",
    "bytes_are_signed",
    "pixel_size_angstrom",
    "header_b64",
    "extended_header_b64",
    "exttyp",
)
_STORAGE_KEYS = (
    "stored_dtype",
    "is_integer",
    "value_min",
    "value_max",
    "reason",
    "codec",
    "codec_level",
    "huffman_only",
    "predictor",
    "rows_per_strip",
    "gain",
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9A-Za-z.+\-_]{1,64}")


def _fail(path_name: str, field: str, problem: str) -> RecordError:
    return RecordError(
        f"{path_name}: the empcompress record is damaged: {field} {problem}; "
        "the file cannot be trusted, use another copy"
    )


@dataclass(frozen=True)
class _Fields:
    """Typed access to one JSON object of the record, naming fields in errors."""

    document: dict[str, Any]
    prefix: str
    path_name: str

    def fail(self, key: str, problem: str) -> RecordError:
        return _fail(self.path_name, f"{self.prefix}{key}", problem)

    def value(self, key: str) -> Any:
        if key not in self.document:
            raise self.fail(key, "is missing")
        return self.document[key]

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.value(key)
        if type(value) is not int:
            raise self.fail(key, f"must be an integer, not {_show(value)}")
        if not low <= value <= high:
            raise self.fail(key, f"is {value}, outside {low}..{high}")
        return value

    def number(self, key: str) -> float:
        value = self.value(key)
        if type(value) not in (int, float):
            raise self.fail(key, f"must be a number, not {_show(value)}")
        if type(value) is int and abs(value) > 2**64:
            raise self.fail(key, "is out of range")
        return float(value)

    def boolean(self, key: str) -> bool:
        value = self.value(key)
        if type(value) is not bool:
            raise self.fail(key, f"must be true or false, not {_show(value)}")
        return value

    def text(self, key: str, *, max_chars: int = MAX_TEXT_CHARS, allowed: tuple[str, ...] = ()) -> str:
        value = self.value(key)
        if type(value) is not str:
            raise self.fail(key, f"must be a string, not {_show(value)}")
        if len(value) > max_chars:
            raise self.fail(key, f"is longer than {max_chars} characters")
        if allowed and value not in allowed:
            raise self.fail(key, f"is {_show(value)}, not one of {', '.join(allowed)}")
        return value

    def only(self, keys: tuple[str, ...], *, optional: tuple[str, ...] = ()) -> None:
        unknown = [key for key in self.document if key not in keys and key not in optional]
        if unknown:
            raise self.fail(unknown[0], "is not a field of this record format")
        for key in keys:
            self.value(key)


def _show(value: Any) -> str:
    text = json.dumps(value, allow_nan=True) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _object(value: Any, path_name: str, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(path_name, field, f"must be an object, not {_show(value)}")
    return value


def _strict_b64(fields: _Fields, key: str) -> bytes:
    """Decode canonical base64 (the only spelling our writer produces)."""
    text = fields.text(key, max_chars=1 << 30)
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, binascii.Error, UnicodeEncodeError):
        raise fields.fail(key, "is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise fields.fail(key, "is not canonical base64 (altered padding bits)")
    return raw


def _same_float(first: float, second: float) -> bool:
    if math.isnan(first) or math.isnan(second):
        return math.isnan(first) and math.isnan(second)
    return first == second and math.copysign(1.0, first) == math.copysign(1.0, second)


def check_relative_reference(reference: str) -> str | None:
    """What is wrong with a recorded relative path (None when it is acceptable).

    A reference is a relative POSIX path: not empty, no leading ``/``, no
    backslash, drive letter, NUL or control character, no empty or ``.``
    component, at most :data:`MAX_REFERENCE_BYTES` bytes. ``..`` components are
    allowed here; where they may lead is decided when the file is opened.
    """
    if not reference:
        return "is empty"
    if len(reference.encode("utf-8", "surrogatepass")) > MAX_REFERENCE_BYTES:
        return f"is longer than {MAX_REFERENCE_BYTES} bytes"
    if reference.startswith("/") or (len(reference) > 1 and reference[1] == ":"):
        return "is an absolute path"
    if "\\" in reference or any(ord(char) < 32 or ord(char) == 127 for char in reference):
        return "contains a backslash or a control character"
    if any(part in ("", ".") for part in reference.split("/")):
        return "has an empty or '.' component"
    return None


def _check_name(fields: _Fields) -> str:
    name = fields.text("name", max_chars=MAX_NAME_BYTES)
    problem = None
    if not name:
        problem = "is empty"
    elif name in (".", ".."):
        problem = "is not a file name"
    elif "/" in name or "\\" in name:
        problem = "is a path, not a file name"
    elif "\0" in name:  # POSIX names may hold any other byte, line breaks included
        problem = "contains a NUL character"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem is not None:
        raise fields.fail("name", f"{_show(name)} {problem}")
    return name


def _source(document: dict[str, Any], path_name: str) -> SourceRecord:
    fields = _Fields(document, "source.", path_name)
    fields.only(tuple(key for key in _SOURCE_KEYS if key != "exttyp"), optional=("exttyp",))
    name = _check_name(fields)
    sha256 = fields.text("sha256", max_chars=64)
    if not _SHA256.fullmatch(sha256):
        raise fields.fail("sha256", "must be 64 lowercase hexadecimal digits")
    mode = fields.integer("mode", 0, 2**31 - 1)
    if mode not in MODE_DTYPES:
        raise fields.fail("mode", f"is {mode}, not a supported MRC mode ({', '.join(map(str, MODE_DTYPES))})")
    byte_order = fields.text("byte_order", allowed=("<", ">"))
    nx = fields.integer("nx", 1, MAX_SIDE_PIXELS)
    ny = fields.integer("ny", 1, MAX_SIDE_PIXELS)
    nz = fields.integer("nz", 1, MAX_FRAMES)
    if nx * ny > MAX_FRAME_PIXELS:
        raise fields.fail(
            "nx", f"x ny = {nx * ny} pixels per frame is more than this reader's {MAX_FRAME_PIXELS}"
        )
    bytes_are_signed = fields.boolean("bytes_are_signed")
    pixel_size = fields.number("pixel_size_angstrom")
    size_bytes = fields.integer("size_bytes", HEADER_SIZE_BYTES, 2**62)
    exttyp = fields.text("exttyp", max_chars=4) if "exttyp" in document else ""
    header = _strict_b64(fields, "header_b64")
    if len(header) != HEADER_SIZE_BYTES:
        raise fields.fail("header_b64", f"holds {len(header)} bytes, an MRC header has {HEADER_SIZE_BYTES}")
    extended = _strict_b64(fields, "extended_header_b64")
    # The kept header is the truth about the MRC file: every summary field must agree with it.
    try:
        parsed = parse_header(header, path_name="the recorded MRC header", file_size_bytes=size_bytes)
    except EmpCompressError as error:
        raise fields.fail("header_b64", f"does not describe a {size_bytes}-byte MRC file ({error})") from None
    if parsed.extended_header_size_bytes != len(extended):
        raise fields.fail(
            "extended_header_b64",
            f"holds {len(extended)} bytes but the recorded header says {parsed.extended_header_size_bytes}",
        )
    checks: list[tuple[str, object, object]] = [
        ("mode", mode, parsed.mode),
        ("byte_order", byte_order, parsed.byte_order),
        ("nx", nx, parsed.nx),
        ("ny", ny, parsed.ny),
        ("nz", nz, parsed.nz),
        ("bytes_are_signed", bytes_are_signed, parsed.bytes_are_signed),
        ("exttyp", exttyp, parsed.exttyp),
    ]
    for key, recorded, actual in checks:
        if recorded != actual:
            raise fields.fail(key, f"is {_show(recorded)} but the recorded MRC header says {_show(actual)}")
    if not _same_float(pixel_size, parsed.pixel_size_angstrom):
        raise fields.fail(
            "pixel_size_angstrom",
            f"is {pixel_size!r} but the recorded MRC header gives {parsed.pixel_size_angstrom!r}",
        )
    return SourceRecord(
        name=name,
        size_bytes=size_bytes,
        sha256=sha256,
        mode=mode,
        byte_order=byte_order,
        nx=nx,
        ny=ny,
        nz=nz,
        bytes_are_signed=bytes_are_signed,
        pixel_size_angstrom=pixel_size,
        header_b64=document["header_b64"],
        extended_header_b64=document["extended_header_b64"],
        exttyp=exttyp,
    )


def _storage(document: dict[str, Any], source: SourceRecord, path_name: str) -> StorageRecord:
    fields = _Fields(document, "storage.", path_name)
    fields.only(tuple(key for key in _STORAGE_KEYS if key != "gain"), optional=("gain",))
    stored_name = fields.text("stored_dtype", allowed=STORED_DTYPES)
    stored = np.dtype(stored_name)
    source_dtype = value_dtype_for(
        mode=source.mode, byte_order=source.byte_order, bytes_are_signed=source.bytes_are_signed
    ).newbyteorder("=")
    is_integer = fields.boolean("is_integer")
    if is_integer != (stored.kind in "iu"):
        raise fields.fail("is_integer", f"is {_show(is_integer)} but stored_dtype is {stored_name}")
    if stored.kind == "f" and stored != source_dtype:
        raise fields.fail(
            "stored_dtype", f"is {stored_name}; floats are kept as the source's {source_dtype.name}"
        )
    value_min, value_max = fields.number("value_min"), fields.number("value_max")
    if stored.kind in "iu":
        info = np.iinfo(stored)
        if not (info.min <= value_min <= value_max <= info.max):
            raise fields.fail(
                "value_min", f"..value_max {value_min:g}..{value_max:g} do not fit {stored_name}"
            )
    reason = fields.text("reason")
    codec = fields.text("codec", allowed=tuple(CODECS))
    level_value = fields.value("codec_level")
    level_range = CODECS[codec]
    if level_value is not None:
        if level_range is None:
            raise fields.fail("codec_level", f"must be null for codec {codec}")
        fields.integer("codec_level", *level_range)
    huffman_only = fields.boolean("huffman_only")
    if huffman_only and (codec != "deflate" or level_value is not None):
        raise fields.fail("huffman_only", "is true, which needs codec deflate and codec_level null")
    predictor = fields.integer("predictor", 1, 3)
    if predictor not in PREDICTORS:
        raise fields.fail("predictor", f"is {predictor}, not 1 (none) or 3 (floating point)")
    if predictor == 3 and (stored.kind != "f" or codec == "none"):
        raise fields.fail("predictor", "is 3 (floating point), which needs float storage and compression")
    rows_per_strip = fields.integer("rows_per_strip", 1, source.ny)
    gain = document.get("gain")
    if gain is not None:
        gain = check_gain_entry(_object(gain, path_name, "storage.gain"), source=source, path_name=path_name)
        if gain["kind"] == "gain-normalised" and (source.mode != 2 or stored_name not in ("uint8", "uint16")):
            raise _fail(
                path_name,
                "storage.gain.kind",
                f"is gain-normalised, which needs a mode-2 source stored as uint8 or uint16 "
                f"(mode {source.mode}, {stored_name})",
            )
    return StorageRecord(
        stored_dtype=stored_name,
        is_integer=is_integer,
        value_min=value_min,
        value_max=value_max,
        reason=reason,
        codec=codec,
        codec_level=level_value,
        huffman_only=huffman_only,
        predictor=predictor,
        rows_per_strip=rows_per_strip,
        gain=gain,
    )


def exceptions_raw_size_bytes(*, n_frames: int, n_exceptions: int) -> int:
    """Size of the decompressed exception list: nz counts, then indices and values (uint32 each)."""
    return 4 * (n_frames + 2 * n_exceptions)


def _check_gain_transform(value: Any, path_name: str) -> None:
    """``storage.gain.transform``: a known flip/rotation, scale and inversion, RELION numbers that agree."""
    from .gainref import ORIENTATION_CODES, SCALE_CODES, GainTransform

    if not isinstance(value, dict):
        raise RecordError(
            f"{path_name}: the empcompress record is damaged: storage.gain.transform must be an object"
        )
    fields = _Fields(value, "storage.gain.transform.", path_name)
    orientation = fields.text("orientation", allowed=tuple(ORIENTATION_CODES.values()))
    scale = fields.text("scale", allowed=tuple(SCALE_CODES.values()))
    reciprocal = fields.boolean("reciprocal")
    transform = GainTransform(orientation, scale, reciprocal)
    rot = fields.integer("relion_gain_rot", 0, 3)
    flip = fields.integer("relion_gain_flip", 0, 2)
    if (rot, flip) != (transform.relion_gain_rot, transform.relion_gain_flip):
        raise fields.fail("relion_gain_rot", f"and relion_gain_flip do not describe {orientation!r}")
    unknown = set(value) - {"orientation", "scale", "reciprocal", "relion_gain_rot", "relion_gain_flip"}
    if unknown:
        raise fields.fail(sorted(unknown)[0], "is not a field of the transform")


def check_gain_entry(
    document: dict[str, Any], *, source: SourceRecord | None, path_name: str
) -> dict[str, Any]:
    """Validate the record's ``storage.gain`` entry (returned unchanged when valid).

    With ``source`` the exception list is decompressed (never past its expected
    size) and its length checked against the movie's frames.
    """
    fields = _Fields(document, "storage.gain.", path_name)
    version = fields.integer("version", 1, GAIN_RECORD_VERSION)
    kind = fields.text("kind", allowed=GAIN_KINDS)
    reference = fields.text("reference", max_chars=MAX_REFERENCE_BYTES)
    problem = check_relative_reference(reference)
    if problem is not None:
        raise fields.fail(
            "reference", f"{_show(reference)} {problem}; it must be a path relative to the TIFF"
        )
    digest = fields.text("reference_sha256", max_chars=64)
    if not _SHA256.fullmatch(digest):
        raise fields.fail("reference_sha256", "must be 64 lowercase hexadecimal digits")
    if kind == "carried-over":
        for key in ("formula", "n_exceptions", "exception_encoding", "exceptions", "transform"):
            if key in document:
                raise fields.fail(key, "belongs to gain-normalised storage, not to a carried-over gain")
        return document
    fields.text("formula")
    fields.text("exception_encoding")
    if "transform" in document:
        if version < 2:
            raise fields.fail("transform", "belongs to version 2 of the gain entry")
        _check_gain_transform(document["transform"], path_name)
    # the conversion's own limit, computed the same way (GainCounter)
    limit = int(MAX_EXCEPTION_FRACTION * source.nz * (source.nx * source.ny)) if source is not None else 2**62
    n_exceptions = fields.integer("n_exceptions", 0, limit)
    encoded = _strict_b64(fields, "exceptions")
    if source is not None:
        expected = exceptions_raw_size_bytes(n_frames=source.nz, n_exceptions=n_exceptions)
        try:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(encoded, expected + 1)
            complete = inflater.eof and not inflater.unused_data
        except zlib.error:
            raise fields.fail("exceptions", "is not a zlib stream") from None
        if len(raw) != expected or not complete:
            raise fields.fail(
                "exceptions",
                f"does not hold {source.nz} frame counts and {n_exceptions} exceptions ({expected} bytes)",
            )
        counts = np.frombuffer(raw[: 4 * source.nz], dtype="<u4")
        if int(counts.sum(dtype=np.int64)) != n_exceptions:
            raise fields.fail(
                "exceptions", f"lists {int(counts.sum(dtype=np.int64))} exceptions, not {n_exceptions}"
            )
    return document


def canonical_record_text(document: dict[str, Any]) -> str:
    """The exact text our writer produces for a record document (compact JSON, keys in order)."""
    return json.dumps(document, separators=(",", ":"), sort_keys=False)


def parse_record_document(text: Any, *, path_name: str) -> dict[str, Any]:
    """The record's JSON object; :class:`NotOurTiffError` when there is no empcompress record at all."""
    document: Any = None
    if isinstance(text, str):
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, RecursionError, ValueError):
            document = None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        if isinstance(text, str) and text.lstrip().startswith('{"format":"empcompress"'):
            raise _fail(path_name, "the ImageDescription", "is not valid JSON")
        raise NotOurTiffError(
            f"{path_name}: no empcompress record in the TIFF's ImageDescription; "
            "this file was not written by empcompress"
        )
    version = document.get("format_version")
    if version != FORMAT_VERSION or type(version) is not int:
        if type(version) is int and version > FORMAT_VERSION:
            raise NotOurTiffError(
                f"{path_name}: empcompress record format {version} is not supported by this "
                f"version (reads format {FORMAT_VERSION}); upgrade empcompress"
            )
        raise _fail(path_name, "format_version", f"is {_show(version)}, not {FORMAT_VERSION}")
    return document


def parse_record(text: Any, *, path_name: str) -> MovieRecord:
    """Parse and validate a record (the ImageDescription text of the first page).

    Raises :class:`NotOurTiffError` when the text is not an empcompress record,
    :class:`RecordError` naming the field when it is one but damaged or crafted.
    """
    document = parse_record_document(text, path_name=path_name)
    fields = _Fields(document, "", path_name)
    fields.only(_TOP_KEYS, optional=("extra",))
    fields.text("tool", allowed=("empcompress",))
    tool_version = fields.text("tool_version", max_chars=64)
    if not _VERSION.fullmatch(tool_version):
        raise fields.fail("tool_version", f"{_show(tool_version)} is not a version number")
    fields.text("row_convention", allowed=(ROW_CONVENTION,))
    source = _source(_object(document["source"], path_name, "source"), path_name)
    storage = _storage(_object(document["storage"], path_name, "storage"), source, path_name)
    extra = document.get("extra", {})
    _object(extra, path_name, "extra")
    return MovieRecord(
        tool_version=tool_version,
        source=source,
        storage=storage,
        row_convention=ROW_CONVENTION,
        extra=extra,
    )
