"""What a scan produces: the categories and actions, one entry per file, the plan and its totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

CATEGORY_MOVIE = "movie"
CATEGORY_MICROGRAPH = "micrograph"
CATEGORY_GAIN_REFERENCE = "gain-reference"
CATEGORY_DEFECT_FILE = "defect-file"
CATEGORY_OTHER = "other"
CATEGORIES: tuple[str, ...] = (
    CATEGORY_MOVIE,
    CATEGORY_MICROGRAPH,
    CATEGORY_GAIN_REFERENCE,
    CATEGORY_DEFECT_FILE,
    CATEGORY_OTHER,
)

ACTION_CONVERT = "convert"
ACTION_COPY = "copy"

KIND_COUNTS = "counts"
KIND_GAIN_NORMALISED = "gain-normalised"
KIND_FLOAT = "float"
KIND_UNREADABLE = "unreadable"

MRC_SUFFIXES = (".mrc", ".mrcs")
TIFF_SUFFIXES = (".tif", ".tiff")

#: Rough speeds for the time estimate where nothing was measured (bytes per second).
COPY_BYTES_PER_SECOND = 400e6
#: Whole conversion (read, survey, encode, verify, hashes, classification) against the trial
#: encoding of one frame with one codec; calibrated with benchmarks/bench_pipeline.py (4096x4096
#: float32 counts, 1 worker: 1.7 predicted 9 s for a measured 22 s).
CONVERT_TIME_FACTOR = 4.0


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One regular file of SRC and what will happen to it. Paths are POSIX, relative to SRC.

    A run holds one per file of the drive for its whole length (100,000 small files beside the
    movies of an EPU session), so an entry has no ``__dict__`` (slots), and the fields only MRC
    files use (mode, frames, frame size, header error) are shared defaults for all other files.
    """

    rel_path: str
    size_bytes: int
    mtime_ns: int
    category: str
    action: str
    output_rel_path: str  # relative to the bag's payload directory (data/), from the layout
    ctime_ns: int = 0
    inode: int = 0
    note: str = ""
    mode: int = -1  # MRC mode, -1 when not an MRC file
    n_frames: int = 0
    frame_width: int = 0
    frame_height: int = 0
    header_error: str = ""  # why an MRC-named file cannot be read as MRC

    @property
    def folder(self) -> str:
        parent = str(PurePosixPath(self.rel_path).parent)
        return "" if parent == "." else parent


@dataclass(frozen=True)
class SkippedEntry:
    """Something in SRC that will not be archived, and why.

    ``unreadable`` entries (a file or folder the run cannot read) are failures of a
    compress run; the others (links, devices, pipes) are not archived by design.
    """

    rel_path: str
    reason: str
    unreadable: bool = False


@dataclass(frozen=True)
class CategoryTotals:
    category: str
    n_files: int
    size_bytes: int
    n_convert: int
    n_copy: int


@dataclass(frozen=True)
class FolderTotals:
    folder: str
    n_files: int
    size_bytes: int
    n_movies: int
    movie_size_bytes: int


@dataclass(frozen=True)
class GroupPrediction:
    """Predicted storage of a group of movies (one folder, one frame size, one mode)."""

    folder: str
    frame_width: int
    frame_height: int
    mode: int
    n_movies: int
    size_bytes: int
    sampled: tuple[str, ...]
    n_sampled_frames: int
    kind: str  # counts | gain-normalised | float | unreadable
    stored_dtype: str
    codec: str
    predicted_ratio: float
    predicted_output_size_bytes: int
    predicted_seconds_one_worker: float
    reason: str


@dataclass(frozen=True)
class ScanPlan:
    """What a scan found and predicts."""

    source: str
    files: tuple[FileEntry, ...]
    skipped: tuple[SkippedEntry, ...]
    empty_folders: tuple[str, ...]  # a bag holds files only: these are listed in the report
    categories: tuple[CategoryTotals, ...]
    folders: tuple[FolderTotals, ...]
    predictions: tuple[GroupPrediction, ...]
    total_size_bytes: int
    expected_output_size_bytes: int
    expected_seconds: float
    n_workers_assumed: int
    scan_seconds: float
    gain_sets_supported: bool
    #: per frame size, the gain reference predicted for the gain-normalised movies (see gain.prediction)
    gain_groups: tuple[Any, ...] = ()

    @property
    def movies(self) -> tuple[FileEntry, ...]:
        return tuple(entry for entry in self.files if entry.action == ACTION_CONVERT)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (for ``empcompress scan --json``)."""
        return asdict(self)
