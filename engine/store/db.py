"""The one DuckDB connection of the engine server, its migrations, and transactions.

DuckDB lets one process open the file read-write; inside that process it is thread-safe with a cursor per
thread. Writes are serialised by a lock: they are short, and it rules out write-write conflicts between
request threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from engine.store.migrations import MIGRATIONS


def utc_now() -> datetime:
    """Naive UTC, as DuckDB's TIMESTAMP columns store it."""
    return datetime.now(UTC).replace(tzinfo=None)


def where_given(*conditions: tuple[str, str | None, Any]) -> tuple[str, dict[str, Any]]:
    """A WHERE body and its named parameters from (condition, name, value): each triple whose value is not None
    adds its condition, which refers to $name (name None: a condition without a parameter). "TRUE" if none does."""
    where, params = [], {}
    for sql, name, value in conditions:
        if value is not None:
            where.append(sql)
            if name is not None:
                params[name] = value
    return " AND ".join(where) or "TRUE", params


def read_schema_version(cur: duckdb.DuckDBPyConnection) -> int:
    """The highest migration applied to the database `cur` reads (0 for an empty one)."""
    exists = cur.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
    ).fetchone()[0]
    if not exists:
        return 0
    return cur.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]


class StoreLocked(RuntimeError):
    pass


class Database:
    def __init__(self, path: Path, *, migrate_to: int | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(path))
        except duckdb.IOException as e:
            raise StoreLocked(
                f"cannot open {path}: another process holds it ({e}). Only the engine server opens the "
                "database; stop the other server or point DERMAE_WORKSPACE elsewhere."
            ) from None
        self.path = path
        self._write_lock = threading.RLock()
        self.migrate(migrate_to)

    def close(self) -> None:
        self._con.close()

    def cursor(self) -> duckdb.DuckDBPyConnection:
        return self._con.cursor()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor inside BEGIN … COMMIT; any exception rolls back everything done through it."""
        with self._write_lock:
            cur = self._con.cursor()
            cur.begin()
            try:
                yield cur
                cur.commit()
            except BaseException:
                cur.rollback()
                raise
            finally:
                cur.close()

    @property
    def schema_version(self) -> int:
        return read_schema_version(self.cursor())

    def migrate(self, target: int | None = None) -> list[int]:
        """Apply missing migrations up to `target` (default: all). Returns the versions applied."""
        with self._write_lock:
            self.cursor().execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name VARCHAR, "
                "applied_at TIMESTAMP)"
            )
            current = self.schema_version
            applied = []
            for version, name, sql in MIGRATIONS:
                if version <= current or (target is not None and version > target):
                    continue
                with self.transaction() as cur:
                    cur.execute(sql)
                    cur.execute("INSERT INTO schema_version VALUES (?, ?, ?)",
                                [version, name, utc_now()])
                applied.append(version)
            return applied
