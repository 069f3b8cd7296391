"""`dermae backup` and `restore`: the database and the files it points to, to a folder and back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.common import Workspace, call, fail, settings_for
from engine.settings import Settings


@contextmanager
def _bytes_bar(description: str, total: int) -> Iterator[Callable[[int], object]]:
    """A tqdm bar in bytes for long copies (shown on a terminal only)."""
    from tqdm import tqdm

    with tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024, disable=None) as bar:
        yield bar.update


def _server_of(settings: Settings):  # -> engine.client.Client | None
    """A client of the server running on this workspace, or None when none answers."""
    from engine.client import ApiError, Client, ServerNotFound

    try:
        client = Client.from_settings(settings, timeout=3600)
        health = client.health()
    except ServerNotFound:  # none recorded, or a stale record of one that died
        return None
    except ApiError as e:
        fail(str(e))
    if Path(health.workspace).resolve() != settings.workspace:
        fail(f"the engine at {client.base_url} serves {health.workspace}, not {settings.workspace}: pass "
              f"--workspace {health.workspace}, or unset DERMAE_API_URL")
    return client


def backup(
    path: Annotated[Path, typer.Argument(help="A new or empty folder, outside the workspace.")],
    workspace: Workspace = None,
) -> None:
    """Back up the workspace into PATH: the database, exported by the running server (which keeps working) or
    read directly when none runs, then the images, job folders, dataset manifests, logs and API token, with a
    SHA-256 of every file in BACKUP.json. PATH holds the whole backup or nothing."""
    from engine.backup import BackupProblem, create_backup
    from engine.store import BackupFailed, DatabaseExport, StoreLocked, export_database_file

    settings = settings_for(workspace)
    client = _server_of(settings)

    def export(folder: Path) -> DatabaseExport:
        if client is None:
            return export_database_file(settings.db_path, folder)
        done = call(client.backup_database, folder)
        return DatabaseExport(done.schema_version, done.counts)

    try:
        result = create_backup(settings, path, export, progress=_bytes_bar)
    except (BackupProblem, BackupFailed, StoreLocked, FileNotFoundError) as e:
        fail(str(e))
    counts = result.manifest["counts"]
    typer.echo(result.path)
    typer.echo(f"backed up {settings.workspace} ({'through its running server' if client else 'no server running'}"
               f"): {len(result.manifest['files'])} files, {counts.get('images', 0)} images, "
               f"{counts.get('reviews', 0)} review events, {counts.get('jobs', 0)} jobs, {counts.get('datasets', 0)} "
               f"dataset versions; schema {result.manifest['schema_version']}", err=True)
    if result.vanished:
        typer.echo(f"{len(result.vanished)} files were removed while they were copied (old checkpoints of running "
                   "jobs): not in the backup", err=True)
    if result.left_out:
        typer.echo(f"not the product's, not backed up: {', '.join(result.left_out)}", err=True)
    typer.echo("It holds the API token and password hashes: keep it private. Restore with `dermae restore "
               f"{result.path} --workspace NEW`.", err=True)


def restore(
    path: Annotated[Path, typer.Argument(help="A folder made by `dermae backup`.")],
    workspace: Workspace = None,
) -> None:
    """Restore a backup into a new or empty workspace (never over one in use). Every file's SHA-256 is checked
    before anything is written; a backup of an older schema is upgraded, one of a newer schema refused."""
    from engine.backup import BackupProblem, restore_backup
    from engine.store import BackupFailed

    settings = settings_for(workspace)
    try:
        result = restore_backup(path, settings, progress=_bytes_bar)
    except (BackupProblem, BackupFailed) as e:
        fail(str(e))
    typer.echo(result.workspace)
    upgraded = f", upgraded from schema {result.backup_schema}" if result.backup_schema != result.schema_version \
        else ""
    typer.echo(f"restored {result.files} files, {result.counts.get('images', 0)} images, "
               f"{result.counts.get('reviews', 0)} review events, {result.counts.get('jobs', 0)} jobs, "
               f"{result.counts.get('datasets', 0)} dataset versions (schema {result.schema_version}{upgraded})",
               err=True)
    for warning in result.warnings[:10]:
        typer.secho(f"warning: {warning} (it was not in the backup)", fg=typer.colors.YELLOW, err=True)
    typer.echo(f"Start it with: DERMAE_WORKSPACE={result.workspace} dermae serve", err=True)


