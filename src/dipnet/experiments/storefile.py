"""The run store's file before dipnet writes to it: a dipnet store or refused unchanged; the row
checksum; SQLite's errors as one line that names the real cause."""
from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError, DataError

SCHEMA_VERSION = 1
# What reading a damaged file raises: SQLite's own error, or a stored text/JSON field that no longer decodes.
DAMAGED = (sqlite3.DatabaseError, UnicodeDecodeError, json.JSONDecodeError)
_HEADER = b"SQLite format 3\x00"


def checksum(values: Iterable[Any]) -> str:
    """SHA-256 of a row's sealed values, in order."""
    return hashlib.sha256(json.dumps(list(values)).encode()).hexdigest()


def sqlite_error(path: Path, exc: Exception, damaged: str) -> DataError:
    """SQLite's error as one line: a read-only file or one that cannot be opened is said to be
    one, anything else is ``damaged``."""
    if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc):
        return DataError(f"{path} is read-only (SQLite says: {exc}); make it writable, or copy it and use the copy")
    if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
        return DataError(f"{path} cannot be opened (SQLite says: {exc}); check the permissions of the file and its folder")
    return DataError(f"{path} {damaged} (SQLite says: {exc})")


def layout(conn: sqlite3.Connection) -> tuple[set[str], set[str]]:
    """The database's tables and the columns of its ``runs`` table."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    return tables, {r[1] for r in conn.execute("PRAGMA table_info(runs)")}


def open_existing(path: Path) -> sqlite3.Connection:
    """A read-only connection to ``path`` once it is known to be a dipnet store (nothing is written
    before that); an empty file, a file of another kind or someone else's database is refused."""
    if not path.is_file():
        raise ConfigError(f"{path} is not a file; give a run store file with --store")
    with open(path, "rb") as fh:
        head = fh.read(len(_HEADER))
    if not head:
        raise DataError(f"{path} is an empty file, not a dipnet run store; dipnet will not turn it into one: delete "
                        "it or choose another --store")
    if head != _HEADER:
        raise DataError(f"{path} is not a dipnet run store (not an SQLite database); choose another --store")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0, isolation_level=None)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() \
            if {"runs", "meta"} <= layout(conn)[0] else None
        if row is None:
            raise DataError(f"{path} is an SQLite database that dipnet did not write (no run tables); dipnet will not "
                            "change it: choose another --store")
        if str(row[0]) != str(SCHEMA_VERSION):
            raise DataError(f"{path}: run store schema {row[0]}, this dipnet reads {SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn


# The store's tables (created if absent; an older store gains what it lacks).
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key       TEXT PRIMARY KEY,
    suite     TEXT NOT NULL,
    task      TEXT NOT NULL,
    method    TEXT NOT NULL,
    seed      INTEGER NOT NULL,
    status    TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    config    TEXT NOT NULL,
    results   TEXT,
    error     TEXT,
    attempts  INTEGER NOT NULL DEFAULT 0,
    owner     TEXT,
    created   REAL NOT NULL,
    started   REAL,
    finished  REAL,
    checksum  TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_suite ON runs (suite, status);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS members (
    suite     TEXT NOT NULL,
    key       TEXT NOT NULL REFERENCES runs (key),
    task      TEXT NOT NULL,
    method    TEXT NOT NULL,
    seed      INTEGER NOT NULL,
    PRIMARY KEY (suite, key)
);
"""
RUN_COLUMNS = ("key", "suite", "task", "method", "seed", "status", "config", "results", "error", "attempts",
               "owner", "created", "started", "finished", "checksum")
SEALED = ("key", "suite", "task", "method", "seed", "status", "config", "results", "error")  # what the checksum covers
