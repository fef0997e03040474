"""Reading MRC movies: header, extended header and frames, one frame at a time.

We parse the 1024-byte MRC2014 header ourselves (``mrcfile`` cannot read mode 101
and we need the raw bytes anyway) and validate it against the file's size before
anything else happens. Frames are read with ``readinto`` into reused buffers, so
memory does not grow with the number of frames.

Modes: 0 (int8, or uint8 where IMOD's flags say so), 1 (int16), 2 (float32),
6 (uint16), 12 (float16) and 101 (packed 4-bit, low nibble first, rows padded to
a whole byte). Both byte orders are read; the values are returned in the file's
byte order (``frame.dtype`` says which), the raw bytes are available too.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from .errors import HeaderMismatchError, NotMrcError, TruncatedFileError, UnsupportedModeError
from .files import NotRegularFileError, open_regular

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

HEADER_SIZE_BYTES = 1024
IMOD_STAMP = 1146047817
IMOD_FLAG_SIGNED_BYTES = 1

#: Numpy value type of each supported mode (byte order added per file).
MODE_DTYPES: dict[int, str] = {0: "i1", 1: "i2", 2: "f4", 6: "u2", 12: "f2", 101: "u1"}

_HEADER_FIELDS: list[tuple[str, str] | tuple[str, str, int]] = [
    ("nx", "i4"),
    ("ny", "i4"),
    ("nz", "i4"),
    ("mode", "i4"),
    ("nxstart", "i4"),
    ("nystart", "i4"),
    ("nzstart", "i4"),
    ("mx", "i4"),
    ("my", "i4"),
    ("mz", "i4"),
    ("cella", "f4", 3),
    ("cellb", "f4", 3),
    ("mapc", "i4"),
    ("mapr", "i4"),
    ("maps", "i4"),
    ("dmin", "f4"),
    ("dmax", "f4"),
    ("dmean", "f4"),
    ("ispg", "i4"),
    ("nsymbt", "i4"),
    ("extra1", "V8"),
    ("exttyp", "S4"),
    ("nversion", "i4"),
    ("extra2", "V40"),
    ("imod_stamp", "i4"),  # byte 152 (IMOD's mrc_format.txt)
    ("imod_flags", "i4"),  # byte 156; bit 0 set: mode-0 bytes are signed
    ("extra3", "V36"),
    ("origin", "f4", 3),
    ("map", "S4"),
    ("machst", "u1", 4),
    ("rms", "f4"),
    ("nlabl", "i4"),
    ("label", "S80", 10),
]


def _header_dtype(byte_order: str) -> np.dtype:
    fields: list[tuple[str, str] | tuple[str, str, int]] = []
    for field in _HEADER_FIELDS:
        name, code = field[0], field[1]
        if code[0] in "if":
            code = byte_order + code
        fields.append((name, code, field[2]) if len(field) == 3 else (name, code))
    dtype = np.dtype(fields)
    assert dtype.itemsize == HEADER_SIZE_BYTES
    return dtype


def value_dtype_for(*, mode: int, byte_order: str, bytes_are_signed: bool) -> np.dtype:
    """Numpy dtype of an MRC mode's values in the given byte order (uint8 for mode 101)."""
    code = MODE_DTYPES[mode]
    if mode == 0 and not bytes_are_signed:
        code = "u1"
    return np.dtype(code) if code[1] == "1" else np.dtype(byte_order + code)


@dataclass(frozen=True)
class MrcHeader:
    """What we need from an MRC header, plus its raw bytes for a byte-exact restore."""

    path_name: str
    nx: int
    ny: int
    nz: int
    mode: int
    byte_order: str  # "<" or ">"
    extended_header_size_bytes: int
    exttyp: str
    ispg: int
    voxel_size_angstrom: tuple[float, float, float]
    labels: tuple[str, ...]
    bytes_are_signed: bool  # mode 0 only: MRC2014 says signed unless IMOD says otherwise
    file_size_bytes: int

    @property
    def value_dtype(self) -> np.dtype:
        """Numpy dtype of the values, in the file's byte order (uint8 for mode 101)."""
        return value_dtype_for(
            mode=self.mode, byte_order=self.byte_order, bytes_are_signed=self.bytes_are_signed
        )

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.ny, self.nx)

    @property
    def n_frames(self) -> int:
        return self.nz

    @property
    def data_offset_bytes(self) -> int:
        return HEADER_SIZE_BYTES + self.extended_header_size_bytes

    @property
    def frame_size_bytes(self) -> int:
        if self.mode == 101:
            return ((self.nx + 1) // 2) * self.ny
        return self.nx * self.ny * self.value_dtype.itemsize

    @property
    def data_size_bytes(self) -> int:
        return self.frame_size_bytes * self.nz

    @property
    def expected_file_size_bytes(self) -> int:
        return self.data_offset_bytes + self.data_size_bytes

    @property
    def pixel_size_angstrom(self) -> float:
        return self.voxel_size_angstrom[0]


def _byte_order_from_machst(machst: bytes) -> str | None:
    if machst[0] in (0x44, 0x41):
        return "<"
    if machst[0] == 0x11:
        return ">"
    return None


def _plausible(record: np.void) -> bool:
    return (
        int(record["mode"]) in MODE_DTYPES
        and 0 < int(record["nx"]) < 1 << 20
        and 0 < int(record["ny"]) < 1 << 20
        and 0 <= int(record["nz"]) < 1 << 24
        and 0 <= int(record["nsymbt"]) < 1 << 31
    )


def parse_header(raw_header: bytes, *, path_name: str, file_size_bytes: int) -> MrcHeader:
    """Parse and validate a 1024-byte MRC header against the file's size.

    Raises a subclass of :class:`InputError` naming ``path_name`` when the header
    is not MRC, uses an unsupported mode, or disagrees with the file's size.
    """
    if file_size_bytes == 0:
        raise NotMrcError(f"{path_name}: the file is empty, not an MRC movie")
    if len(raw_header) < HEADER_SIZE_BYTES:
        raise NotMrcError(
            f"{path_name}: {file_size_bytes} bytes is shorter than an MRC header "
            f"({HEADER_SIZE_BYTES} bytes); this is not an MRC file or it is truncated"
        )
    machst = raw_header[212:216]
    byte_order = _byte_order_from_machst(machst)
    if byte_order is None:
        # No machine stamp: take the byte order in which the header makes sense.
        plausible = [
            order
            for order in ("<", ">")
            if _plausible(np.frombuffer(raw_header, dtype=_header_dtype(order), count=1)[0])
        ]
        byte_order = plausible[0] if plausible else "<"
    record = np.frombuffer(raw_header, dtype=_header_dtype(byte_order), count=1)[0]
    has_map_word = bytes(record["map"]) == b"MAP "
    mode = int(record["mode"])
    nx, ny, nz = int(record["nx"]), int(record["ny"]), int(record["nz"])
    if not has_map_word and not _plausible(record):
        raise NotMrcError(
            f"{path_name}: not an MRC file (no 'MAP ' identifier and the header values "
            f"are not plausible: nx={nx}, ny={ny}, nz={nz}, mode={mode})"
        )
    if mode not in MODE_DTYPES:
        raise UnsupportedModeError(
            f"{path_name}: MRC mode {mode} is not supported "
            f"(supported modes: {', '.join(str(m) for m in MODE_DTYPES)})"
        )
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise HeaderMismatchError(f"{path_name}: the header gives an empty image (nx={nx}, ny={ny}, nz={nz})")
    nsymbt = int(record["nsymbt"])
    if nsymbt < 0:
        raise HeaderMismatchError(f"{path_name}: negative extended header size {nsymbt}")
    imod_stamp = int(record["imod_stamp"])
    imod_flags = int(record["imod_flags"])
    bytes_are_signed = not (imod_stamp == IMOD_STAMP and not imod_flags & IMOD_FLAG_SIGNED_BYTES)
    nlabl = max(0, min(10, int(record["nlabl"])))
    labels = tuple(bytes(record["label"][i]).rstrip(b"\0 ").decode("ascii", "replace") for i in range(nlabl))
    mx = int(record["mx"]) or nx
    my = int(record["my"]) or ny
    mz = int(record["mz"]) or 1
    cella = [float(v) for v in record["cella"]]
    voxel = (
        cella[0] / mx if mx else 0.0,
        cella[1] / my if my else 0.0,
        cella[2] / mz if mz else 0.0,
    )
    header = MrcHeader(
        path_name=path_name,
        nx=nx,
        ny=ny,
        nz=nz,
        mode=mode,
        byte_order=byte_order,
        extended_header_size_bytes=nsymbt,
        exttyp=bytes(record["exttyp"]).decode("ascii", "replace").strip("\0"),
        ispg=int(record["ispg"]),
        voxel_size_angstrom=voxel,
        labels=labels,
        bytes_are_signed=bytes_are_signed,
        file_size_bytes=file_size_bytes,
    )
    expected = header.expected_file_size_bytes
    if file_size_bytes < expected:
        raise TruncatedFileError(
            f"{path_name}: truncated: the header ({nx}x{ny}x{nz}, mode {mode}, "
            f"{nsymbt}-byte extended header) needs {expected} bytes but the file has "
            f"{file_size_bytes}; copy it again from the source"
        )
    if file_size_bytes > expected:
        raise HeaderMismatchError(
            f"{path_name}: the file has {file_size_bytes - expected} bytes more than its "
            f"header describes ({expected} bytes for {nx}x{ny}x{nz}, mode {mode}); "
            f"refusing to convert a file whose header does not match its size"
        )
    return header


def open_mrc(path: str | os.PathLike[str]) -> BinaryIO:
    """Open an MRC file for reading: links followed, but only to a regular file (never blocks).

    Raises :class:`NotMrcError` naming the file for a folder, a FIFO, a device, a
    missing file or one we may not read; other I/O errors stay ``OSError`` (naming the
    file): they are failures to retry, not properties of the data.
    """
    path = Path(path)
    try:
        return open_regular(os.path.realpath(path))
    except FileNotFoundError:
        raise NotMrcError(f"{path}: no such file") from None
    except PermissionError:
        raise NotMrcError(f"{path}: permission denied") from None
    except NotRegularFileError:
        if path.is_dir():
            raise NotMrcError(f"{path}: is a directory, not an MRC file") from None
        raise NotMrcError(
            f"{path}: is not a regular file (a FIFO, device or socket), not an MRC file"
        ) from None
    except OSError as error:
        # an I/O error (a flaky drive, too many open files) says nothing about the data: not NotMrcError
        raise OSError(error.errno, error.strerror or str(error), str(path)) from None


def read_header(path: str | os.PathLike[str]) -> MrcHeader:
    """Read and validate the header of the MRC file at ``path``."""
    path = Path(path)
    with open_mrc(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        raw = handle.read(HEADER_SIZE_BYTES)
    return parse_header(raw, path_name=str(path), file_size_bytes=size)


def unpack_4bit(packed: npt.NDArray[np.uint8], *, nx: int) -> npt.NDArray[np.uint8]:
    """Unpack mode-101 rows (low nibble first, each row padded to a byte) to uint8."""
    ny = packed.shape[0]
    out = np.empty((ny, 2 * packed.shape[1]), dtype=np.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return out[:, :nx]


def pack_4bit(
    values: npt.NDArray[np.uint8], *, pad_nibbles: npt.NDArray[np.uint8] | None = None
) -> npt.NDArray[np.uint8]:
    """Pack uint8 values 0-15 two per byte, low nibble first (inverse of :func:`unpack_4bit`).

    For odd widths each row ends in a half-used byte whose high nibble is taken
    from ``pad_nibbles`` (one per row, default 0).
    """
    ny, nx = values.shape
    width = (nx + 1) // 2
    padded = np.zeros((ny, 2 * width), dtype=np.uint8)
    padded[:, :nx] = values
    if nx % 2 and pad_nibbles is not None:
        padded[:, nx] = pad_nibbles
    return (padded[:, 0::2] | (padded[:, 1::2] << 4)).astype(np.uint8)


#: The read-ahead window assumed where the file system does not say (Linux's default).
DEFAULT_READ_AHEAD_BYTES = 128 * 1024
#: Largest piece of a frame hinted at once (a window of more than this is unusual).
MAX_PREFETCH_PIECE_BYTES = 16 << 20


def read_ahead_window_bytes(path: str | os.PathLike[str]) -> int:
    """The read-ahead window of the device or file system holding ``path`` (``read_ahead_kb``).

    Linux reads at most this much (or the device's largest request, if larger) per
    ``posix_fadvise(WILLNEED)`` call, whatever length the call names: hints are given in
    pieces of this size. :data:`DEFAULT_READ_AHEAD_BYTES` where it is not known.
    """
    try:
        device = os.stat(path).st_dev
    except OSError:
        return DEFAULT_READ_AHEAD_BYTES
    name = f"{os.major(device)}:{os.minor(device)}"
    for candidate in (  # the backing device (also network file systems), a disk, a partition's disk
        f"/sys/class/bdi/{name}/read_ahead_kb",
        f"/sys/dev/block/{name}/queue/read_ahead_kb",
        f"/sys/dev/block/{name}/../queue/read_ahead_kb",
    ):
        try:
            window_bytes = int(Path(candidate).read_text().strip()) * 1024
        except (OSError, ValueError):
            continue
        if window_bytes > 0:
            return min(window_bytes, MAX_PREFETCH_PIECE_BYTES)
    return DEFAULT_READ_AHEAD_BYTES


class _Prefetcher:
    """Hints one frame at a time to the kernel from a helper thread, piece by piece.

    ``posix_fadvise(WILLNEED)`` is partly synchronous (it waits while the device's queue is
    full) and Linux reads at most one read-ahead window per call (measured: 8 of a 64 MiB
    frame), so the whole frame is hinted window by window, off the caller's thread. Nothing
    is read into the process: the kernel fills its page cache, and the caller's own read of
    the frame (the only one) then finds it there. A new hint supersedes an unfinished one.
    """

    def __init__(self, descriptor: int, piece_bytes: int) -> None:
        self.descriptor = descriptor
        self.piece_bytes = piece_bytes
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="empcompress-prefetch")
        self._generation = 0
        self._lock = threading.Lock()

    def hint(self, offset: int, size_bytes: int) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._pool.submit(self._advise, generation, offset, size_bytes)

    def _advise(self, generation: int, offset: int, size_bytes: int) -> None:
        end = offset + size_bytes
        for start in range(offset, end, self.piece_bytes):
            if self._generation != generation:  # superseded, or closing
                return
            with contextlib.suppress(OSError):
                os.posix_fadvise(
                    self.descriptor, start, min(self.piece_bytes, end - start), os.POSIX_FADV_WILLNEED
                )

    def close(self) -> None:
        """Stop hinting and wait for the helper: the descriptor may be closed after this."""
        with self._lock:
            self._generation += 1
        self._pool.shutdown(wait=True, cancel_futures=True)


class MrcMovie:
    """An open MRC movie, read frame by frame.

    Use as a context manager. ``read_raw_frame`` returns the frame's bytes as
    stored; ``read_frame`` returns its values (shape ``(ny, nx)``, MRC row order,
    dtype :attr:`MrcHeader.value_dtype`). Both reuse an internal buffer unless
    ``out`` is given, so copy a frame you want to keep.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header = read_header(self.path)
        self._handle: BinaryIO | None = open_mrc(self.path)
        self._buffer: npt.NDArray[np.uint8] | None = None  # allocated on first use, let go on close
        self._prefetcher: _Prefetcher | None = None  # started on the first hint, stopped on close

    def __enter__(self) -> MrcMovie:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._buffer = None
        if self._prefetcher is not None:  # before the descriptor it uses is closed
            self._prefetcher.close()
            self._prefetcher = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _file(self) -> BinaryIO:
        if self._handle is None:
            raise ValueError(f"{self.path}: the movie is closed")
        return self._handle

    def read_header_bytes(self) -> bytes:
        """The 1024-byte main header exactly as stored."""
        handle = self._file()
        handle.seek(0)
        return handle.read(HEADER_SIZE_BYTES)

    def read_extended_header_bytes(self) -> bytes:
        """The extended header exactly as stored (may be empty)."""
        handle = self._file()
        handle.seek(HEADER_SIZE_BYTES)
        return handle.read(self.header.extended_header_size_bytes)

    def read_raw_frame(
        self, index: int, *, out: npt.NDArray[np.uint8] | None = None
    ) -> npt.NDArray[np.uint8]:
        """The stored bytes of frame ``index`` (a flat uint8 array)."""
        header = self.header
        if not 0 <= index < header.nz:
            raise IndexError(f"{self.path}: frame {index} out of range 0..{header.nz - 1}")
        handle = self._file()
        if out is None and self._buffer is None:
            self._buffer = np.empty(header.frame_size_bytes, dtype=np.uint8)
        buffer = self._buffer if out is None else out
        assert buffer is not None
        handle.seek(header.data_offset_bytes + index * header.frame_size_bytes)
        n_read = handle.readinto(buffer.data)  # type: ignore[attr-defined]
        if n_read != header.frame_size_bytes:
            raise TruncatedFileError(
                f"{self.path}: frame {index} is incomplete ({n_read} of "
                f"{header.frame_size_bytes} bytes); the file changed or is truncated"
            )
        return buffer

    def prefetch(self, index: int) -> None:
        """Ask the kernel to read frame ``index`` now (``posix_fadvise(WILLNEED)``), if it can.

        The read pass calls it for the next frame before working on the current one, so that
        reading from a cold disk overlaps the work (the kernel's own read-ahead is far smaller
        than a frame). The hints go from a helper thread, one read-ahead window at a time (see
        :class:`_Prefetcher`); a new call supersedes an unfinished one. Only a hint: nothing is
        read into the process, and nothing changes if the platform has no ``posix_fadvise``.
        """
        header = self.header
        if not 0 <= index < header.nz or not hasattr(os, "posix_fadvise"):
            return
        if self._prefetcher is None:
            self._prefetcher = _Prefetcher(self._file().fileno(), read_ahead_window_bytes(self.path))
        self._prefetcher.hint(
            header.data_offset_bytes + index * header.frame_size_bytes, header.frame_size_bytes
        )

    def values_from_raw(self, raw: npt.NDArray[np.uint8]) -> npt.NDArray[np.generic]:
        """View (or, for mode 101, unpack) raw frame bytes as values of shape (ny, nx)."""
        header = self.header
        if header.mode == 101:
            return unpack_4bit(raw.reshape(header.ny, (header.nx + 1) // 2), nx=header.nx)
        return raw.view(header.value_dtype).reshape(header.ny, header.nx)

    def read_frame(self, index: int) -> npt.NDArray[np.generic]:
        """Values of frame ``index``, shape (ny, nx), MRC row order."""
        return self.values_from_raw(self.read_raw_frame(index))

    def read_rows(
        self, index: int, row_start: int, row_stop: int, *, out: npt.NDArray[np.uint8] | None = None
    ) -> npt.NDArray[np.generic]:
        """Values of rows ``row_start:row_stop`` of frame ``index``, shape (rows, nx), MRC row order.

        Only those rows are read (a frame's rows are contiguous, mode-101 rows padded to a
        byte). Into ``out`` (flat uint8 of the rows' stored size) when given, else a new buffer.
        """
        header = self.header
        if not 0 <= index < header.nz:
            raise IndexError(f"{self.path}: frame {index} out of range 0..{header.nz - 1}")
        if not 0 <= row_start < row_stop <= header.ny:
            raise IndexError(f"{self.path}: rows {row_start}:{row_stop} out of range 0:{header.ny}")
        row_size_bytes = header.frame_size_bytes // header.ny
        size_bytes = (row_stop - row_start) * row_size_bytes
        if out is not None and (out.dtype != np.uint8 or out.shape != (size_bytes,)):
            raise ValueError(f"a buffer for {row_stop - row_start} rows is {size_bytes} uint8 bytes")
        buffer = np.empty(size_bytes, dtype=np.uint8) if out is None else out
        handle = self._file()
        handle.seek(header.data_offset_bytes + index * header.frame_size_bytes + row_start * row_size_bytes)
        n_read = handle.readinto(buffer.data)  # type: ignore[attr-defined]
        if n_read != size_bytes:
            raise TruncatedFileError(
                f"{self.path}: rows {row_start}:{row_stop} of frame {index} are incomplete ({n_read} of "
                f"{size_bytes} bytes); the file changed or is truncated"
            )
        n_rows = row_stop - row_start
        if header.mode == 101:
            return unpack_4bit(buffer.reshape(n_rows, row_size_bytes), nx=header.nx)
        return buffer.view(header.value_dtype).reshape(n_rows, header.nx)

    def iter_frames(self) -> Iterator[npt.NDArray[np.generic]]:
        for index in range(self.header.nz):
            yield self.read_frame(index)
