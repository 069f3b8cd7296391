"""`dermae serve`, `up` and `demo`: the engine, the studio beside it, and a first run on the default data."""

from __future__ import annotations

import json
import os
import signal
from enum import StrEnum
from typing import Annotated

import typer

from engine.cli.common import DEFAULT_STUDIO_PORT, StudioFlag, StudioPort, Workspace, call, fail, settings_for
from engine.cli.data import print_import
from engine.settings import DEFAULT_HOST, DEFAULT_PORT, Settings, exposure_problem


class ExecutorName(StrEnum):
    local = "local"
    slurm = "slurm"


def serve(
    workspace: Workspace = None,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean to expose it.")]
    = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one (written to server.json).")] = DEFAULT_PORT,
    max_jobs: Annotated[int, typer.Option(envvar="DERMAE_MAX_JOBS", min=1,
                                          help="Jobs running at once (1 suits a CPU).")] = 1,
    cancel_grace: Annotated[float, typer.Option(envvar="DERMAE_CANCEL_GRACE", min=0,
                                                help="Seconds a cancelled job has to checkpoint before "
                                                     "SIGKILL.")] = 10.0,
    executor: Annotated[ExecutorName, typer.Option(envvar="DERMAE_EXECUTOR",
                                                   help="Where jobs run: local (child processes of the server) "
                                                        "or slurm (each attempt an sbatch job; README, "
                                                        "\"Scale-out\").")] = ExecutorName.local,
    partition: Annotated[str | None, typer.Option(envvar="DERMAE_SLURM_PARTITION",
                                                  help="slurm: the partition jobs go to (default: the "
                                                       "cluster's default partition).")] = None,
    job_url: Annotated[str | None, typer.Option(envvar="DERMAE_JOB_URL",
                                                help="The engine's URL as job processes reach it (default: from "
                                                     "--host; this machine's name when it binds 0.0.0.0 for "
                                                     "slurm).")] = None,
) -> None:
    """Run the engine server: the only process that opens the workspace database, and the job scheduler."""
    from engine.api.server import serve as run_server
    from engine.jobs.scheduler import SchedulerConfig
    from engine.store import StoreLocked

    try:
        run_server(settings_for(workspace), host, port,
                   scheduler_config=SchedulerConfig(max_concurrent=max_jobs, cancel_grace=cancel_grace),
                   executor=executor.value, partition=partition, job_url=job_url)
    except StoreLocked as e:
        fail(str(e))


def _run_up(settings: Settings, host: str, port: int, studio_port: int | None, demo_profile: str | None) -> None:
    from engine.client import Client
    from engine.launcher import Launcher

    problem = exposure_problem(host, os.environ.get("DERMAE_API_TOKEN"), "the engine and the studio",
                               "DERMAE_API_TOKEN")
    if problem:
        fail(problem)
    launcher = Launcher()
    # SIGTERM (a service manager, `kill`; and a background job, where SIGINT is ignored) stops everything like Ctrl-C:
    # the server and studio run in their own sessions and would otherwise outlive us.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started from a background shell, which ignores SIGINT
    try:
        url = launcher.start_server(settings, host, port)
        accounts: list[tuple[str, str, str]] = []
        with Client.from_settings(settings, timeout=60) as client:
            stats = client.stats()
            n_real = sum(sum(c.values()) for c in stats.real.values())
            if demo_profile and n_real == 0:
                _import_default(client, demo_profile)
            elif demo_profile:
                typer.echo(f"The workspace already holds {n_real} real images; nothing imported.")
            if demo_profile:
                accounts = _demo_accounts(client, settings)
                _start_generator_once(client, demo_profile)
        studio = launcher.start_studio(url, host, studio_port) if studio_port is not None else None
        _print_next_steps(url, studio, settings, accounts)
        raise typer.Exit(launcher.wait())
    except KeyboardInterrupt:
        typer.echo("\nstopping…")
    finally:
        launcher.stop_all()


def _import_default(client, profile_name: str) -> None:
    from engine.data.default import default_source
    from engine.recipes.registry import checked_profile

    profile = checked_profile(profile_name)
    source = default_source()
    typer.echo(f"Importing the default data: {source.description}")
    result = call(client.import_data, source.format, source.path, split_seed=profile.data.split_seed,
                   phantom_size=profile.data.phantom_size)
    print_import(result)
    if result.phantom:
        typer.secho("Note: this is PHANTOM data, not clinical data. For real data, set DERMAE_DATA to a HAM10000 "
                    "folder (with HAM10000_metadata.csv) or a dermamnist.npz.", fg=typer.colors.YELLOW)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


DEMO_ACCOUNTS = (("demo", "admin"), ("reader2", "reviewer"))  # two readers, so agreement has something to show


def _demo_accounts(client, settings: Settings) -> list[tuple[str, str, str]]:
    """The demo's sign-ins (name, role, password), made once with random passwords kept in the workspace (0600)."""
    import secrets

    path = settings.workspace / "demo_accounts.json"
    if path.exists():
        return [tuple(a) for a in json.loads(path.read_text())]
    existing = {u.name for u in call(client.users)}
    accounts = [(name, role, secrets.token_urlsafe(9)) for name, role in DEMO_ACCOUNTS if name not in existing]
    for name, role, password in accounts:
        call(client.add_user, name, password, role)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(accounts, f)
    return accounts


def _start_generator_once(client, profile_name: str) -> None:
    """A fresh workspace gets the generator chain at once, with a preview, so synthetic lesions arrive for review
    early in diffusion training."""
    from engine.pipelines import generator_chain
    from engine.recipes.registry import checked_profile

    if client.jobs(kind="train_ldm", limit=1).total or client.jobs(kind="generate", limit=1).total:
        return
    run = call(client.submit_pipeline, generator_chain(checked_profile(profile_name), preview=True))
    typer.echo(f"Started the {profile_name} generator chain ({len(run.jobs)} jobs): a first few synthetic "
               "lesions appear in the studio's Review page a tenth of the way through diffusion training, the rest "
               "as they are made.")


def _print_next_steps(url: str, studio: str | None, settings: Settings, accounts: list) -> None:
    typer.secho(f"\nDerMAE engine running at {url}", bold=True)
    if studio:
        typer.secho(f"DerMAE Studio running at {studio}", bold=True, fg=typer.colors.GREEN)
        for name, role, password in accounts:
            typer.echo(f"  sign in as {name!r} ({role}) with password {password!r}")
        if accounts:
            typer.echo(f"  (kept in {settings.workspace / 'demo_accounts.json'}; add people with "
                       "`dermae users add NAME --role reviewer`)")
    typer.echo(f"  workspace   {settings.workspace}")
    typer.echo(f"  API docs    {url}/docs  (token in {settings.token_path})")
    typer.echo("  in another terminal (same DERMAE_WORKSPACE):")
    typer.echo("    dermae stats                 class counts per split")
    typer.echo("    dermae import ham10000 PATH  add a dataset (also isic, medmnist, folder)")
    typer.echo("    dermae pipeline generator -f train the generator, make and score synthetic lesions")
    typer.echo("    dermae users add NAME        an account for the studio")
    typer.echo("    make train                   MAE teacher + distilled students, evaluated on real test")
    typer.echo("Press Ctrl-C to stop everything.")


def up(
    workspace: Workspace = None,
    host: Annotated[str, typer.Option()] = DEFAULT_HOST,
    port: Annotated[int, typer.Option()] = DEFAULT_PORT,
    studio_port: StudioPort = DEFAULT_STUDIO_PORT,
    studio: StudioFlag = True,
) -> None:
    """Start the engine server, then the studio; Ctrl-C stops everything it started."""
    _run_up(settings_for(workspace), host, port, studio_port if studio else None, demo_profile=None)


def demo(
    workspace: Workspace = None,
    host: Annotated[str, typer.Option()] = DEFAULT_HOST,
    port: Annotated[int, typer.Option()] = DEFAULT_PORT,
    profile: Annotated[str | None, typer.Option(
        help="A profile of configs/ (cpu64, tiny, smoke, paper); default: the one made for the default data "
             "(cpu64 for HAM10000 and phantom lesions, tiny for 28 px DermaMNIST).")] = None,
    studio_port: StudioPort = DEFAULT_STUDIO_PORT,
    studio: StudioFlag = True,
) -> None:
    """`up`, and on an empty workspace: import the default data (HAM10000 at 200x150 if found, else DermaMNIST,
    else phantom lesions), make two demo accounts, and start the generator chain so synthetic lesions arrive for
    review."""
    from engine.data.default import default_source
    from engine.recipes.registry import checked_profile

    try:
        profile = profile or default_source().profile
        checked_profile(profile)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e), code=2)
    _run_up(settings_for(workspace), host, port, studio_port if studio else None, demo_profile=profile)


