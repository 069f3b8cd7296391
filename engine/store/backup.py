"""The database half of a workspace backup: DuckDB's own EXPORT DATABASE / IMPORT DATABASE.

An export is a folder of `schema.sql`, `load.sql` and one Parquet file per table, written by DuckDB from one
transaction: a consistent snapshot taken while the server keeps writing (DuckDB is MVCC), in a format that does not
depend on DuckDB's storage version, so a newer DuckDB restores it. Sequences are exported at their current value,
so ids go on where they stopped. The files half (images, job folders, manifests) is engine.backup's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from engine.store.db import Database, StoreLocked, read_schema_version
from engine.store.jobs import ACTIVE


class BackupFailed(RuntimeError):
    """DuckDB could not export or import: the message says what and where."""


@dataclass(frozen=True)
class DatabaseExport:
    schema_version: int
    counts: dict[str, int]  # rows per table, from the same snapshot as the export


def _quoted(path: Path) -> str:
    """A path as an SQL string literal: EXPORT / IMPORT DATABASE take no parameters."""
    return "'" + str(path).replace("'", "''") + "'"


def table_counts(cur: Any) -> dict[str, int]:
    """Rows of every table of the main schema, by name."""
    tables = [t for (t,) in cur.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' AND table_type = 'BASE TABLE' "
        "ORDER BY table_name").fetchall()]
    return {t: cur.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def _export(cur: duckdb.DuckDBPyConnection, dest: Path) -> DatabaseExport:
    """Closes `cur`."""
    try:
        cur.begin()  # counts, schema version and the export all read one snapshot
        version, counts = read_schema_version(cur), table_counts(cur)
        cur.execute(f"EXPORT DATABASE {_quoted(dest)} (FORMAT parquet)")
        cur.commit()
    except duckdb.Error as e:
        raise BackupFailed(f"could not export the database into {dest}: {e}") from None
    finally:
        cur.close()
    return DatabaseExport(version, counts)


def export_database(db: Database, dest: Path) -> DatabaseExport:
    """Export the open database into the folder `dest` (new or empty), through a cursor of its own: the server's
    other requests go on meanwhile."""
    return _export(db.cursor(), dest)


def export_database_file(db_path: Path, dest: Path) -> DatabaseExport:
    """Export a database no server holds, opened read-only: a backup neither migrates nor changes its source."""
    if not db_path.is_file():
        raise FileNotFoundError(f"no database at {db_path}: nothing to back up (is --workspace right?)")
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except duckdb.IOException as e:
        raise StoreLocked(f"cannot open {db_path}: another process holds it ({e}). If an engine server runs on "
                          "this workspace, `dermae backup` asks it over HTTP: is its server.json there?") from None
    return _export(con, dest)


def import_database(db_path: Path, source: Path) -> dict[str, int]:
    """IMPORT DATABASE `source` (an export folder) into a new database file at `db_path`; returns its row counts.

    The file is written as it was exported, at the export's schema version: opening it as a Store then applies the
    newer migrations. Jobs the export caught running keep their state (the server that opens it re-queues them, to
    resume from their checkpoints) but lose their process id: those processes belong to the workspace that was
    backed up, and recovery would otherwise stop them if they still run on this machine.
    On any failure the new file is removed."""
    if db_path.exists():
        raise FileExistsError(f"{db_path} exists: restore into a new, empty workspace")
    try:
        con = duckdb.connect(str(db_path))
        try:
            con.execute(f"IMPORT DATABASE {_quoted(source)}")
            if "jobs" in table_counts(con):
                con.execute("UPDATE jobs SET pid = NULL WHERE list_contains(?, state)", [list(ACTIVE)])
            return table_counts(con)
        finally:
            con.close()
    except duckdb.Error as e:
        for leftover in (db_path, db_path.with_name(db_path.name + ".wal")):
            leftover.unlink(missing_ok=True)
        raise BackupFailed(f"could not import the database from {source}: {e}") from None


def referenced_files(db: Database) -> dict[str, list[tuple[str, str | None]]]:
    """The files rows point to, as (path, SHA-256 to check or None), by what the path is relative to: `images` and
    `thumbs` (the image stores) and `workspace` (artifacts, dataset manifests, exported models). A restore checks
    them. Only dataset manifests carry a hash to check: versions never change, while a job may rewrite a folder it
    registered earlier (its row keeps the first hash)."""
    cur = db.cursor()
    try:
        images = cur.execute("SELECT path, thumb_path FROM images ORDER BY id").fetchall()
        workspace = cur.execute("SELECT path, NULL FROM artifacts UNION ALL "
                                "SELECT manifest_path, manifest_sha256 FROM datasets UNION ALL "
                                "SELECT unnest([classifier_path, torchscript_path, onnx_path]), NULL FROM models"
                                ).fetchall()
    finally:
        cur.close()
    return {"images": [(p, None) for p, _ in images], "thumbs": [(t, None) for _, t in images],
            "workspace": [(p, s) for p, s in workspace]}
