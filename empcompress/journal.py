"""The compress job's journal: one SQLite database in DEST recording every file's state.

The journal lives in ``DEST/.empcompress/journal.sqlite``, outside the bag's
payload (``data/``) and outside its tag manifests, because it changes with every
run. Only the driver process (the one running ``empcompress compress``) writes
it; workers never touch it. Each file's row is written in its own transaction
(WAL mode, ``synchronous=NORMAL``), always *after* the output it describes has
been fsync'ed and renamed into place, so after a crash, Ctrl-C or ``kill -9``:

- a row in state ``done`` always describes an output that exists and was verified;
- an output under its final name without a ``done`` row is never trusted: it is
  redone (the rename is atomic, so it is a complete file or none at all).

Runs are exclusive: the journal takes an ``flock`` on ``DEST/.empcompress/lock``
for as long as it is open (the kernel drops it when the process dies, even on
``kill -9``), and a second run on the same DEST is refused with a message naming
the process that holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from .errors import JournalLockedError, PipelineError

__all__ = [
    "STATE_DIRNAME",
    "JOURNAL_FILENAME",
    "LOCK_FILENAME",
    "STATE_PENDING",
    "STATE_DONE",
    "STATE_FAILED",
    "OUTCOME_CONVERTED",
    "OUTCOME_COPIED",
    "OUTCOME_KEPT_AS_IS",
    "JournalEntry",
    "GeneratedEntry",
    "Journal",
    "journal_path",
    "is_journal_dest",
    "ensure_not_locked",
]

STATE_DIRNAME = ".empcompress"
JOURNAL_FILENAME = "journal.sqlite"
LOCK_FILENAME = "lock"
SCHEMA_VERSION = 1

STATE_PENDING = "pending"
STATE_DONE = "done"
STATE_FAILED = "failed"

#: A movie converted to a verified TIFF stack.
OUTCOME_CONVERTED = "converted"
#: A file that is not a movie, copied byte for byte.
OUTCOME_COPIED = "copied"
#: A movie that could not be converted (corrupt, unreadable as MRC, ...), copied byte for byte instead.
OUTCOME_KEPT_AS_IS = "kept-as-is"


@dataclass(frozen=True)
class JournalEntry:
    """One source file's state. Paths are POSIX, relative to SRC and to the payload (``data/``)."""

    rel_path: str
    category: str
    action: str  # "convert" | "copy"
    state: str  # pending | done | failed
    source_size_bytes: int
    source_mtime_ns: int
    output_rel_path: str
    source_sha256: str = ""
    outcome: str = ""  # converted | copied | kept-as-is (when done)
    output_size_bytes: int = 0
    output_sha256: str = ""
    output_md5: str = ""
    stored_dtype: str = ""
    decision: str = ""
    codec: str = ""
    gain_reference: str = ""  # payload-relative path of the gain reference used, if any
    message: str = ""  # failure reason, or why a movie was kept as it is
    attempts: int = 0
    elapsed_seconds: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class GeneratedEntry:
    """A payload file we made ourselves (a gain reference estimated for a set of movies)."""

    output_rel_path: str
    kind: str  # "gain-reference"
    state: str
    output_size_bytes: int = 0
    output_sha256: str = ""
    output_md5: str = ""
    detail_json: str = "{}"  # e.g. the set's folder, members used for estimation, exception pixels
    updated_at: float = 0.0

    @property
    def detail(self) -> dict[str, Any]:
        value = json.loads(self.detail_json)
        return value if isinstance(value, dict) else {}


_ENTRY_FIELDS = [field.name for field in fields(JournalEntry)]
_GENERATED_FIELDS = [field.name for field in fields(GeneratedEntry)]
_SQL_TYPES = {
    "int": "INTEGER",
    "float": "REAL",
    "str": "TEXT",
}  # field types are strings (postponed annotations)


def _columns(cls: type, key: str) -> str:
    parts = []
    for field in fields(cls):
        sql_type = _SQL_TYPES.get(str(field.type), "TEXT")
        parts.append(f"{field.name} {sql_type}{' PRIMARY KEY' if field.name == key else ' NOT NULL'}")
    return ", ".join(parts)


def journal_path(dest: str | os.PathLike[str]) -> Path:
    """Where the journal of a destination lives."""
    return Path(dest) / STATE_DIRNAME / JOURNAL_FILENAME


def is_journal_dest(dest: str | os.PathLike[str]) -> bool:
    """Whether ``dest`` holds an empcompress journal (a destination we made)."""
    return journal_path(dest).is_file()


class Journal:
    """The open, locked journal of one destination. Use as a context manager."""

    def __init__(self, dest: Path, connection: sqlite3.Connection, lock_handle: TextIO) -> None:
        self.dest = dest
        self._connection = connection
        self._lock_handle: TextIO | None = lock_handle

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, dest: str | os.PathLike[str], *, source: str) -> Journal:
        """Lock and open (or create) the journal of ``dest`` for the source tree ``source``.

        Raises :class:`JournalLockedError` when another run holds ``dest`` and
        :class:`PipelineError` when ``dest`` was made from another source.
        """
        dest = Path(dest)
        state_dir = dest / STATE_DIRNAME
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PipelineError(
                f"{state_dir}: cannot create the journal directory ({error.strerror})"
            ) from None
        lock_handle = _acquire_lock(state_dir / LOCK_FILENAME, dest=dest)
        try:
            connection = sqlite3.connect(state_dir / JOURNAL_FILENAME, timeout=30.0, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a crash of the process (kill -9) loses nothing that was committed; a
            # power cut may lose the last rows, never invent one, and their outputs are simply redone.
            connection.execute("PRAGMA synchronous=NORMAL")
            journal = cls(dest, connection, lock_handle)
            journal._create_schema()
            journal._check_source(source)
        except sqlite3.DatabaseError as error:
            _release_lock(lock_handle)
            raise PipelineError(
                f"{state_dir / JOURNAL_FILENAME}: the journal cannot be opened ({error}); "
                f"move it away to start this destination afresh"
            ) from None
        except BaseException:
            _release_lock(lock_handle)
            raise
        return journal

    def _create_schema(self) -> None:
        with self._transaction() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cursor.execute(f"CREATE TABLE IF NOT EXISTS files ({_columns(JournalEntry, 'rel_path')})")
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS generated ({_columns(GeneratedEntry, 'output_rel_path')})"
            )
            cursor.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        version = self.get_meta("schema_version")
        if version != str(SCHEMA_VERSION):
            raise PipelineError(
                f"{journal_path(self.dest)}: journal schema {version} is not supported by this version "
                f"(schema {SCHEMA_VERSION}); use the empcompress version that made it"
            )

    def _check_source(self, source: str) -> None:
        recorded = self.get_meta("source")
        if recorded is None:
            self.set_meta("source", source)
        elif recorded != source:
            raise PipelineError(
                f"{self.dest}: this destination was made from {recorded}, not {source}; "
                f"choose another destination (or the same source)"
            )

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        if self._lock_handle is None:
            return
        try:
            with contextlib.suppress(sqlite3.Error):
                self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._connection.close()
        finally:
            _release_lock(self._lock_handle)
            self._lock_handle = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        if self._lock_handle is None:
            raise PipelineError(f"{journal_path(self.dest)}: the journal is closed")
        cursor = self._connection.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            yield cursor
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        else:
            cursor.execute("COMMIT")
        finally:
            cursor.close()

    # ------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as cursor:
            cursor.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------ files

    def entries(self) -> dict[str, JournalEntry]:
        """Every file's row, by source-relative path."""
        rows = self._connection.execute(f"SELECT {', '.join(_ENTRY_FIELDS)} FROM files ORDER BY rel_path")
        return {row[0]: JournalEntry(*row) for row in rows}

    def get(self, rel_path: str) -> JournalEntry | None:
        row = self._connection.execute(
            f"SELECT {', '.join(_ENTRY_FIELDS)} FROM files WHERE rel_path = ?", (rel_path,)
        ).fetchone()
        return None if row is None else JournalEntry(*row)

    def record(self, entry: JournalEntry) -> JournalEntry:
        """Insert or replace one file's row (one transaction); returns it with its time stamp."""
        entry = replace(entry, updated_at=time.time())
        self._upsert("files", _ENTRY_FIELDS, asdict(entry))
        return entry

    def _upsert(self, table: str, columns: Sequence[str], values: dict[str, Any]) -> None:
        """Insert or replace one row of ``table`` (one transaction)."""
        with self._transaction() as cursor:
            cursor.execute(
                f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)})",
                [values[name] for name in columns],
            )

    def remove(self, rel_path: str) -> None:
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM files WHERE rel_path = ?", (rel_path,))

    # ------------------------------------------------------------ generated files

    def generated_entries(self) -> dict[str, GeneratedEntry]:
        rows = self._connection.execute(
            f"SELECT {', '.join(_GENERATED_FIELDS)} FROM generated ORDER BY output_rel_path"
        )
        return {row[0]: GeneratedEntry(*row) for row in rows}

    def record_generated(self, entry: GeneratedEntry) -> GeneratedEntry:
        entry = replace(entry, updated_at=time.time())
        self._upsert("generated", _GENERATED_FIELDS, asdict(entry))
        return entry

    def remove_generated(self, output_rel_path: str) -> None:
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM generated WHERE output_rel_path = ?", (output_rel_path,))


# ---------------------------------------------------------------- the lock


def ensure_not_locked(dest: str | os.PathLike[str]) -> None:
    """Raise :class:`JournalLockedError` now if another run holds ``dest`` (a quick check before
    starting a cluster; :meth:`Journal.open` takes the lock for real)."""
    lock_path = Path(dest) / STATE_DIRNAME / LOCK_FILENAME
    if lock_path.is_file():
        _release_lock(_acquire_lock(lock_path, dest=Path(dest), announce=False), clear=False)


def _acquire_lock(lock_path: Path, *, dest: Path, announce: bool = True) -> TextIO:
    handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the journal's lifetime)
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise JournalLockedError(
            f"{dest}: another empcompress run is using this destination ({holder}); "
            f"two runs on one destination are refused: wait for it to finish or stop it, then run again"
        ) from None
    except OSError as error:
        handle.close()
        raise PipelineError(f"{lock_path}: cannot lock the destination ({error.strerror})") from None
    if not announce:
        return handle
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    handle.flush()
    return handle


def _release_lock(handle: TextIO, *, clear: bool = True) -> None:
    if clear:
        with contextlib.suppress(OSError):
            handle.seek(0)
            handle.truncate()
            handle.flush()
    with contextlib.suppress(OSError):
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    handle.close()
