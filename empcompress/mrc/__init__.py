"""Reading MRC movies: header, extended header and frames, one frame at a time.

We parse the 1024-byte MRC2014 header ourselves (``mrcfile`` cannot read mode 101
and we need the raw bytes anyway) and validate it against the file's size before
anything else happens. Frames are read with ``readinto`` into reused buffers, so
memory does not grow with the number of frames. The read pass has the next frame read
into the movie's own buffer while it works (:meth:`MrcMovie.read_ahead`): with ``O_DIRECT``,
past the page cache, when the frame is not cached and the file system takes it.

Modes: 0 (int8, or uint8 where IMOD's flags say so), 1 (int16), 2 (float32),
6 (uint16), 12 (float16) and 101 (packed 4-bit, low nibble first, rows padded to
a whole byte). Both byte orders are read; the values are returned in the file's
byte order (``frame.dtype`` says which), the raw bytes are available too.

Parts: :mod:`.header` (header parsing and validation, mode dtypes, ``open_mrc``, ``read_header``),
:mod:`.nibbles` (mode-101 4-bit packing), :mod:`.readahead` (kernel hints and ``O_DIRECT`` reads ahead)
and :mod:`.movie` (:class:`MrcMovie`, the frame reader).
"""

from __future__ import annotations

from .header import (
    HEADER_SIZE_BYTES,
    MODE_DTYPES,
    MrcHeader,
    open_mrc,
    parse_header,
    read_header,
    value_dtype_for,
)
from .movie import MrcMovie
from .nibbles import pack_4bit, unpack_4bit

__all__ = [
    "HEADER_SIZE_BYTES",
    "MrcHeader",
    "MrcMovie",
    "read_header",
    "parse_header",
    "pack_4bit",
    "unpack_4bit",
    "MODE_DTYPES",
    "value_dtype_for",
    "open_mrc",
]
