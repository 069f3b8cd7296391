"""`dermae`: the command line of DerMAE Studio. Every command but `serve` talks to the engine over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from engine.settings import DEFAULT_HOST, DEFAULT_PORT, Settings

app = typer.Typer(help="DerMAE Studio: curate synthetic dermoscopy and train students on it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

Workspace = Annotated[Path | None, typer.Option("--workspace", "-w", envvar="DERMAE_WORKSPACE",
                                                help="Workspace folder (default ./workspace).")]


def _settings(workspace: Path | None) -> Settings:
    return Settings.from_env(workspace)


def _client(workspace: Path | None):  # -> engine.client.Client, imported lazily to keep `--help` fast
    from engine.client import Client, ServerNotFound

    try:
        return Client.from_settings(_settings(workspace))
    except ServerNotFound as e:
        _fail(str(e))


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _call(fn, *args, **kwargs):
    """Run a client call; turn API errors into a red message and exit code 1 instead of a traceback."""
    from engine.client import ApiError, ServerNotFound

    try:
        return fn(*args, **kwargs)
    except (ApiError, ServerNotFound) as e:
        _fail(str(e))


@app.command()
def serve(
    workspace: Workspace = None,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean to expose it.")]
    = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one (written to server.json).")] = DEFAULT_PORT,
) -> None:
    """Run the engine server: the only process that opens the workspace database."""
    from engine.api.server import serve as run_server
    from engine.store import StoreLocked

    try:
        run_server(_settings(workspace), host, port)
    except StoreLocked as e:
        _fail(str(e))


def _run_up(settings: Settings, host: str, port: int, demo_profile: str | None) -> None:
    from engine.client import Client
    from engine.launcher import Launcher

    launcher = Launcher()
    try:
        url = launcher.start_server(settings, host, port)
        with Client.from_settings(settings, timeout=60) as client:
            stats = client.stats()
            n_real = sum(sum(c.values()) for c in stats.real.values())
            if demo_profile and n_real == 0:
                _import_default(client, demo_profile)
            elif demo_profile:
                typer.echo(f"The workspace already holds {n_real} real images; nothing imported.")
        _print_next_steps(url, settings)
        raise typer.Exit(launcher.wait())
    except KeyboardInterrupt:
        typer.echo("\nstopping…")
    finally:
        launcher.stop_all()


def _import_default(client, profile_name: str) -> None:
    from engine.data.default import default_source
    from engine.profiles import load_profile

    profile = load_profile(profile_name)
    source = default_source()
    typer.echo(f"Importing the default data: {source.description}")
    result = _call(client.import_data, source.format, source.path, split_seed=profile.data.split_seed,
                   phantom_size=profile.data.phantom_size)
    typer.echo(f"Imported {result.n_added} images (batch {result.batch_id}).")
    if result.phantom:
        typer.secho("Note: this is PHANTOM data, not clinical data. For DermaMNIST, set "
                    "DERMAE_DATA=/path/to/dermamnist.npz.", fg=typer.colors.YELLOW)


def _print_next_steps(url: str, settings: Settings) -> None:
    typer.secho(f"\nDerMAE engine running at {url}", bold=True)
    typer.echo(f"  workspace   {settings.workspace}")
    typer.echo(f"  API docs    {url}/docs  (token in {settings.token_path})")
    typer.echo("  in another terminal (same DERMAE_WORKSPACE):")
    typer.echo("    dermae stats                 class counts per split")
    typer.echo("    dermae import ham10000 PATH  add a dataset (also isic, medmnist, folder)")
    typer.echo("Press Ctrl-C to stop everything.")


@app.command()
def up(
    workspace: Workspace = None,
    host: Annotated[str, typer.Option()] = DEFAULT_HOST,
    port: Annotated[int, typer.Option()] = DEFAULT_PORT,
) -> None:
    """Start the engine server (and the front ends), wait until healthy; Ctrl-C stops all of them."""
    _run_up(_settings(workspace), host, port, demo_profile=None)


@app.command()
def demo(
    workspace: Workspace = None,
    host: Annotated[str, typer.Option()] = DEFAULT_HOST,
    port: Annotated[int, typer.Option()] = DEFAULT_PORT,
    profile: Annotated[str, typer.Option(help="smoke | tiny | paper (configs/).")] = "tiny",
) -> None:
    """`up`, and import the embedded default data into an empty workspace (DermaMNIST if found, else phantom)."""
    from engine.profiles import load_profile

    try:
        load_profile(profile)
    except ValueError as e:
        _fail(str(e), code=2)
    _run_up(_settings(workspace), host, port, demo_profile=profile)


@app.command("import")
def import_(
    format: Annotated[str, typer.Argument(help="ham10000 | isic | medmnist | folder | phantom")],
    path: Annotated[Path | None, typer.Argument(help="Dataset folder or file (not for phantom).")] = None,
    split_seed: Annotated[int, typer.Option(help="Seed of the lesion-aware split (sources without splits).")]
    = 0,
    workspace: Workspace = None,
) -> None:
    """Import a dataset through the engine, as one transaction (all of it or nothing)."""
    from engine.schemas import ImportFormat

    try:
        fmt = ImportFormat(format)
    except ValueError:
        _fail(f"unknown format {format!r}; choose one of {', '.join(f.value for f in ImportFormat)}", code=2)
    client = _client(workspace)
    typer.echo(f"Importing {fmt.value} from {path or 'the phantom generator'} …", err=True)
    result = _call(client.import_data, fmt, str(path.resolve()) if path else None, split_seed=split_seed)
    typer.echo(f"{result.n_added} of {result.n_records} images added (batch {result.batch_id})")
    for split, counts in result.added.items():
        if any(counts.values()):
            typer.echo(f"  {split:<5} " + "  ".join(f"{c} {n}" for c, n in counts.items()))


@app.command()
def stats(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable counts.")] = False,
    workspace: Workspace = None,
) -> None:
    """Image counts per source × split (or review status) × class."""
    result = _call(_client(workspace).stats)
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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
