"""Training runs: `dermae train` (the arms of a run, seeds, scarce data, an external set), `compare` and `evaluate`."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli.common import Workspace, call, client_for, fail, settings_for
from engine.cli.jobs import follow
from engine.settings import DEFAULT_HOST


def evaluate(
    model: Annotated[int, typer.Argument(help="A registered model's id (`Runs & models` in the studio).")],
    source: Annotated[str, typer.Option(help="The import batch to evaluate on (`dermae imports`).")],
    split: Annotated[str | None, typer.Option(help="Only this split of it: train, val or test (default: all).")] = None,
    workspace: Workspace = None,
) -> None:
    """Evaluate a registered model on any imported real source, its images framed exactly as the model's
    training images were; prints the figures beside its own test-split evaluation, with the drop."""
    settings = settings_for(workspace)
    client = client_for(workspace)
    found = next((m for m in call(client.models) if m.id == model), None)
    if found is None:
        fail(f"no registered model {model}: the studio's Runs & models page lists them")
    job = call(client.submit_job, "evaluate", {
        "model": str(settings.workspace / found.classifier_path), "dataset": found.dataset, "source": source,
        "source_split": split, "arm": f"{found.name} on {source}"})
    code = follow(client, job.id)
    result = call(client.job, job.id).result or {}
    if code == 0:
        own = (found.evaluation or {}).get("macro_f1")
        typer.echo(f"{found.name} on {source}: macro-F1 {result['macro_f1']:.3f}, balanced acc "
                   f"{result['balanced_accuracy']:.3f}, acc {result['accuracy']:.3f} ({result['n']} images)"
                   + (f"; on its test split {own:.3f}: drop {own - result['macro_f1']:+.3f}" if own is not None
                      else ""))
    raise typer.Exit(code)


def compare(
    run: Annotated[str, typer.Argument(help="A train run's pipeline id (`dermae jobs ls` shows them).")],
    workspace: Workspace = None,
) -> None:
    """A train run's comparison again: each arm (mean ± sd over seeds), its difference from real only, curated
    minus uncurated and minus real + KD, each with its interval over resampled test lesions."""
    print_comparison(client_for(workspace), run)


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
    from engine.recipes.registry import checked_profile

    try:
        chosen = checked_profile(profile)
    except ValueError as e:
        fail(str(e), code=2)
    settings = settings_for(workspace)
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
            versions = [v for v in call(client.datasets) if not is_uncurated_twin(v)]  # a twin is no run's data
            if versions:
                version = versions[0]
            else:
                version = call(client.freeze_dataset, "real-only", "frozen by dermae train: no version existed")
                typer.echo(f"no dataset version yet: froze {version.id} (real images only)", err=True)
        else:
            version = call(client.dataset, dataset)
        dataset = version.id
        uncurated = None
        if "uncurated" in chosen.arms and synthetic_in(version):
            uncurated = uncurated_twin_of(call(client.datasets), version)
            if uncurated is None:
                uncurated = call(freeze_uncurated_twin, client, version)
                typer.echo(f"uncurated arm: froze {uncurated.id} ({synthetic_in(uncurated)} synthetic images drawn "
                           "before any review, as many per class as the curated set)")
        run = call(client.submit_pipeline, train_chain(chosen, version, seeds, uncurated, real_fraction, external))
        typer.echo(f"pipeline {run.id} on dataset {dataset}")
        codes = [follow(client, job.id) for job in run.jobs]
        print_comparison(client, run.id)
        raise typer.Exit(max(codes))
    except KeyboardInterrupt:
        typer.echo("\nstopped following; the jobs keep running in the engine" if not launcher.processes else
                   "\nstopping the engine this command started (its jobs resume when it is started again)")
    finally:
        launcher.stop_all()


def print_comparison(client, pipeline_id: str) -> None:
    from engine.pipelines import arm_comparison, arm_differences, arm_summary, predictions_over_http

    jobs = call(client.pipeline, pipeline_id).jobs
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


