"""Background jobs: `dermae submit`, `pipeline` and `dermae jobs` (list, inspect, follow, cancel, retry)."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from engine.cli.common import Workspace, call, client_for, fail

jobs_app = typer.Typer(help="Background jobs: list, inspect, follow, cancel, retry.", no_args_is_help=True)

def _parse_param(text: str, option: str = "--param") -> tuple[str, object]:
    """`k=v` with v read as JSON when it parses (numbers, booleans, null, lists), else as a string."""
    if "=" not in text:
        fail(f"{option} takes KEY=VALUE, got {text!r}", code=2)
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except ValueError:
        return key.strip(), raw


def submit(
    kind: Annotated[str, typer.Argument(help="Job kind (see `dermae jobs kinds`).")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE, repeatable.")] = None,
    after: Annotated[list[int] | None, typer.Option(help="Job id that must succeed first; repeatable.")] = None,
    processes: Annotated[int, typer.Option(help="Processes (>1 runs under accelerate launch).")] = 1,
    resource: Annotated[list[str] | None, typer.Option(
        "--resource", "-r", help="What the job asks of its machine, KEY=VALUE, repeatable: nodes, gpus_per_node, "
                                 "cpus_per_task, mem_gb, time_limit_min, partition (sbatch options under "
                                 "--executor slurm).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow it with a progress bar.")] = False,
    workspace: Workspace = None,
) -> None:
    """Queue a job and print its id."""
    params = dict(_parse_param(p) for p in param or [])
    resources = dict(_parse_param(r, "--resource") for r in resource or [])
    client = client_for(workspace)
    job = call(client.submit_job, kind, params, after=after or [], num_processes=processes,
               **({"resources": resources} if resources else {}))
    typer.echo(job.id)
    if follow:
        raise typer.Exit(follow(client, job.id))


def pipeline(
    name: Annotated[str, typer.Argument(help="generator: reference classifier, VAE, LDM, generate, score.")],
    profile: Annotated[str, typer.Option(help="cpu64 (HAM10000 at 64 px, the default) | tiny (DermaMNIST at 32 px) "
                                              "| smoke | paper (configs/).")] = "cpu64",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow each job with a progress bar.")] = False,
    workspace: Workspace = None,
) -> None:
    """Submit a named chain of jobs with the profile's parameters; prints the pipeline run id."""
    from engine.pipelines import PIPELINES
    from engine.recipes.registry import checked_profile

    if name not in PIPELINES:
        fail(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}", code=2)
    try:
        submission = PIPELINES[name](checked_profile(profile))
    except ValueError as e:
        fail(str(e), code=2)
    client = client_for(workspace)
    run = call(client.submit_pipeline, submission)
    typer.echo(run.id)
    for job in run.jobs:
        typer.echo(f"  job {job.id:>5}  {job.pipeline_key:<22} {job.kind}", err=True)
    if follow:
        codes = [follow(client, job.id) for job in run.jobs]
        raise typer.Exit(max(codes))


def _job_row(job) -> str:
    fraction = job.progress.fraction
    progress = f"{100 * fraction:5.1f}%" if fraction is not None else "     -"
    slurm = f"  slurm {job.slurm_job_id}" if job.slurm_job_id else ""
    return (f"{job.id:>6}  {job.kind:<14} {job.state.value:<11} {progress}  attempt {job.attempt}/"
            f"{job.max_attempts}  {job.pipeline_id or ''}{slurm}")


@jobs_app.command("ls")
def jobs_ls(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only jobs of this kind.")] = None,
    pipeline: Annotated[str | None, typer.Option(help="Only jobs of this pipeline run.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    workspace: Workspace = None,
) -> None:
    """List jobs, newest first."""
    page = call(client_for(workspace).jobs, state=state, kind=kind, pipeline=pipeline, limit=limit)
    if as_json:
        typer.echo(json.dumps([j.model_dump(mode="json") for j in page.items], indent=2))
        return
    typer.echo(f"{'id':>6}  {'kind':<14} {'state':<11} {'done':>6}  attempts    pipeline")
    for job in page.items:
        typer.echo(_job_row(job))
    if page.total > len(page.items):
        typer.echo(f"… {page.total - len(page.items)} more (--limit)")


@jobs_app.command("show")
def jobs_show(job_id: int, as_json: Annotated[bool, typer.Option("--json")] = False,
              workspace: Workspace = None) -> None:
    """One job: state, attempt, progress, parameters, result or error."""
    job = call(client_for(workspace).job, job_id)
    if as_json:
        typer.echo(job.model_dump_json(indent=2))
        return
    typer.echo(_job_row(job))
    typer.echo(f"  params   {json.dumps(job.params)}")
    typer.echo(f"  asks     {job.resources.describe(job.num_processes)}")
    if job.slurm_job_id:
        typer.echo(f"  slurm    job {job.slurm_job_id} (attempt {job.attempt})")
    if job.after:
        typer.echo(f"  after    {', '.join(map(str, job.after))}")
    if job.progress.message:
        typer.echo(f"  progress {job.progress.done:g}/{job.progress.total or 0:g} {job.progress.message}")
    if job.result is not None:
        typer.echo(f"  result   {json.dumps(job.result)}")
    if job.error:
        typer.echo(f"  error    {job.error}")


@jobs_app.command("kinds")
def jobs_kinds(workspace: Workspace = None) -> None:
    """The job kinds the engine knows, with their parameters."""
    for kind in call(client_for(workspace).job_kinds):
        typer.secho(kind.name, bold=True)
        typer.echo(f"  {kind.description}")
        for name, spec in kind.params_schema.get("properties", {}).items():
            typer.echo(f"    {name:<16} default {spec.get('default')!r}  {spec.get('description', '')}")


def follow(client, job_id: int) -> int:
    """Stream the log and draw a progress bar until the job ends; exit code 0 only if it succeeded."""
    from tqdm import tqdm

    from engine.schemas import JobState

    offset, bar, last_line = 0, None, ""
    while True:
        chunk = call(client.job_logs, job_id, offset=offset)
        job = call(client.job, job_id)
        if chunk.text.strip():
            (bar.write if bar else typer.echo)(chunk.text.rstrip("\n"))
            last_line = chunk.text.strip().splitlines()[-1]
        offset = chunk.offset
        if job.progress.total:
            done, message = int(job.progress.done or 0), job.progress.message or ""
            if bar is None:  # started at the job's current step, so the rate counts only steps seen here;
                # drawn on change only (polls outpace steps), and then always: the poll interval paces it
                bar = tqdm(total=int(job.progress.total), initial=done, desc=f"job {job_id}", unit="step",
                           postfix=message, mininterval=0)
            if done != bar.n or message != (bar.postfix or ""):
                bar.total = int(job.progress.total)
                bar.set_postfix_str(message, refresh=False)
                if done != bar.n:
                    bar.update(done - bar.n)
                else:
                    bar.refresh()
        if job.state.value in ("succeeded", "failed", "cancelled") and chunk.finished:
            if bar:
                bar.close()
            outcome = f"job {job_id} {job.state.value}" + (f": {job.error}" if job.error else "")
            if last_line != outcome:  # the job's own log ends with it, unless it never ran (cancelled while queued)
                typer.echo(outcome)
            return 0 if job.state == JobState.succeeded else 1
        time.sleep(0.5)


@jobs_app.command("logs")
def jobs_logs(
    job_id: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing, with a progress bar.")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
    workspace: Workspace = None,
) -> None:
    """Print a job's log; -f follows it live until the job ends."""
    client = client_for(workspace)
    if follow:
        raise typer.Exit(follow(client, job_id))
    typer.echo(call(client.job_logs, job_id, tail=tail).text, nl=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, workspace: Workspace = None) -> None:
    """Cancel a job: at once if queued; a running one gets SIGTERM, time to checkpoint, then SIGKILL."""
    job = call(client_for(workspace).cancel_job, job_id)
    typer.echo(f"job {job.id} {job.state.value}")


@jobs_app.command("retry")
def jobs_retry(job_id: int, workspace: Workspace = None) -> None:
    """Re-queue a failed or cancelled job; it resumes from its last checkpoint."""
    job = call(client_for(workspace).retry_job, job_id)
    typer.echo(f"job {job.id} {job.state.value} (attempt {job.attempt + 1} next)")


