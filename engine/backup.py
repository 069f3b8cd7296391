"""Back up and restore a whole workspace: `dermae backup PATH` and `dermae restore PATH`.

A backup is a folder:

    BACKUP.json   what it is: format, DerMAE and schema versions, when, rows per table, and the SHA-256 and size of
                  every other file in it
    database/     DuckDB's EXPORT DATABASE: schema.sql, load.sql, a Parquet file per table (engine.store.backup)
    workspace/    the workspace's files: images/, thumbs/, jobs/ (artifacts, checkpoints), datasets/ (manifests),
                  logs/ (job logs, which the API serves), api_token, demo_accounts.json

**Consistent while the server works.** The database is exported first, as one snapshot, then the files are copied.
Every file a row points to is written before its row and never deleted (images are content-addressed, artifacts
and dataset manifests exist before they are registered), so the files copied afterwards hold every file the
exported rows need; files newer than the snapshot are harmless extras. The backup is built in a private temporary
folder beside PATH and renamed into place when complete: PATH holds a whole backup or nothing.

**Left out:** the database file (the export stands for it), `server.json` (a running server's address), `cache/`
(training arrays, rebuilt when needed), the zip of a dataset export (rebuilt on its first download), temporary
files, and links (they may lead out of the workspace). Anything else at the top of the workspace is not the
product's, is not copied, and is named in the result.

**Restore** checks everything before it writes anything: BACKUP.json, a schema no newer than this DerMAE's (an
older one is upgraded by the migrations when the store opens), and every file's SHA-256, with no file missing or
unlisted. It then builds the workspace in a temporary folder beside the target (IMPORT DATABASE, the files, the
store opened and migrated, the rows' files checked) and renames it into place.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from engine import __version__
from engine.files import atomic_write_bytes, copy_file_hashed, sha256_file, sha256_path
from engine.settings import Settings
from engine.store import LATEST_VERSION, DatabaseExport, Store, import_database

FORMAT = "dermae-backup"
FORMAT_VERSION = 1
MANIFEST = "BACKUP.json"
DATABASE_DIR = "database"
FILES_DIR = "workspace"
# What the product writes in a workspace, and what of it a backup leaves out on purpose.
BACKED_UP_FILES = ("api_token", "demo_accounts.json")
BACKED_UP_FOLDERS = ("images", "thumbs", "jobs", "datasets", "logs")
NOT_BACKED_UP = ("dermae.duckdb", "dermae.duckdb.wal", "dermae.duckdb.tmp", "server.json", "cache")

# progress(description, total bytes) -> a context giving update(bytes done since the last call)
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], object]]]
ExportDatabase = Callable[[Path], DatabaseExport]


class BackupProblem(RuntimeError):
    """A backup or restore refused or failed; the message says why and what to do. Nothing was left half-written."""


@contextmanager
def no_progress(description: str, total: int) -> Iterator[Callable[[int], object]]:
    yield lambda done: None


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: dict[str, Any]
    left_out: list[str] = field(default_factory=list)  # top-level workspace entries that are not the product's
    vanished: list[str] = field(default_factory=list)  # files gone between listing and copying (old checkpoints)


@dataclass(frozen=True)
class RestoreResult:
    workspace: Path
    backup_schema: int
    schema_version: int
    counts: dict[str, int]
    files: int
    warnings: list[str] = field(default_factory=list)  # artifacts the rows name that the backup did not hold


# backup -------------------------------------------------------------------------------------------------------
def _skipped(name: str) -> bool:
    """Temporary files: a checkpoint or manifest being written, a dataset zip being built."""
    return name.startswith(".tmp-") or name.endswith(".partial")


def workspace_files(workspace: Path) -> Iterator[PurePosixPath]:
    """The files a backup copies, relative to the workspace, found as the walk goes (a folder is listed when it is
    reached): a running job's checkpoints, rotated every few steps, are still there when their turn comes."""
    for name in BACKED_UP_FILES:
        path = workspace / name
        if path.is_file() and not path.is_symlink():
            yield PurePosixPath(name)
    for folder in BACKED_UP_FOLDERS:
        for root, dirs, files in os.walk(workspace / folder):  # never follows links
            dirs[:] = sorted(d for d in dirs if not _skipped(d))
            relative = PurePosixPath(Path(root).relative_to(workspace).as_posix())
            for name in sorted(files):
                if _skipped(name) or (folder == "datasets" and name.endswith(".zip")):
                    continue
                if not (Path(root) / name).is_symlink():
                    yield relative / name


def foreign_entries(workspace: Path) -> list[str]:
    """Top-level entries of the workspace that are not the product's: a backup does not copy them."""
    known = {*BACKED_UP_FILES, *BACKED_UP_FOLDERS, *NOT_BACKED_UP}
    return sorted(p.name for p in workspace.iterdir() if p.name not in known)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _refuse_destination(dest: Path, workspace: Path) -> None:
    if dest.is_relative_to(workspace) or workspace.is_relative_to(dest):
        raise BackupProblem(f"{dest} and the workspace {workspace} overlap: back up to a folder outside the "
                            "workspace (another disk, ideally)")
    if dest.exists() and not dest.is_dir():
        raise BackupProblem(f"{dest} is a file: name a new or empty folder for the backup")
    if dest.is_dir() and any(dest.iterdir()):
        raise BackupProblem(f"{dest} is not empty: back up into a new or empty folder (a backup never merges into "
                            "or overwrites another one)")


@contextmanager
def _built_in_place(dest: Path, building: Path, what: str, advice: str) -> Iterator[Path]:
    """Fill the empty folder `building` (beside `dest`) in the block, then move it onto `dest` (missing, or an
    empty folder): `dest` holds all of it or nothing. On any failure `building` is removed."""
    try:
        yield building
        try:
            os.replace(building, dest)
        except OSError as e:
            raise BackupProblem(f"could not move the {what} into {dest} ({e.strerror}): was something written "
                                f"there meanwhile? {advice}") from None
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def create_backup(settings: Settings, dest: Path, export_database: ExportDatabase,
                  progress: Progress = no_progress) -> BackupResult:
    """Back up the workspace into `dest` (new, or an empty folder). `export_database(folder)` writes the database
    export into an empty folder: through the running server, or from the file when no server runs."""
    workspace = settings.workspace
    dest = Path(dest).expanduser().resolve()
    _refuse_destination(dest, workspace)
    if not settings.db_path.is_file():
        raise BackupProblem(f"no database at {settings.db_path}: nothing to back up (is --workspace right?)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))  # 0700: the token is in it
    with _built_in_place(dest, partial, "finished backup", "Back up into a new folder."):
        created_at = datetime.now(UTC)
        (partial / DATABASE_DIR).mkdir()
        export = export_database(partial / DATABASE_DIR)  # first: the files copied next hold every file it needs
        files: dict[str, dict[str, Any]] = {}
        for path in sorted((partial / DATABASE_DIR).rglob("*")):
            if path.is_file():
                files[path.relative_to(partial).as_posix()] = {"sha256": sha256_file(path), "size": _size(path)}
        vanished = []
        with progress("copying files", sum(_size(workspace / p) for p in workspace_files(workspace))) as update:
            for relative in workspace_files(workspace):
                target = partial / FILES_DIR / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    digest, size = copy_file_hashed(workspace / relative, target)
                except FileNotFoundError:  # removed since it was listed: a checkpoint a running job rotated away
                    vanished.append(relative.as_posix())
                    continue
                files[f"{FILES_DIR}/{relative}"] = {"sha256": digest, "size": size}
                update(size)
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "dermae_version": __version__,
                    "schema_version": export.schema_version, "created_at": created_at.isoformat(),
                    "workspace": str(workspace), "counts": export.counts, "files": files}
        atomic_write_bytes(partial / MANIFEST, json.dumps(manifest, indent=1).encode())
    return BackupResult(dest, manifest, foreign_entries(workspace), vanished)


# restore ------------------------------------------------------------------------------------------------------
def read_manifest(source: Path) -> dict[str, Any]:
    """BACKUP.json, checked for what a restore relies on; a newer schema than this DerMAE's is refused."""
    what = f"{source} is not a DerMAE backup"
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupProblem(f"{what}: it has no {MANIFEST} (give the folder `dermae backup` made)") from None
    except (OSError, ValueError) as e:
        raise BackupProblem(f"{what}: its {MANIFEST} is unreadable ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupProblem(f"{what}: its {MANIFEST} says it is something else")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BackupProblem(f"{source} is a backup in format {manifest.get('format_version')!r}; this DerMAE "
                            f"({__version__}) reads format {FORMAT_VERSION}: restore it with the DerMAE that made "
                            f"it ({manifest.get('dermae_version')})")
    schema = manifest.get("schema_version")
    if not isinstance(schema, int) or not isinstance(manifest.get("counts"), dict) or not isinstance(
            manifest.get("files"), dict):
        raise BackupProblem(f"{what}: its {MANIFEST} lacks the schema version, counts or file list")
    if schema > LATEST_VERSION:
        raise BackupProblem(f"{source} was made by a newer DerMAE ({manifest.get('dermae_version')}, database schema "
                            f"{schema}); this one ({__version__}) knows schemas up to {LATEST_VERSION}. Upgrade "
                            "DerMAE, then restore.")
    for name, entry in manifest["files"].items():
        parts = PurePosixPath(name).parts
        if (PurePosixPath(name).is_absolute() or ".." in parts or len(parts) < 2
                or parts[0] not in (DATABASE_DIR, FILES_DIR)):
            raise BackupProblem(f"{what}: its {MANIFEST} lists {name!r}, which is no place inside a backup")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and isinstance(entry.get("size"), int)):
            raise BackupProblem(f"{what}: its {MANIFEST} gives no SHA-256 and size for {name}")
    if f"{DATABASE_DIR}/load.sql" not in manifest["files"]:
        raise BackupProblem(f"{what}: its {MANIFEST} lists no database export")
    return manifest


def _entries(root: Path) -> dict[str, Path]:
    """Every file and link under `root` (links are not followed), by relative POSIX path."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            path = Path(folder) / name
            found[path.relative_to(root).as_posix()] = path
    return found


def verify_backup(source: Path, manifest: dict[str, Any], progress: Progress = no_progress) -> None:
    """Every listed file present with its SHA-256, and nothing that is not listed; raise naming the first damaged
    file."""
    files: dict[str, dict[str, Any]] = manifest["files"]
    present = _entries(source)
    present.pop(MANIFEST, None)
    unlisted = sorted(set(present) - set(files))
    if unlisted:
        raise BackupProblem(f"damaged backup: {unlisted[0]} is not listed in {MANIFEST} (the backup was changed "
                            "after it was made); nothing was restored")
    with progress("verifying", sum(f["size"] for f in files.values())) as update:
        for name, entry in sorted(files.items()):
            path = present.get(name)
            if path is None or path.is_symlink() or not path.is_file():
                raise BackupProblem(f"damaged backup: {name} is missing; nothing was restored")
            if sha256_file(path) != entry["sha256"]:
                raise BackupProblem(f"damaged backup: {name} does not match its SHA-256 in {MANIFEST}; nothing "
                                    "was restored")
            update(entry["size"])


def _server_pid(settings: Settings) -> int | None:
    """The pid of a live server recorded in the workspace's server.json, if any."""
    import psutil

    try:
        pid = json.loads(settings.server_record_path.read_text())["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid if isinstance(pid, int) and psutil.pid_exists(pid) else None


def _refuse_target(settings: Settings, source: Path) -> None:
    workspace = settings.workspace
    elsewhere = "restore into a new, empty folder (--workspace NEW), then point DERMAE_WORKSPACE at it"
    pid = _server_pid(settings)
    if pid is not None:
        raise BackupProblem(f"an engine server (pid {pid}) runs on {workspace}: a restore never replaces a live "
                            f"workspace; {elsewhere}")
    if settings.db_path.exists():
        raise BackupProblem(f"{workspace} already holds a database: a restore never merges into or overwrites a "
                            f"workspace; {elsewhere}")
    if workspace.exists() and not workspace.is_dir():
        raise BackupProblem(f"{workspace} is a file; {elsewhere}")
    if workspace.is_dir() and any(workspace.iterdir()):
        names = sorted(p.name for p in workspace.iterdir())
        raise BackupProblem(f"{workspace} is not empty ({', '.join(names[:5])}{', …' if len(names) > 5 else ''}); "
                            f"{elsewhere}")
    if workspace.is_relative_to(source) or source.is_relative_to(workspace):
        raise BackupProblem(f"the workspace {workspace} and the backup {source} overlap; {elsewhere}")


def _check_rows_have_files(store: Store, workspace: Path) -> list[str]:
    """Every image and thumbnail the rows name is there, and every dataset manifest with its recorded SHA-256
    (training names versions by it): else raise. Missing artifacts or exported models are returned as warnings:
    people prune old job folders, and the workspace backed up lacked them too (the backup's hashes verified)."""
    roots = {"images": workspace / "images", "thumbs": workspace / "thumbs", "workspace": workspace}
    problems, warnings = [], []
    for kind, entries in store.referenced_files().items():
        for relative, sha256 in entries:
            path = roots[kind] / relative
            shown = relative if kind == "workspace" else f"{kind}/{relative}"
            if sha256 is not None and (not path.is_file() or sha256_path(path)[0] != sha256):
                problems.append(f"{shown} is missing or does not match its recorded SHA-256")
            elif not path.exists():
                (problems if kind != "workspace" else warnings).append(f"{shown} is missing")
    if problems:
        raise BackupProblem(f"the restored rows name files the backup lacks ({len(problems)}): "
                            + "; ".join(problems[:5]) + ". Nothing was restored.")
    return warnings


def restore_backup(source: Path, settings: Settings, progress: Progress = no_progress) -> RestoreResult:
    """Restore the backup at `source` into the new or empty workspace of `settings`, all of it or nothing."""
    source = Path(source).expanduser().resolve()
    workspace = settings.workspace
    manifest = read_manifest(source)
    _refuse_target(settings, source)
    verify_backup(source, manifest, progress)  # before anything is written

    workspace.parent.mkdir(parents=True, exist_ok=True)
    building = workspace.parent / f".{workspace.name}.restoring-{secrets.token_hex(4)}"
    building.mkdir()
    with _built_in_place(workspace, building, "restored workspace", "Restore into a new folder."):
        db_path = building / settings.db_path.name
        counts = import_database(db_path, source / DATABASE_DIR)
        expected = manifest["counts"]
        differing = sorted(t for t in set(counts) | set(expected) if counts.get(t) != expected.get(t))
        if differing:
            t = differing[0]
            raise BackupProblem(f"damaged backup: the database export holds {counts.get(t)} rows of {t}, {MANIFEST} "
                                f"says {expected.get(t)}; nothing was restored")
        files = {n: e for n, e in manifest["files"].items() if n.startswith(f"{FILES_DIR}/")}
        with progress("restoring files", sum(e["size"] for e in files.values())) as update:
            for name, entry in sorted(files.items()):
                target = building / PurePosixPath(name).relative_to(FILES_DIR)
                target.parent.mkdir(parents=True, exist_ok=True)
                digest, size = copy_file_hashed(source / name, target)
                if digest != entry["sha256"]:  # changed since it was verified
                    raise BackupProblem(f"damaged backup: {name} changed while it was restored; nothing was restored")
                update(size)
        for folder in (settings.images_dir, settings.thumbs_dir, settings.logs_dir):
            (building / folder.name).mkdir(exist_ok=True)
        store = Store(db_path)  # applies the migrations a backup of an older schema lacks
        try:
            warnings = _check_rows_have_files(store, building)
            schema_version = store.schema_version
        finally:
            store.close()
    return RestoreResult(workspace, manifest["schema_version"], schema_version, counts, len(files), warnings)
