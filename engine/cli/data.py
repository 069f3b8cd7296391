"""Real data in (`dermae import`, `imports`), what the workspace holds (`stats`), and frozen dataset versions
(`dermae datasets`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.common import Workspace, call, client_for, fail


def import_(
    format: Annotated[str, typer.Argument(help="ham10000 | isic | medmnist | folder | phantom")],
    path: Annotated[Path | None, typer.Argument(help="Dataset folder or file (not for phantom).")] = None,
    split_seed: Annotated[int, typer.Option(help="Seed of the lesion-aware split (sources without splits).")]
    = 0,
    skip_missing: Annotated[bool, typer.Option(
        "--skip-missing", help="ham10000 / isic: import the rows whose image file is there and list the others "
                               "(default: any missing file fails the whole import).")] = False,
    workspace: Workspace = None,
) -> None:
    """Import a dataset through the engine, as one transaction (all of it or nothing)."""
    from engine.schemas import ImportFormat

    try:
        fmt = ImportFormat(format)
    except ValueError:
        fail(f"unknown format {format!r}; choose one of {', '.join(f.value for f in ImportFormat)}", code=2)
    client = client_for(workspace)
    typer.echo(f"Importing {fmt.value} from {path or 'the phantom generator'} …", err=True)
    if skip_missing and fmt not in (ImportFormat.ham10000, ImportFormat.isic):
        fail(f"--skip-missing is for ham10000 and isic tables, not {fmt.value}", code=2)
    result = call(client.import_data, fmt, str(path.resolve()) if path else None, split_seed=split_seed,
                   skip_missing=skip_missing)
    print_import(result)


def imports(workspace: Workspace = None) -> None:
    """The import batches: their ids (for `evaluate --source` and `train --external`), sources and split kinds."""
    for b in call(client_for(workspace).imports):
        typer.echo(f"{b.id}  {b.format:<9} {b.n_added:>6} images  {b.split_kind or 'unrecorded':<12} {b.source}"
                   + ("  (PHANTOM)" if b.phantom else ""))


def print_import(result) -> None:
    typer.echo(f"{result.n_added} of {result.n_records} images added (batch {result.batch_id})"
               + (f", split {result.split_kind.value}" if result.split_kind else ""))
    for split, counts in result.added.items():
        if any(counts.values()):
            typer.echo(f"  {split:<5} " + "  ".join(f"{c} {n}" for c, n in counts.items()))
    if result.skipped:
        typer.secho(f"{len(result.skipped)} row(s) skipped, their image file missing:", fg=typer.colors.YELLOW)
        for row in result.skipped:
            typer.echo(f"  - {row}")


def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable counts.")] = False,
    workspace: Workspace = None,
) -> None:
    """Image counts per source × split (or review status) × class."""
    result = call(client_for(workspace).stats)
    if result.phantom:
        typer.secho("note: the workspace holds PHANTOM data, not clinical data", fg=typer.colors.YELLOW, err=True)
    if as_json:
        typer.echo(json.dumps({"real": result.real, "synthetic": result.synthetic}, indent=2))
        return
    for source, groups in (("real", result.real), ("synthetic", result.synthetic)):
        classes = list(next(iter(groups.values())))
        typer.echo(f"{source:<18}" + "".join(f"{c:>7}" for c in classes) + f"{'total':>8}")
        for group, counts in groups.items():
            typer.echo(f"  {group:<16}" + "".join(f"{counts[c]:>7}" for c in classes)
                       + f"{sum(counts.values()):>8}")


datasets_app = typer.Typer(help="Frozen dataset versions: the curated set that training names.",
                           no_args_is_help=True)


def _version_row(v) -> str:
    synthetic = sum(sum(c.values()) for c in v.counts.get("synthetic", {}).values())
    real = sum(sum(c.values()) for c in v.counts.get("real", {}).values())
    return f"{v.id:<40} {real:>7} real {synthetic:>7} synthetic  {v.note or ''}"


@datasets_app.command("freeze")
def datasets_freeze(
    name: Annotated[str, typer.Argument(help="Letters, digits, - _ .")],
    note: Annotated[str | None, typer.Option(help="Why this version exists.")] = None,
    accepts: Annotated[int | None, typer.Option(help="Policy: this many accepts and no reject (default: the "
                                                     "review policy in force).")] = None,
    selection: Annotated[str, typer.Option(help="reviewed | scores (automatic) | all (unreviewed) | none")]
    = "reviewed",
    min_intended_prob: Annotated[float, typer.Option(help="With --selection scores: the least reference-classifier "
                                                          "probability of the intended class.")] = 0.5,
    workspace: Workspace = None,
) -> None:
    """Freeze the curated set (all real images + accepted synthetic ones) as a new immutable version."""
    version = call(client_for(workspace).freeze_dataset, name, note, accepts_needed=accepts, selection=selection,
                    min_intended_prob=min_intended_prob)
    typer.echo(version.id)
    typer.echo(_version_row(version), err=True)


@datasets_app.command("ls")
def datasets_ls(as_json: Annotated[bool, typer.Option("--json")] = False, workspace: Workspace = None) -> None:
    """Dataset versions, newest first."""
    versions = call(client_for(workspace).datasets)
    if as_json:
        typer.echo(json.dumps([v.model_dump(mode="json") for v in versions], indent=2))
        return
    for version in versions:
        typer.echo(_version_row(version))


@datasets_app.command("export")
def datasets_export(
    version: Annotated[str, typer.Argument(help="Version id (see `dermae datasets ls`).")],
    dest: Annotated[Path, typer.Argument(help="A new or empty folder.")],
    workspace: Workspace = None,
) -> None:
    """Export a version: manifest.csv + manifest.parquet + `<split>/<class>/<id>.<ext>` (torchvision ImageFolder)."""
    try:
        root = call(client_for(workspace).export_dataset, version, dest)
    except FileExistsError as e:
        fail(str(e))
    typer.echo(root)
    typer.echo(f"torchvision.datasets.ImageFolder('{root / 'train'}') reads it; manifest.csv says where each image "
               "came from", err=True)


