"""The compress job's journal: one SQLite database in DEST recording every file's state.

The journal lives in ``DEST/.empcompress/journal.sqlite``, outside the bag's
payload (``data/``) and outside its tag manifests, because it changes with every
run. Only the driver process (the one running ``empcompress compress``) opens
it; workers never touch it (a :class:`Journal` cannot be pickled, and refuses to be
used from another process than the one that opened it). Each file's row is
written *after* the output it describes has been fsync'ed and renamed into place,
so after a crash, Ctrl-C or ``kill -9``:

- a row in state ``done`` always describes an output that exists and was verified;
- an output under its final name without a ``done`` row is never trusted: it is
  redone (the rename is atomic, so it is a complete file or none at all).

DEST may be on a shared file system (NFS, Lustre, GPFS), so the journal uses
SQLite's rollback journal (``journal_mode=DELETE``, ``synchronous=FULL``), not WAL:
WAL needs shared memory between the processes of one host and SQLite documents that
it does not work over a network file system. Since one process alone opens the
database, SQLite's own file locks only ever meet that process.

Runs are exclusive: :mod:`empcompress.runlock` takes an ``flock`` and an owner file
created atomically with the owner's host, pid and boot id, for as long as the
journal is open; a second run on the same DEST, from this host or another, is
refused with a message naming the process that holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from . import runlock
from .errors import PipelineError
from .runlock import LOCK_FILENAME, RunLock

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

#: Our journal and lock live here (beside the bag, not part of it).
STATE_DIRNAME = ".empcompress"
JOURNAL_FILENAME = "journal.sqlite"
SCHEMA_VERSION = 2

STATE_PENDING = "pending"
STATE_DONE = "done"
STATE_FAILED = "failed"

#: A movie converted to a verified TIFF stack.
OUTCOME_CONVERTED = "converted"
#: A file that is not a movie, copied byte for byte.
OUTCOME_COPIED = "copied"
#: A movie that could not be converted (corrupt, unreadable as MRC, ...), copied byte for byte instead.
OUTCOME_KEPT_AS_IS = "kept-as-is"


@dataclass(frozen=True, slots=True)  # no per-row __dict__: a run holds a row per file of the drive
class JournalEntry:
    """One source file's state. Paths are POSIX, relative to SRC and to the payload (``data/``)."""

    rel_path: str  # as os.fsdecode gives it (non-UTF-8 bytes as surrogates); stored as bytes
    category: str
    action: str  # "convert" | "copy"
    state: str  # pending | done | failed
    source_size_bytes: int
    source_mtime_ns: int
    output_rel_path: str  # always a portable name (see empcompress.pipeline.layout)
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
    source_ctime_ns: int = 0  # 0 where the file system gives none
    source_inode: int = 0


@dataclass(frozen=True, slots=True)
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
_UPDATED_AT = _ENTRY_FIELDS.index("updated_at")
_SQL_TYPES = {
    "int": "INTEGER",
    "float": "REAL",
    "str": "TEXT",
}  # field types are strings (postponed annotations)
#: Columns that hold file names exactly as the file system gives them: stored as bytes (BLOB), so that a
#: name that is not valid UTF-8 is kept as it is.
_BYTES_COLUMNS = frozenset({"rel_path"})


def _columns(cls: type, key: str) -> str:
    parts = []
    for field in fields(cls):
        sql_type = "BLOB" if field.name in _BYTES_COLUMNS else _SQL_TYPES.get(str(field.type), "TEXT")
        default = {"INTEGER": " DEFAULT 0", "REAL": " DEFAULT 0", "TEXT": " DEFAULT ''"}.get(sql_type, "")
        parts.append(
            f"{field.name} {sql_type}{' PRIMARY KEY' if field.name == key else ' NOT NULL' + default}"
        )
    return ", ".join(parts)


def _to_sql(name: str, value: Any) -> Any:
    if name in _BYTES_COLUMNS:
        return os.fsencode(value)
    if isinstance(value, str) and not value.isascii():
        # messages may quote file names that are not UTF-8: keep them readable, never fail to store them
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _upsert_sql(table: str, columns: Sequence[str]) -> str:
    return f"INSERT OR REPLACE INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


_UPSERT_FILE = _upsert_sql("files", _ENTRY_FIELDS)
_UPSERT_GENERATED = _upsert_sql("generated", _GENERATED_FIELDS)


def _from_sql(name: str, value: Any) -> Any:
    if name in _BYTES_COLUMNS and isinstance(value, bytes):
        return os.fsdecode(value)
    return value


def _entry(row: Sequence[Any]) -> JournalEntry:
    # the one bytes column is the first (rel_path): decoded alone, the rest as SQLite gives them
    return JournalEntry(_from_sql(_ENTRY_FIELDS[0], row[0]), *row[1:])


def journal_path(dest: str | os.PathLike[str]) -> Path:
    """Where the journal of a destination lives."""
    return Path(dest) / STATE_DIRNAME / JOURNAL_FILENAME


def is_journal_dest(dest: str | os.PathLike[str]) -> bool:
    """Whether ``dest`` holds an empcompress journal (a destination we made)."""
    return journal_path(dest).is_file()


class Journal:
    """The open, locked journal of one destination. Use as a context manager."""

    def __init__(self, dest: Path, connection: sqlite3.Connection, lock: RunLock) -> None:
        self.dest = dest
        self._connection = connection
        self._lock_handle: RunLock | None = lock
        self._pid = os.getpid()
        self._batch: sqlite3.Cursor | None = None  # the open transaction of batch(), if any

    def __reduce__(self) -> Any:
        raise TypeError(
            f"{journal_path(self.dest)}: the journal stays in the process that opened it (the compress "
            f"command); it is never sent to a worker"
        )

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
        lock_handle = runlock.acquire(state_dir, dest=dest)
        try:
            connection = sqlite3.connect(state_dir / JOURNAL_FILENAME, timeout=30.0, isolation_level=None)
            # rollback journal, not WAL (which needs one host's shared memory: unsafe on NFS and Lustre);
            # converts a journal that an earlier version left in WAL mode. FULL: a committed row survives
            # a power cut too (rows are written in batches, so the syncs are few).
            mode = connection.execute("PRAGMA journal_mode=DELETE").fetchone()
            if mode is None or str(mode[0]).lower() != "delete":
                raise sqlite3.OperationalError(f"cannot leave journal mode {mode}")
            connection.execute("PRAGMA synchronous=FULL")
            journal = cls(dest, connection, lock_handle)
            journal._create_schema()
            journal._check_source(source)
        except sqlite3.Error as error:
            lock_handle.release()
            if "full" in str(error).lower():
                raise PipelineError(
                    f"{state_dir / JOURNAL_FILENAME}: the disk holding the destination is full ({error}); "
                    f"free space there and run the same command again: every file finished so far is kept"
                ) from None
            raise PipelineError(
                f"{state_dir / JOURNAL_FILENAME}: the journal cannot be opened ({error}); if the disk is "
                f"healthy and the file is damaged, move the whole destination aside and compress again"
            ) from None
        except BaseException:
            lock_handle.release()
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
            row = cursor.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is not None and row[0] == "1":
                _migrate_from_1(cursor)
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
            self._connection.close()
        finally:
            self._lock_handle.release()
            self._lock_handle = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_usable(self) -> None:
        if self._lock_handle is None:
            raise PipelineError(f"{journal_path(self.dest)}: the journal is closed")
        if os.getpid() != self._pid:
            raise PipelineError(
                f"{journal_path(self.dest)}: the journal is used only by the process that opened it"
            )

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Every write inside the block goes into one transaction: one commit (and its syncs) for many
        rows. Rows are still recorded only once their outputs are in place, so whatever was recorded
        is committed even when the block ends with an exception (a stop, a lost cluster); only an
        error of the journal itself rolls the batch back (those outputs are redone by the next run)."""
        if self._batch is not None:  # nested: part of the outer batch
            yield
            return
        self._check_usable()
        try:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise self._error(error) from None
        self._batch = cursor
        journal_failed = False
        try:
            yield
        except sqlite3.Error as error:
            journal_failed = True
            raise self._error(error) from None
        finally:
            self._batch = None
            try:
                # SQLite ends the transaction itself on some errors (a full disk): then there is
                # nothing to commit, and the error already on its way says what happened
                if self._connection.in_transaction:
                    cursor.execute("ROLLBACK" if journal_failed else "COMMIT")
            except sqlite3.Error as error:
                with contextlib.suppress(sqlite3.Error):
                    cursor.execute("ROLLBACK")
                raise self._error(error) from None
            finally:
                cursor.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        self._check_usable()
        if self._batch is not None:
            yield self._batch  # committed by batch()
            return
        try:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise self._error(error) from None
        try:
            yield cursor
            cursor.execute("COMMIT")
        except BaseException as error:
            with contextlib.suppress(sqlite3.Error):
                cursor.execute("ROLLBACK")
            if isinstance(error, sqlite3.Error):
                raise self._error(error) from None
            raise
        finally:
            cursor.close()

    # ------------------------------------------------------------ meta

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def _read(self, query: str, parameters: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._connection.execute(query, parameters).fetchall()
        except sqlite3.Error as error:
            raise self._error(error) from None

    def _error(self, error: sqlite3.Error) -> PipelineError:
        path = journal_path(self.dest)
        text = str(error)
        if "full" in text.lower():
            return PipelineError(
                f"{path}: the disk holding the destination is full ({text}); free space there and run the "
                f"same command again: every file finished so far is kept"
            )
        return PipelineError(
            f"{path}: the journal cannot be read or written ({text}); check the destination's disk and "
            f"run the same command again"
        )

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as cursor:
            cursor.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # ------------------------------------------------------------ files

    def entries(self) -> dict[str, JournalEntry]:
        """Every file's row, by source-relative path."""
        rows = self._read(f"SELECT {', '.join(_ENTRY_FIELDS)} FROM files ORDER BY rel_path")
        return {entry.rel_path: entry for entry in map(_entry, rows)}

    def get(self, rel_path: str) -> JournalEntry | None:
        rows = self._read(
            f"SELECT {', '.join(_ENTRY_FIELDS)} FROM files WHERE rel_path = ?", (os.fsencode(rel_path),)
        )
        return _entry(rows[0]) if rows else None

    def record(self, entry: JournalEntry) -> JournalEntry:
        """Insert or replace one file's row (one transaction); returns it with its time stamp."""
        values = [getattr(entry, name) for name in _ENTRY_FIELDS]  # flat fields: no deep copy (asdict's)
        values[_UPDATED_AT] = time.time()
        self._upsert(
            _UPSERT_FILE, [_to_sql(name, value) for name, value in zip(_ENTRY_FIELDS, values, strict=True)]
        )
        return JournalEntry(*values)

    def _upsert(self, statement: str, values: Sequence[Any]) -> None:
        """Insert or replace one row (one transaction, or part of the open batch)."""
        with self._transaction() as cursor:
            cursor.execute(statement, values)

    def remove(self, rel_path: str) -> None:
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM files WHERE rel_path = ?", (os.fsencode(rel_path),))

    # ------------------------------------------------------------ generated files

    def generated_entries(self) -> dict[str, GeneratedEntry]:
        rows = self._read(f"SELECT {', '.join(_GENERATED_FIELDS)} FROM generated ORDER BY output_rel_path")
        return {row[0]: GeneratedEntry(*row) for row in rows}

    def record_generated(self, entry: GeneratedEntry) -> GeneratedEntry:
        entry = replace(entry, updated_at=time.time())
        self._upsert(_UPSERT_GENERATED, [_to_sql(name, getattr(entry, name)) for name in _GENERATED_FIELDS])
        return entry

    def remove_generated(self, output_rel_path: str) -> None:
        with self._transaction() as cursor:
            cursor.execute("DELETE FROM generated WHERE output_rel_path = ?", (output_rel_path,))


def _migrate_from_1(cursor: sqlite3.Cursor) -> None:
    """Schema 1 -> 2: file names as bytes (BLOB), ctime and inode columns (inside the open transaction)."""
    old = [row[1] for row in cursor.execute("PRAGMA table_info(files)")]
    cursor.execute("ALTER TABLE files RENAME TO files_v1")
    cursor.execute(f"CREATE TABLE files ({_columns(JournalEntry, 'rel_path')})")
    shared = [name for name in _ENTRY_FIELDS if name in old]
    for row in cursor.execute(f"SELECT {', '.join(shared)} FROM files_v1").fetchall():
        values = [_to_sql(name, value) for name, value in zip(shared, row, strict=True)]
        cursor.execute(
            f"INSERT INTO files ({', '.join(shared)}) VALUES ({', '.join('?' for _ in shared)})", values
        )
    cursor.execute("DROP TABLE files_v1")
    cursor.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))


# ---------------------------------------------------------------- the lock


def ensure_not_locked(dest: str | os.PathLike[str]) -> None:
    """Raise :class:`JournalLockedError` now if another run holds ``dest`` (a quick check before
    starting a cluster; :meth:`Journal.open` takes the lock for real)."""
    runlock.check_free(Path(dest) / STATE_DIRNAME, dest=Path(dest))
