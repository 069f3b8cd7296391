"""What every command shares: the workspace option, a client of the running engine, and errors as one red line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from engine.settings import Settings

DEFAULT_STUDIO_PORT = 8501
StudioPort = Annotated[int, typer.Option(help="The studio's port (0 picks a free one).")]
StudioFlag = Annotated[bool, typer.Option("--studio/--no-studio", help="Start the review studio too.")]
Workspace = Annotated[Path | None, typer.Option("--workspace", "-w", envvar="DERMAE_WORKSPACE",
                                                help="Workspace folder (default ./workspace).")]


def settings_for(workspace: Path | None) -> Settings:
    return Settings.from_env(workspace)


def client_for(workspace: Path | None):  # -> engine.client.Client, imported lazily to keep `--help` fast
    from engine.client import Client, ServerNotFound

    try:
        return Client.from_settings(settings_for(workspace))
    except ServerNotFound as e:
        fail(str(e))


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def call(fn, *args, **kwargs):
    """Run a client call; turn API errors into a red message and exit code 1 (2 for a request the client's own
    schema refuses before sending it) instead of a traceback."""
    from pydantic import ValidationError

    from engine.client import ApiError, ServerNotFound

    try:
        return fn(*args, **kwargs)
    except (ApiError, ServerNotFound) as e:
        fail(str(e))
    except ValidationError as e:
        fail("; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()), code=2)

