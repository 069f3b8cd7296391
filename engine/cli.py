"""`dermae`: the command line of DerMAE Studio. Every command but `serve` and `restore` talks to the engine over HTTP
(`backup` too, when a server runs; else it reads the database file, which no one holds then)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from engine.settings import DEFAULT_HOST, DEFAULT_PORT, Settings, exposure_problem

app = typer.Typer(help="DerMAE Studio: curate synthetic dermoscopy and train students on it.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

DEFAULT_STUDIO_PORT = 8501
StudioPort = Annotated[int, typer.Option(help="The studio's port (0 picks a free one).")]
StudioFlag = Annotated[bool, typer.Option("--studio/--no-studio", help="Start the review studio too.")]
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


def _fail(message: str, code: int = 1) -> NoReturn:
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
    max_jobs: Annotated[int, typer.Option(envvar="DERMAE_MAX_JOBS", min=1,
                                          help="Jobs running at once (1 suits a CPU).")] = 1,
    cancel_grace: Annotated[float, typer.Option(envvar="DERMAE_CANCEL_GRACE", min=0,
                                                help="Seconds a cancelled job has to checkpoint before "
                                                     "SIGKILL.")] = 10.0,
) -> None:
    """Run the engine server: the only process that opens the workspace database, and the job scheduler."""
    from engine.api.server import serve as run_server
    from engine.jobs.scheduler import SchedulerConfig
    from engine.store import StoreLocked

    try:
        run_server(_settings(workspace), host, port,
                   scheduler_config=SchedulerConfig(max_concurrent=max_jobs, cancel_grace=cancel_grace))
    except StoreLocked as e:
        _fail(str(e))


def _run_up(settings: Settings, host: str, port: int, studio_port: int | None, demo_profile: str | None) -> None:
    from engine.client import Client
    from engine.launcher import Launcher

    problem = exposure_problem(host, os.environ.get("DERMAE_API_TOKEN"), "the engine and the studio",
                               "DERMAE_API_TOKEN")
    if problem:
        _fail(problem)
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
    from engine.profiles import load_profile

    profile = load_profile(profile_name)
    source = default_source()
    typer.echo(f"Importing the default data: {source.description}")
    result = _call(client.import_data, source.format, source.path, split_seed=profile.data.split_seed,
                   phantom_size=profile.data.phantom_size)
    _print_import(result)
    if result.phantom:
        typer.secho("Note: this is PHANTOM data, not clinical data. For real data, set DERMAE_DATA to a HAM10000 "
                    "folder (with HAM10000_metadata.csv) or a dermamnist.npz.", fg=typer.colors.YELLOW)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


DEMO_ACCOUNTS = (("demo", "admin"), ("reader2", "reviewer"))  # two readers, so agreement has something to show


def _demo_accounts(client, settings: Settings) -> list[tuple[str, str, str]]:
    """The demo's sign-ins (name, role, password), made once with random passwords kept in the workspace (0600)."""
    import os
    import secrets

    path = settings.workspace / "demo_accounts.json"
    if path.exists():
        return [tuple(a) for a in json.loads(path.read_text())]
    existing = {u.name for u in _call(client.users)}
    accounts = [(name, role, secrets.token_urlsafe(9)) for name, role in DEMO_ACCOUNTS if name not in existing]
    for name, role, password in accounts:
        _call(client.add_user, name, password, role)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(accounts, f)
    return accounts


def _start_generator_once(client, profile_name: str) -> None:
    """A fresh workspace gets the generator chain at once, with a preview, so synthetic lesions arrive for review
    early in diffusion training."""
    from engine.pipelines import generator_chain
    from engine.profiles import load_profile

    if client.jobs(kind="train_ldm", limit=1).total or client.jobs(kind="generate", limit=1).total:
        return
    run = _call(client.submit_pipeline, generator_chain(load_profile(profile_name), preview=True))
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


@app.command()
def up(
    workspace: Workspace = None,
    host: Annotated[str, typer.Option()] = DEFAULT_HOST,
    port: Annotated[int, typer.Option()] = DEFAULT_PORT,
    studio_port: StudioPort = DEFAULT_STUDIO_PORT,
    studio: StudioFlag = True,
) -> None:
    """Start the engine server, then the studio; Ctrl-C stops everything it started."""
    _run_up(_settings(workspace), host, port, studio_port if studio else None, demo_profile=None)


@app.command()
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
    from engine.profiles import load_profile

    try:
        profile = profile or default_source().profile
        load_profile(profile)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e), code=2)
    _run_up(_settings(workspace), host, port, studio_port if studio else None, demo_profile=profile)


@app.command("import")
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
        _fail(f"unknown format {format!r}; choose one of {', '.join(f.value for f in ImportFormat)}", code=2)
    client = _client(workspace)
    typer.echo(f"Importing {fmt.value} from {path or 'the phantom generator'} …", err=True)
    if skip_missing and fmt not in (ImportFormat.ham10000, ImportFormat.isic):
        _fail(f"--skip-missing is for ham10000 and isic tables, not {fmt.value}", code=2)
    result = _call(client.import_data, fmt, str(path.resolve()) if path else None, split_seed=split_seed,
                   skip_missing=skip_missing)
    _print_import(result)


@app.command()
def imports(workspace: Workspace = None) -> None:
    """The import batches: their ids (for `evaluate --source` and `train --external`), sources and split kinds."""
    for b in _call(_client(workspace).imports):
        typer.echo(f"{b.id}  {b.format:<9} {b.n_added:>6} images  {b.split_kind or 'unrecorded':<12} {b.source}"
                   + ("  (PHANTOM)" if b.phantom else ""))


@app.command()
def evaluate(
    model: Annotated[int, typer.Argument(help="A registered model's id (`Runs & models` in the studio).")],
    source: Annotated[str, typer.Option(help="The import batch to evaluate on (`dermae imports`).")],
    split: Annotated[str | None, typer.Option(help="Only this split of it: train, val or test (default: all).")] = None,
    workspace: Workspace = None,
) -> None:
    """Evaluate a registered model on any imported real source, its images framed exactly as the model's
    training images were; prints the figures beside its own test-split evaluation, with the drop."""
    settings = _settings(workspace)
    client = _client(workspace)
    found = next((m for m in _call(client.models) if m.id == model), None)
    if found is None:
        _fail(f"no registered model {model}: the studio's Runs & models page lists them")
    job = _call(client.submit_job, "evaluate", {
        "model": str(settings.workspace / found.classifier_path), "dataset": found.dataset, "source": source,
        "source_split": split, "arm": f"{found.name} on {source}"})
    code = _follow(client, job.id)
    result = _call(client.job, job.id).result or {}
    if code == 0:
        own = (found.evaluation or {}).get("macro_f1")
        typer.echo(f"{found.name} on {source}: macro-F1 {result['macro_f1']:.3f}, balanced acc "
                   f"{result['balanced_accuracy']:.3f}, acc {result['accuracy']:.3f} ({result['n']} images)"
                   + (f"; on its test split {own:.3f}: drop {own - result['macro_f1']:+.3f}" if own is not None
                      else ""))
    raise typer.Exit(code)


def _print_import(result) -> None:
    typer.echo(f"{result.n_added} of {result.n_records} images added (batch {result.batch_id})"
               + (f", split {result.split_kind.value}" if result.split_kind else ""))
    for split, counts in result.added.items():
        if any(counts.values()):
            typer.echo(f"  {split:<5} " + "  ".join(f"{c} {n}" for c, n in counts.items()))
    if result.skipped:
        typer.secho(f"{len(result.skipped)} row(s) skipped, their image file missing:", fg=typer.colors.YELLOW)
        for row in result.skipped:
            typer.echo(f"  - {row}")


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


jobs_app = typer.Typer(help="Background jobs: list, inspect, follow, cancel, retry.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


def _parse_param(text: str) -> tuple[str, object]:
    """`k=v` with v read as JSON when it parses (numbers, booleans, null, lists), else as a string."""
    if "=" not in text:
        _fail(f"--param takes KEY=VALUE, got {text!r}", code=2)
    key, raw = text.split("=", 1)
    try:
        return key.strip(), json.loads(raw)
    except ValueError:
        return key.strip(), raw


@app.command()
def submit(
    kind: Annotated[str, typer.Argument(help="Job kind (see `dermae jobs kinds`).")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="KEY=VALUE, repeatable.")] = None,
    after: Annotated[list[int] | None, typer.Option(help="Job id that must succeed first; repeatable.")] = None,
    processes: Annotated[int, typer.Option(help="Processes (>1 runs under accelerate launch).")] = 1,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow it with a progress bar.")] = False,
    workspace: Workspace = None,
) -> None:
    """Queue a job and print its id."""
    params = dict(_parse_param(p) for p in param or [])
    client = _client(workspace)
    job = _call(client.submit_job, kind, params, after=after or [], num_processes=processes)
    typer.echo(job.id)
    if follow:
        raise typer.Exit(_follow(client, job.id))


@app.command()
def pipeline(
    name: Annotated[str, typer.Argument(help="generator: reference classifier, VAE, LDM, generate, score.")],
    profile: Annotated[str, typer.Option(help="cpu64 (HAM10000 at 64 px, the default) | tiny (DermaMNIST at 32 px) "
                                              "| smoke | paper (configs/).")] = "cpu64",
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow each job with a progress bar.")] = False,
    workspace: Workspace = None,
) -> None:
    """Submit a named chain of jobs with the profile's parameters; prints the pipeline run id."""
    from engine.pipelines import PIPELINES
    from engine.profiles import load_profile

    if name not in PIPELINES:
        _fail(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}", code=2)
    try:
        submission = PIPELINES[name](load_profile(profile))
    except ValueError as e:
        _fail(str(e), code=2)
    client = _client(workspace)
    run = _call(client.submit_pipeline, submission)
    typer.echo(run.id)
    for job in run.jobs:
        typer.echo(f"  job {job.id:>5}  {job.pipeline_key:<22} {job.kind}", err=True)
    if follow:
        codes = [_follow(client, job.id) for job in run.jobs]
        raise typer.Exit(max(codes))


@app.command()
def compare(
    run: Annotated[str, typer.Argument(help="A train run's pipeline id (`dermae jobs ls` shows them).")],
    workspace: Workspace = None,
) -> None:
    """A train run's comparison again: each arm (mean ± sd over seeds), its difference from real only, curated
    minus uncurated and minus real + KD, each with its interval over resampled test lesions."""
    _print_comparison(_client(workspace), run)


@app.command()
def train(
    profile: Annotated[str, typer.Option(help="cpu64 (HAM10000 at 64 px, the default) | tiny (DermaMNIST at 32 px) "
                                              "| smoke | paper (configs/).")] = "cpu64",
    dataset: Annotated[str | None, typer.Option(help="Dataset version; default: the newest (a real-only one is "
                                                     "frozen if there is none).")] = None,
    seeds: Annotated[int, typer.Option(min=1, max=5, help="Train the teacher and every arm this many times, "
                                                           "with different seeds: the table shows mean ± sd and "
                                                           "each arm's difference from real only with its "
                                                           "interval.")] = 1,
    real_fraction: Annotated[float, typer.Option(min=0.01, max=1.0, help="Every job of the run trains on this share "
                                                 "of the real train lesions per class, the same ones: what synthetic "
                                                 "images are worth to a clinic with little data.")] = 1.0,
    external: Annotated[str | None, typer.Option(help="An import batch (`dermae imports`) of other clinics' "
                                                      "images: every arm is evaluated on it as well, shown beside "
                                                      "the test split with the drop.")] = None,
    workspace: Workspace = None,
) -> None:
    """MAE pre-training, teacher fine-tune, students distilled on curated data and their real-only baselines,
    each evaluated on the real test split; follows the run and prints the comparison table."""
    from engine.client import Client, ServerNotFound
    from engine.launcher import Launcher
    from engine.pipelines import (
        freeze_uncurated_twin,
        is_uncurated_twin,
        synthetic_in,
        train_chain,
        uncurated_twin_of,
    )
    from engine.profiles import load_profile

    try:
        chosen = load_profile(profile)
    except ValueError as e:
        _fail(str(e), code=2)
    settings = _settings(workspace)
    launcher = Launcher()
    try:
        try:
            client = Client.from_settings(settings, timeout=60)
            client.health()
        except ServerNotFound:
            typer.echo("no engine running for this workspace: starting one for this run", err=True)
            launcher.start_server(settings, DEFAULT_HOST, 0)
            client = Client.from_settings(settings, timeout=60)
        if dataset is None:
            versions = [v for v in _call(client.datasets) if not is_uncurated_twin(v)]  # a twin is no run's data
            if versions:
                version = versions[0]
            else:
                version = _call(client.freeze_dataset, "real-only", "frozen by dermae train: no version existed")
                typer.echo(f"no dataset version yet: froze {version.id} (real images only)", err=True)
        else:
            version = _call(client.dataset, dataset)
        dataset = version.id
        uncurated = None
        if "uncurated" in chosen.arms and synthetic_in(version):
            uncurated = uncurated_twin_of(_call(client.datasets), version)
            if uncurated is None:
                uncurated = _call(freeze_uncurated_twin, client, version)
                typer.echo(f"uncurated arm: froze {uncurated.id} ({synthetic_in(uncurated)} synthetic images drawn "
                           "before any review, as many per class as the curated set)")
        run = _call(client.submit_pipeline, train_chain(chosen, version, seeds, uncurated, real_fraction, external))
        typer.echo(f"pipeline {run.id} on dataset {dataset}")
        codes = [_follow(client, job.id) for job in run.jobs]
        _print_comparison(client, run.id)
        raise typer.Exit(max(codes))
    except KeyboardInterrupt:
        typer.echo("\nstopped following; the jobs keep running in the engine" if not launcher.processes else
                   "\nstopping the engine this command started (its jobs resume when it is started again)")
    finally:
        launcher.stop_all()


def _print_comparison(client, pipeline_id: str) -> None:
    from engine.pipelines import arm_comparison, arm_differences, arm_summary, predictions_over_http

    jobs = _call(client.pipeline, pipeline_id).jobs
    rows = arm_comparison(jobs)
    if not rows:
        return

    def cell(value: float | None, spec: str, width: int) -> str:
        return format("–" if value is None else format(value, spec), f">{width}")

    summary = arm_summary(rows)
    typer.secho(f"\nreal test split ({' / '.join(sorted({r['split_kind'] for r in rows}))})", bold=True)
    if max(r["seeds"] for r in summary) > 1:
        typer.echo(f"{'arm':<52}{'seeds':>6}{'macro-F1':>16}{'bal.acc':>16}{'acc':>16}   (mean ± sd over seeds)")
        for r in summary:
            typer.echo(f"{r['arm'][:51]:<52}{r['seeds']:>6}" + "".join(
                f"{_mean_sd(r[name], r[f'{name}_sd']):>16}" for name in ("macro_f1", "balanced_accuracy", "accuracy")))
        typer.echo("")
    typer.echo(f"{'arm':<52}{'macro-F1':>9}{'1 view':>8}{'bal.acc':>9}{'acc':>7}{'AUC':>7}{'ECE':>7}{'params':>9}"
               f"{'GFLOPs':>8}{'ms':>7}")
    for r in rows:
        params = "–" if r["params"] is None else f"{r['params'] / 1e6:.2f}M"
        typer.echo(f"{r['arm'][:51]:<52}{cell(r['macro_f1'], '.3f', 9)}{cell(r['macro_f1_1view'], '.3f', 8)}"
                   f"{cell(r['balanced_accuracy'], '.3f', 9)}"
                   f"{cell(r['accuracy'], '.3f', 7)}{cell(r['auc_ovr'], '.3f', 7)}{cell(r['ece'], '.3f', 7)}"
                   f"{params:>9}{cell(r['gflops'], '.3f', 8)}{cell(r['latency_ms'], '.1f', 7)}")
    predictions = predictions_over_http(client)
    try:
        differences = arm_differences(jobs, predictions)
    except LookupError as e:
        typer.echo(f"\nno paired comparison: {e}")
        return
    if differences:
        typer.secho("\neach arm minus real only, same student and seed, same test images: difference (mean over "
                    "seeds) [95% interval over resampled test lesions]; * the interval excludes zero", bold=True)
        for d in differences:
            f1, bal = d["macro_f1"], d["balanced_accuracy"]
            typer.echo(f"{d['arm'][:51]:<52} macro-F1 {_difference(f1)}   balanced acc {_difference(bal)}")
    for reference, title in (
            ("uncurated", "curated minus uncurated, same student and seed (does curation help?)"),
            ("real_kd", "curated minus real only + MAE + KD, same teacher (what the synthetic images add beyond "
                        "the teacher)")):
        pair = arm_differences(jobs, predictions, reference=reference, arms=["curated"])
        if pair:
            typer.secho(f"\n{title}", bold=True)
            for d in pair:
                typer.echo(f"{d['arm'][:51]:<52} macro-F1 {_difference(d['macro_f1'])}   balanced acc "
                           f"{_difference(d['balanced_accuracy'])}")
    outside = [r for r in rows if r.get("external")]
    if outside:
        typer.secho(f"\nexternal: import batch {outside[0]['external']} (other clinics' images), beside the test split",
                    bold=True)
        typer.echo(f"{'arm':<52}{'test F1':>9}{'ext. F1':>9}{'drop':>8}{'ext. bal.acc':>14}")
        for r in outside:
            typer.echo(f"{r['arm'][:51]:<52}{cell(r['macro_f1'], '.3f', 9)}{cell(r['external_macro_f1'], '.3f', 9)}"
                       f"{cell(r['external_drop'], '+.3f', 8)}{cell(r['external_balanced_accuracy'], '.3f', 14)}")


def _mean_sd(mean: float | None, sd: float | None) -> str:
    return "–" if mean is None else f"{mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")


def _difference(d: dict) -> str:
    low, high = d["ci95"]
    return f"{d['diff']:+.3f} [{low:+.3f}, {high:+.3f}]{'*' if d['excludes_zero'] else ' '}"


def _job_row(job) -> str:
    fraction = job.progress.fraction
    progress = f"{100 * fraction:5.1f}%" if fraction is not None else "     -"
    return (f"{job.id:>6}  {job.kind:<14} {job.state.value:<11} {progress}  attempt {job.attempt}/"
            f"{job.max_attempts}  {job.pipeline_id or ''}")


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
    page = _call(_client(workspace).jobs, state=state, kind=kind, pipeline=pipeline, limit=limit)
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
    job = _call(_client(workspace).job, job_id)
    if as_json:
        typer.echo(job.model_dump_json(indent=2))
        return
    typer.echo(_job_row(job))
    typer.echo(f"  params   {json.dumps(job.params)}")
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
    for kind in _call(_client(workspace).job_kinds):
        typer.secho(kind.name, bold=True)
        typer.echo(f"  {kind.description}")
        for name, spec in kind.params_schema.get("properties", {}).items():
            typer.echo(f"    {name:<16} default {spec.get('default')!r}  {spec.get('description', '')}")


def _follow(client, job_id: int) -> int:
    """Stream the log and draw a progress bar until the job ends; exit code 0 only if it succeeded."""
    from tqdm import tqdm

    offset, bar, last_line = 0, None, ""
    while True:
        chunk = _call(client.job_logs, job_id, offset=offset)
        job = _call(client.job, job_id)
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
            return 0 if job.state.value == "succeeded" else 1
        time.sleep(0.5)


@jobs_app.command("logs")
def jobs_logs(
    job_id: int,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing, with a progress bar.")] = False,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
    workspace: Workspace = None,
) -> None:
    """Print a job's log; -f follows it live until the job ends."""
    client = _client(workspace)
    if follow:
        raise typer.Exit(_follow(client, job_id))
    typer.echo(_call(client.job_logs, job_id, tail=tail).text, nl=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, workspace: Workspace = None) -> None:
    """Cancel a job: at once if queued; a running one gets SIGTERM, time to checkpoint, then SIGKILL."""
    job = _call(_client(workspace).cancel_job, job_id)
    typer.echo(f"job {job.id} {job.state.value}")


@jobs_app.command("retry")
def jobs_retry(job_id: int, workspace: Workspace = None) -> None:
    """Re-queue a failed or cancelled job; it resumes from its last checkpoint."""
    job = _call(_client(workspace).retry_job, job_id)
    typer.echo(f"job {job.id} {job.state.value} (attempt {job.attempt + 1} next)")


datasets_app = typer.Typer(help="Frozen dataset versions: the curated set that training names.",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


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
    version = _call(_client(workspace).freeze_dataset, name, note, accepts_needed=accepts, selection=selection,
                    min_intended_prob=min_intended_prob)
    typer.echo(version.id)
    typer.echo(_version_row(version), err=True)


@datasets_app.command("ls")
def datasets_ls(as_json: Annotated[bool, typer.Option("--json")] = False, workspace: Workspace = None) -> None:
    """Dataset versions, newest first."""
    versions = _call(_client(workspace).datasets)
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
        root = _call(_client(workspace).export_dataset, version, dest)
    except FileExistsError as e:
        _fail(str(e))
    typer.echo(root)
    typer.echo(f"torchvision.datasets.ImageFolder('{root / 'train'}') reads it; manifest.csv says where each image "
               "came from", err=True)


users_app = typer.Typer(help="Reviewer accounts for the studio.", no_args_is_help=True)
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Sign-in name: letters, digits, . _ -")],
    role: Annotated[str, typer.Option(help="admin | reviewer | viewer")] = "reviewer",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin "
                                                                         "(scripts) instead of prompting.")]
    = False,
    workspace: Workspace = None,
) -> None:
    """Add an account; the password is asked for twice (or read from stdin) and stored only as a salted hash."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    user = _call(_client(workspace).add_user, name, password, role)
    typer.echo(f"added {user.name} ({user.role})")


@users_app.command("ls")
def users_ls(workspace: Workspace = None) -> None:
    """Accounts and their roles."""
    for user in _call(_client(workspace).users):
        typer.echo(f"{user.name:<24} {user.role:<9} {user.created_at:%Y-%m-%d %H:%M}")


@app.command()
def policy(
    accepts: Annotated[int | None, typer.Argument(help="Set k: an image is accepted with k accepts and no "
                                                       "reject. Omit to show the policy in force.")] = None,
    blind: Annotated[bool | None, typer.Option("--blind/--no-blind", help="Blind reading: a reviewer sees no "
                                               "other reviewer's decision on an image until they have decided "
                                               "it (the default).")] = None,
    workspace: Workspace = None,
) -> None:
    """The review policy: k accepts and no reject, and blind reading."""
    client = _client(workspace)
    changing = accepts is not None or blind is not None
    current = _call(client.set_review_policy, accepts, blind) if changing else _call(client.review_policy)
    typer.echo(f"accepted = {current.accepts_needed} accept(s) and no reject; reading is "
               f"{'blind' if current.blind else 'open (reviewers see each other’s decisions)'}"
               + (f" (set by {current.changed_by} at {current.changed_at:%Y-%m-%d %H:%M} UTC)"
                  if current.changed_by and current.changed_at else ""))


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
        _fail(str(e))
    if Path(health.workspace).resolve() != settings.workspace:
        _fail(f"the engine at {client.base_url} serves {health.workspace}, not {settings.workspace}: pass "
              f"--workspace {health.workspace}, or unset DERMAE_API_URL")
    return client


@app.command()
def backup(
    path: Annotated[Path, typer.Argument(help="A new or empty folder, outside the workspace.")],
    workspace: Workspace = None,
) -> None:
    """Back up the workspace into PATH: the database, exported by the running server (which keeps working) or
    read directly when none runs, then the images, job folders, dataset manifests, logs and API token, with a
    SHA-256 of every file in BACKUP.json. PATH holds the whole backup or nothing."""
    from engine.backup import BackupProblem, create_backup
    from engine.store import BackupFailed, DatabaseExport, StoreLocked, export_database_file

    settings = _settings(workspace)
    client = _server_of(settings)

    def export(folder: Path) -> DatabaseExport:
        if client is None:
            return export_database_file(settings.db_path, folder)
        done = _call(client.backup_database, folder)
        return DatabaseExport(done.schema_version, done.counts)

    try:
        result = create_backup(settings, path, export, progress=_bytes_bar)
    except (BackupProblem, BackupFailed, StoreLocked, FileNotFoundError) as e:
        _fail(str(e))
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


@app.command()
def restore(
    path: Annotated[Path, typer.Argument(help="A folder made by `dermae backup`.")],
    workspace: Workspace = None,
) -> None:
    """Restore a backup into a new or empty workspace (never over one in use). Every file's SHA-256 is checked
    before anything is written; a backup of an older schema is upgraded, one of a newer schema refused."""
    from engine.backup import BackupProblem, restore_backup
    from engine.store import BackupFailed

    settings = _settings(workspace)
    try:
        result = restore_backup(path, settings, progress=_bytes_bar)
    except (BackupProblem, BackupFailed) as e:
        _fail(str(e))
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


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
