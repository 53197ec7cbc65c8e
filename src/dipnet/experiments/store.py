"""The run store: one SQLite file (standard library ``sqlite3``, WAL journal) with a row per run.

An existing file is first opened read-only and used only when it is a dipnet store (SQLite, with
dipnet's tables and schema version): someone else's database, or an empty file, is refused and
left as it was. ``create=False`` (reports, exports) keeps the connection read-only. Every row
carries the SHA-256 of its record (labels, status, config, results, error), written with every
change and verified on every read: a row changed outside dipnet is an error naming the run,
never a silently different number.

A row is keyed by :attr:`RunSpec.key` (the hash of the run's config) and moves through
``pending -> running -> done | failed``. Suites share runs of the same config (ERM at equal
epochs and at equal example-gradients is one run); table ``members`` says which runs make up
each suite now, under the suite's labels, so a report never mixes in runs that an edited suite
no longer contains. Every change is one transaction, so killing the
process at any moment leaves each row in one of those states; a row left ``running`` by a
process that no longer exists is put back to ``pending`` by :meth:`RunStore.recover`.
"""
from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from ..errors import ConfigError, DataError
from .runspec import RunSpec
from .storefile import DAMAGED, RUN_COLUMNS, SCHEMA, SCHEMA_VERSION, SEALED, checksum, layout, open_existing, sqlite_error

STATUSES = ("pending", "running", "done", "failed")



@dataclass(frozen=True)
class RunRecord:
    """A row of the store, JSON fields decoded."""

    key: str
    suite: str
    task: str
    method: str
    seed: int
    status: str
    spec: RunSpec
    results: dict[str, Any] | None
    error: str | None
    attempts: int
    owner: str | None
    created: float
    started: float | None
    finished: float | None

    @property
    def final(self) -> dict[str, Any]:
        return dict((self.results or {}).get("final", {}))

    @property
    def history(self) -> list[dict[str, Any]]:
        return list((self.results or {}).get("history", []))


def owner_id() -> str:
    """``host:pid`` of this process: who holds a ``running`` row."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def owner_alive(owner: str | None) -> bool:
    """Whether the process named by ``host:pid`` still runs (unknown hosts count as dead)."""
    if not owner or ":" not in owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return int(pid) != os.getpid() and _pid_alive(int(pid))


def _guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A damaged database file (SQLite's own error) becomes one DataError naming the file."""

    @functools.wraps(fn)
    def wrapper(self: "RunStore", *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except DAMAGED as exc:
            raise sqlite_error(self.path, exc, "is damaged; restore it from a copy, or start a new store with "
                                "--store") from None

    return wrapper


class RunStore:
    """A SQLite file of runs. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise ConfigError(f"no run store at {self.path}; run `dipnet compare SUITE.toml --store {self.path}` first")
        try:
            if self.path.exists():
                self.conn = open_existing(self.path)
                tables, columns = layout(self.conn)
                if create or "members" not in tables or "checksum" not in columns:  # an older store: brought up to date
                    self.conn.close()
                    self._open_for_writing()
                    if not create:
                        self.conn.close()
                        self.conn = open_existing(self.path)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._create()
                self._open_for_writing()
            self.conn.execute("PRAGMA busy_timeout=30000")
        except DAMAGED as exc:
            raise sqlite_error(self.path, exc, "is not a dipnet run store") from None

    def _create(self) -> None:
        """Make a new store whole under a temporary name, then link it into place: another process
        never sees a half-made (empty) store, and a store made meanwhile by another is kept."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        try:
            self._open_for_writing(tmp)
            self.conn.execute("PRAGMA journal_mode=DELETE")  # one file to link (WAL again once in place)
            self.conn.close()
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                pass
        finally:
            tmp.unlink(missing_ok=True)

    def _open_for_writing(self, path: Path | None = None) -> None:
        """Connect read-write (WAL journal); create the tables, or bring an older store's up to date."""
        self.conn = sqlite3.connect(str(path or self.path), timeout=30.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=30000")
        with self._tx():
            tables, columns = layout(self.conn)
            if "runs" in tables and "checksum" not in columns:
                self.conn.execute("ALTER TABLE runs ADD COLUMN checksum TEXT")  # a store from before checksums
                for row in self.conn.execute(f"SELECT {', '.join(SEALED)} FROM runs").fetchall():
                    self.conn.execute("UPDATE runs SET checksum=? WHERE key=?", (checksum(row), row[0]))
            for stmt in SCHEMA.strip().split(";"):
                if stmt.strip():
                    self.conn.execute(stmt)
            if self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() is None:
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            if "members" not in tables:  # a store written before suites had explicit members: use the row labels
                self.conn.execute("INSERT OR IGNORE INTO members SELECT suite, key, task, method, seed FROM runs")

    # -- plumbing
    def _tx(self) -> "_Transaction":
        return _Transaction(self.conn)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "RunStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- metadata
    @_guarded
    def set_meta(self, key: str, value: Any) -> None:
        with self._tx():
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @_guarded
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    # -- writing
    def _update(self, key: str, **fields: Any) -> bool:
        """Change one row (inside a transaction): its checksum verified first, then renewed; False
        if there is no such row."""
        row = self.conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE key=?", (key,)).fetchone()
        if row is None:
            return False
        values = dict(zip(RUN_COLUMNS, self._verified(row)))
        values.update(fields)
        values["checksum"] = checksum(values[c] for c in SEALED)
        names = [c for c in RUN_COLUMNS if c != "key"]
        self.conn.execute(f"UPDATE runs SET {', '.join(f'{c}=?' for c in names)} WHERE key=?",
                          (*(values[c] for c in names), key))
        return True

    @_guarded
    def add(self, specs: Iterable[RunSpec]) -> int:
        """Insert runs not yet in the store as ``pending`` and make them members of their suites;
        returns how many were new.

        A run already stored (same config, same key) keeps its status and results but takes the
        suite, task and method labels given now, so renaming a suite or a method keeps its runs.
        """
        with self._tx():
            return self._add(specs)

    @_guarded
    def set_suite(self, suite: str, specs: Iterable[RunSpec]) -> int:
        """Make ``specs`` the runs of ``suite``, in one transaction (adding new ones as ``pending``);
        runs the suite held before but not now stay in the store, outside the suite. Returns how
        many runs were new."""
        specs = list(specs)
        strangers = sorted({s.suite for s in specs} - {suite})
        if strangers:
            raise ConfigError(f"set_suite({suite!r}) got runs labelled for other suites: {', '.join(strangers)}")
        with self._tx():
            self.conn.execute("DELETE FROM members WHERE suite=?", (suite,))
            return self._add(specs)

    def _add(self, specs: Iterable[RunSpec]) -> int:
        now = time.time()
        new = 0
        for s in specs:
            blob = json.dumps(s.to_dict(), sort_keys=True)
            if not self._update(s.key, suite=s.suite, task=s.task, method=s.method, seed=s.seed, config=blob):
                sealed = checksum((s.key, s.suite, s.task, s.method, s.seed, "pending", blob, None, None))
                self.conn.execute(
                    "INSERT INTO runs (key, suite, task, method, seed, status, config, created, checksum) "
                    "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
                    (s.key, s.suite, s.task, s.method, s.seed, blob, now, sealed),
                )
                new += 1
            self.conn.execute("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?)",
                              (s.suite, s.key, s.task, s.method, s.seed))
        return new

    @_guarded
    def recover(self, keys: Iterable[str] | None = None) -> list[str]:
        """Put ``running`` rows whose owner process is gone back to ``pending``; returns their keys.

        Raises :class:`ConfigError` when a live process still owns a row: two ``compare``
        processes must not share a store.
        """
        reset = []
        wanted = None if keys is None else set(keys)
        with self._tx():
            rows = self.conn.execute("SELECT key, owner FROM runs WHERE status='running'").fetchall()
            for key, owner in rows:
                if wanted is not None and key not in wanted:
                    continue
                if owner_alive(owner):
                    raise ConfigError(
                        f"{self.path} is in use: run {key} is being trained by process {owner}; "
                        "wait for it or stop it first"
                    )
                self._update(key, status="pending", owner=None)
                reset.append(key)
        return reset

    @_guarded
    def reset(self, keys: Iterable[str], statuses: tuple[str, ...] = ("done", "failed")) -> int:
        """Mark the given runs ``pending`` again (to retrain them) if their status is in ``statuses``."""
        n = 0
        marks = ",".join("?" * len(statuses))
        with self._tx():
            for key in keys:
                if self.conn.execute(f"SELECT 1 FROM runs WHERE key=? AND status IN ({marks})", (key, *statuses)).fetchone():
                    n += self._update(key, status="pending", owner=None, error=None)
        return n

    @_guarded
    def claim(self, key: str, owner: str | None = None) -> bool:
        """Atomically move a ``pending`` run to ``running``; False if it was not pending."""
        with self._tx():
            row = self.conn.execute("SELECT status, attempts FROM runs WHERE key=?", (key,)).fetchone()
            if row is None or row[0] != "pending":
                return False
            return self._update(key, status="running", owner=owner or owner_id(), started=time.time(),
                                attempts=row[1] + 1)

    @_guarded
    def finish(self, key: str, results: dict[str, Any]) -> None:
        """Record a finished run's results (final metrics, history, environment)."""
        with self._tx():
            self._update(key, status="done", results=json.dumps(results, allow_nan=True), error=None, owner=None,
                         finished=time.time())

    @_guarded
    def fail(self, key: str, error: str, results: dict[str, Any] | None = None) -> None:
        with self._tx():
            self._update(key, status="failed", error=error, results=None if results is None else json.dumps(results),
                         owner=None, finished=time.time())

    # -- reading
    def _verified(self, row: tuple) -> tuple:
        """``row`` (every column of :data:`RUN_COLUMNS`) once its checksum matches."""
        values = dict(zip(RUN_COLUMNS, row))
        if values["checksum"] != checksum(values[c] for c in SEALED):
            raise DataError(f"{self.path}: run {values['key']} ({values['suite']} / {values['task']} / "
                            f"{values['method']} / seed {values['seed']}) has a damaged record: it does not match its "
                            "checksum (it was changed outside dipnet); restore the store from a copy, or start a new "
                            "store with --store")
        return row

    def _record(self, row: tuple, labels: tuple | None = None) -> RunRecord:
        """A verified row as a :class:`RunRecord`, under ``labels`` (suite, task, method, seed) if given."""
        (key, suite, task, method, seed, status, config, results, error, attempts, owner, created, started,
         finished, _) = self._verified(row)
        suite, task, method, seed = labels or (suite, task, method, seed)
        try:
            spec = RunSpec.from_dict(json.loads(config))
            decoded = None if results is None else json.loads(results)
        except (ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{self.path}: run {key} ({suite} / {task} / {method} / seed {seed}) has a damaged "
                            f"record ({type(exc).__name__}: {exc}); rerun it with `dipnet compare ... --fresh` or "
                            "restore the store from a copy") from None
        return RunRecord(key, suite, task, method, int(seed), status, spec, decoded, error, int(attempts), owner,
                         created, started, finished)

    @_guarded
    def runs(self, *, suite: str | None = None, status: str | None = None,
             keys: Iterable[str] | None = None) -> list[RunRecord]:
        """Runs in insertion order, optionally filtered; ``suite``: that suite's runs, with its labels."""
        cols = ", ".join(f"r.{c}" for c in RUN_COLUMNS)
        if suite is None:  # every run under its latest labels
            sql, args, order = f"SELECT {cols} FROM runs r WHERE 1=1", [], " ORDER BY r.rowid"
        else:  # the suite's members under the suite's labels
            sql = f"SELECT {cols}, m.suite, m.task, m.method, m.seed FROM members m JOIN runs r ON r.key = m.key WHERE m.suite=?"
            args, order = [suite], " ORDER BY m.rowid"
        if status is not None:
            if status not in STATUSES:
                raise ConfigError(f"unknown run status {status!r}; choose one of: {', '.join(STATUSES)}")
            sql += " AND r.status=?"
            args.append(status)
        n = len(RUN_COLUMNS)
        rows = [self._record(r[:n], r[n:] or None) for r in self.conn.execute(sql + order, args)]
        if keys is not None:
            wanted = set(keys)
            rows = [r for r in rows if r.key in wanted]
        return rows

    @_guarded
    def get(self, key: str) -> RunRecord | None:
        row = self.conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE key=?", (key,)).fetchone()
        return None if row is None else self._record(row)

    @_guarded
    def counts(self, keys: Iterable[str] | None = None) -> dict[str, int]:
        out = dict.fromkeys(STATUSES, 0)
        for r in self.runs(keys=keys):
            out[r.status] += 1
        return out

    @_guarded
    def suites(self) -> list[str]:
        """Suites with at least one run, ordered by their oldest run (then by name)."""
        return [r[0] for r in self.conn.execute(
            "SELECT m.suite FROM members m JOIN runs r ON r.key = m.key GROUP BY m.suite ORDER BY MIN(r.rowid), m.suite")]

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.runs())


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
