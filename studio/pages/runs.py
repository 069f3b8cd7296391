"""Runs & models: what training produced. A train run's arms compared on the real test split (the table `dermae
train` prints, per-class F1 side by side, a confusion matrix per arm); any job's metric curves and image grids
(generator jobs too); the exported models with their evaluation, and which one the demo serves (admins change it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from engine.client import Client
from engine.pipelines import ARM_FIGURES, arm_comparison, arm_differences, arm_summary, predictions_over_http
from engine.schemas import Artifact, JobInfo, JobState, MetricSeries, ModelInfo
from studio import api

T = TypeVar("T")
JOBS_LISTED = 1000  # the newest jobs, grouped into runs; a picked run is then fetched whole
TRAINING_KINDS = {"pretrain_mae", "finetune", "distill", "evaluate", "export"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
STATE_ORDER = ("running", "cancelling", "failed", "cancelled", "queued")  # what a run's state says first
CONFUSIONS_PER_ROW = 3
# The comparison table's columns beyond the arm: ARM_FIGURES with params in millions.
TABLE_COLUMNS = {**ARM_FIGURES, "params": "params (M)"}


@st.cache_data(max_entries=500, show_spinner=False)
def artifact_file(_client: Client, job_id: int, artifact_id: int, sha256: str) -> bytes:
    """An artifact's bytes. Its sha256 is part of the key, so a cached file is never stale."""
    return _client.artifact_bytes(job_id, artifact_id)


def run_state(jobs: list[JobInfo]) -> str:
    """One word for a run: running while any job runs, else the worst of failed/cancelled/queued, else done."""
    states = {j.state.value for j in jobs}
    return next((s for s in STATE_ORDER if s in states), "succeeded")


def is_training_run(jobs: list[JobInfo]) -> bool:
    """A pipeline that trains, evaluates or exports classifiers (`dermae train`'s chain, or one like it)."""
    return bool(jobs[0].pipeline_id) and any(j.kind in TRAINING_KINDS for j in jobs)


def remembered_selectbox(label: str, options: list[T], format_func: Callable[[T], str], remembered: str) -> T:
    """A selectbox whose labels may change between reruns (a run's state moves on) without losing the choice:
    a keyed selectbox matches its choice by label and would jump back to the first option. The choice is kept
    by value in the session instead, and the widget (unkeyed) is rebuilt around it when the labels change."""
    previous = st.session_state.get(remembered)
    chosen = st.selectbox(label, options, index=options.index(previous) if previous in options else 0,
                          format_func=format_func)
    st.session_state[remembered] = chosen
    return chosen


def run_label(run_id: str, jobs: list[JobInfo]) -> str:
    """What the run picker shows: the run, its state and how far it got, when it started."""
    first = min(jobs, key=lambda j: j.id)
    when = first.created_at.strftime("%Y-%m-%d %H:%M")
    if first.pipeline_id is None:
        return f"job {first.id} · {first.kind} · {first.state.value} · {when}"
    done = sum(j.state == JobState.succeeded for j in jobs)
    return f"{run_id} · {run_state(jobs)} · {done}/{len(jobs)} jobs done · {when}"


def evaluation_report(client: Client, job_id: int) -> dict | None:
    """The JSON report an evaluate job wrote (per class, confusion, reliability …), fetched over HTTP."""
    artifacts = api.call(client.job_artifacts, job_id) or []
    found = next((a for a in reversed(artifacts) if a.kind == "evaluation"), None)
    data = api.call(artifact_file, client, job_id, found.id, found.sha256) if found else None
    return json.loads(data) if data else None


def confusion_figure(report: dict, title: str) -> go.Figure:
    """Counts as text, colour by share of the true class (rows): on imbalanced data raw counts would only
    light up nv."""
    classes = list(report["per_class"])
    counts = report["confusion"]
    shares = [[n / max(1, sum(row)) for n in row] for row in counts]
    figure = go.Figure(go.Heatmap(z=shares, x=classes, y=classes, text=counts, texttemplate="%{text}",
                                  colorscale="Blues", zmin=0, zmax=1, showscale=False,
                                  hovertemplate="true %{y}, predicted %{x}: %{text}<extra></extra>"))
    figure.update_yaxes(autorange="reversed", title="true")
    figure.update_xaxes(title="predicted")
    figure.update_layout(title=title, height=380, margin={"t": 50, "b": 10, "l": 10, "r": 10})
    return figure


def show_comparison(client: Client, jobs: list[JobInfo]) -> None:
    """The arms side by side: the comparison table, per-class F1 as grouped bars, a confusion matrix per arm."""
    rows = arm_comparison(jobs)
    if not rows:
        st.info("No arm of this run has been evaluated yet: the comparison fills in as its evaluate jobs finish.")
        return
    kinds = sorted({r["split_kind"] for r in rows})
    st.subheader(f"Arms on the real test split ({' / '.join(kinds)})")
    if kinds != ["lesion-aware"]:
        st.warning("Not every figure here is on a lesion-aware split: where images of one lesion sit in train and "
                   "test (a per-image split, as DermaMNIST's), test figures are optimistic.")
    in_millions = [r | {"params": r["params"] / 1e6 if r["params"] is not None else None} for r in rows]
    st.dataframe([{"arm": r["arm"], **{TABLE_COLUMNS[k]: r[k] for k in ARM_FIGURES}} for r in in_millions],
                 hide_index=True, width="stretch",
                 column_config={label: st.column_config.NumberColumn(format="%.3f") for label in
                                ("macro-F1", "macro-F1, 1 view", "balanced accuracy", "accuracy", "AUC", "ECE",
                                 "GFLOPs")}
                 | {"params (M)": st.column_config.NumberColumn(format="%.2f"),
                    "latency (ms)": st.column_config.NumberColumn(format="%.1f")})
    st.caption("Macro-F1 and balanced accuracy weigh every class alike: they show whether the rare classes are "
               "learned. The figures average each image's 8 flips/rotations, as the served model does; "
               "\"1 view\" is the model on the image alone. Latency: batch 1 on this engine's CPU.")
    outside = [r for r in rows if r.get("external")]
    if outside:
        figure = go.Figure([go.Bar(name=name, x=[r["arm"] for r in outside], y=[r[key] for r in outside])
                            for name, key in (("test split", "macro_f1"),
                                              (f"external ({outside[0]['external']})", "external_macro_f1"))])
        figure.update_layout(barmode="group", title="Macro-F1: in distribution vs other clinics' images",
                             yaxis_range=[0, 1], height=380, margin={"t": 50, "b": 10},
                             legend={"orientation": "h", "y": -0.3})
        st.plotly_chart(figure, width="stretch", key="runs_external")
        st.dataframe([{"arm": r["arm"], "test macro-F1": r["macro_f1"], "external macro-F1": r["external_macro_f1"],
                       "drop": r["external_drop"], "external balanced accuracy": r["external_balanced_accuracy"]}
                      for r in outside], hide_index=True, width="stretch",
                     column_config={c: st.column_config.NumberColumn(format="%.3f") for c in
                                    ("test macro-F1", "external macro-F1", "drop", "external balanced accuracy")})
    summary = arm_summary(rows)
    if max(r["seeds"] for r in summary) > 1:
        figure = go.Figure([go.Bar(name=label, x=[r["arm"] for r in summary], y=[r[name] for r in summary],
                                   error_y={"type": "data", "array": [r[f"{name}_sd"] or 0 for r in summary]})
                            for name, label in (("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy"))])
        figure.update_layout(barmode="group", title="Arms: mean and sd over seeds", yaxis_range=[0, 1], height=380,
                             margin={"t": 50, "b": 10}, legend={"orientation": "h", "y": -0.3})
        st.plotly_chart(figure, width="stretch", key="runs_arm_seeds")
    show_differences(client, jobs)
    reports = {r["job_id"]: report for r in rows if (report := evaluation_report(client, r["job_id"]))}
    if not reports:
        return
    classes = list(next(iter(reports.values()))["per_class"])
    per_arm: dict[str, list[dict]] = {}  # arm -> its reports, one per seed
    for r in rows:
        if r["job_id"] in reports:
            per_arm.setdefault(r["arm"], []).append(reports[r["job_id"]])
    figure = go.Figure()
    for arm, seeded in per_arm.items():
        f1 = np.array([[report["per_class"][c]["f1"] for c in classes] for report in seeded])
        figure.add_trace(go.Bar(name=arm, x=classes, y=f1.mean(0).tolist(),
                                error_y={"type": "data", "array": f1.std(0, ddof=1).tolist()} if len(f1) > 1 else None))
    seeds = max(len(seeded) for seeded in per_arm.values())
    figure.update_layout(barmode="group", yaxis_title="F1",
                         title="Per-class F1 on the real test split" + (
                             f" (mean and sd over {seeds} seeds)" if seeds > 1 else ""),
                         yaxis_range=[0, 1], height=400, margin={"t": 50, "b": 10},
                         legend={"orientation": "h", "y": -0.15})
    st.plotly_chart(figure, width="stretch", key="runs_per_class_f1")
    evaluated = [r for r in rows if r["job_id"] in reports]
    for start in range(0, len(evaluated), CONFUSIONS_PER_ROW):
        columns = st.columns(CONFUSIONS_PER_ROW)
        for column, row in zip(columns, evaluated[start:start + CONFUSIONS_PER_ROW], strict=False):
            column.plotly_chart(confusion_figure(reports[row["job_id"]], row["arm"]), width="stretch",
                                key=f"runs_confusion_{row['job_id']}")


@st.cache_data(max_entries=50, show_spinner="Bootstrapping the differences over test lesions…")
def run_differences(_client: Client, _jobs: list[JobInfo], evaluated: tuple[tuple[int, int], ...]) -> list[dict]:
    """`arm_differences` of a run, computed once per set of finished evaluations ((job id, attempt) each): a
    rerun of the page does not fetch every job's predictions and resample again."""
    fetch = lambda job_id, artifact: artifact_file(_client, job_id, artifact.id, artifact.sha256)  # noqa: E731
    predictions = predictions_over_http(_client, fetch)
    rows = arm_differences(_jobs, predictions)
    for reference in ("uncurated", "real_kd"):  # does curation help; what synthetic images add beyond the teacher
        rows += arm_differences(_jobs, predictions, reference=reference, arms=["curated"])
    return rows


def compared(d: dict) -> str:
    """A difference's row name: the arm, and what it is set against unless that is real only."""
    against = d["baseline"].split(": ", 1)[-1]
    return d["arm"] if against == "real only" else f"{d['arm']} minus {against}"


def show_differences(client: Client, jobs: list[JobInfo]) -> None:
    """Each arm minus real only (same student, same test images) with its 95% interval over resampled lesions;
    then the curated arm minus the uncurated one (does curation help?) and minus real + KD (what the synthetic
    images add beyond the teacher)."""
    evaluated = tuple(sorted((j.id, j.attempt) for j in jobs if j.kind == "evaluate" and isinstance(j.result, dict)))
    try:
        differences = run_differences(client, jobs, evaluated)
    except (LookupError, ValueError) as e:
        st.caption(f"No paired comparison: {e}")
        return
    if not differences:
        return
    figure = go.Figure()
    for name, label in (("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced accuracy")):
        diffs = [d[name] for d in differences]
        figure.add_trace(go.Scatter(
            x=[d["diff"] for d in diffs], y=[compared(d) for d in differences], mode="markers", name=label,
            error_x={"type": "data", "symmetric": False, "array": [d["ci95"][1] - d["diff"] for d in diffs],
                     "arrayminus": [d["diff"] - d["ci95"][0] for d in diffs]},
            hovertemplate="%{y}: %{x:+.3f}<extra>" + label + "</extra>"))
    figure.add_vline(x=0, line_dash="dot")
    figure.update_layout(title="Each arm minus real only (and curated minus uncurated, minus real + KD), same "
                               "student: difference and 95% interval",
                         xaxis_title="difference on the real test split", height=120 + 60 * len(differences),
                         margin={"t": 50, "b": 10, "l": 10, "r": 10}, legend={"orientation": "h", "y": -0.3})
    st.plotly_chart(figure, width="stretch", key="runs_differences")
    st.dataframe([{"arm": d["arm"], "against": d["baseline"],
                   **{label: f"{d[name]['diff']:+.3f} [{d[name]['ci95'][0]:+.3f}, {d[name]['ci95'][1]:+.3f}]"
                      + (" *" if d[name]["excludes_zero"] else "")
                      for name, label in (("macro_f1", "Δ macro-F1"), ("balanced_accuracy", "Δ balanced accuracy"))},
                   "seeds": d["seeds"], "Δ macro-F1 per seed": " ".join(f"{v:+.3f}" for v in d["macro_f1"]["per_seed"])}
                  for d in differences], hide_index=True, width="stretch")
    seeds = max(d["seeds"] for d in differences)
    st.caption(f"Paired bootstrap over the {differences[0]['macro_f1']['groups']} test lesions (2,000 resamples; "
               "all images of a lesion are drawn together, so one lesion's several images do not narrow the "
               "interval). * the interval excludes zero. "
               + (f"Differences are means over {seeds} seeds, each arm against real only of its own seed."
                  if seeds > 1 else "One seed: the teacher's seed alone moves macro-F1 by about 0.03, so run "
                  "`make train SEEDS=3` before reading much into a difference."))


def show_curves(series: list[MetricSeries], key: str) -> None:
    """One chart per metric group (the part before the first '/': train/*, val/* …); single values (a test
    score logged once) as a table, since a one-point line says nothing."""
    groups: dict[str, list[MetricSeries]] = {}
    single = [s for s in series if len(s.steps) < 2]
    for s in series:
        if len(s.steps) >= 2:
            groups.setdefault(s.name.split("/", 1)[0], []).append(s)
    if not series:
        st.caption("This job has logged no metrics (yet).")
    columns = st.columns(2) if len(groups) > 1 else [st.container()]
    for i, (group, members) in enumerate(groups.items()):
        figure = go.Figure([go.Scatter(x=s.steps, y=s.values, mode="lines", name=s.name) for s in members])
        figure.update_layout(title=f"{group}/*" if "/" in members[0].name else group, xaxis_title="step",
                             height=320, margin={"t": 50, "b": 10}, legend={"orientation": "h", "y": -0.25})
        columns[i % len(columns)].plotly_chart(figure, width="stretch", key=f"{key}_{group}")
    if single:
        st.dataframe([{"metric": s.name, "step": s.steps[0], "value": s.values[0]} for s in single],
                     hide_index=True)


def show_images(client: Client, job: JobInfo, artifacts: list[Artifact]) -> None:
    """Image artifacts (sample and reconstruction grids) by kind, the latest first; a slider steps back through
    the earlier ones of training."""
    by_kind: dict[str, list[Artifact]] = {}
    for artifact in artifacts:
        if artifact.path.lower().endswith(IMAGE_SUFFIXES):
            by_kind.setdefault(artifact.kind, []).append(artifact)
    for kind, found in by_kind.items():
        chosen = found[-1]
        if len(found) > 1:  # unkeyed: when a new grid arrives, the slider starts again at the newest
            names = {a.id: a.path.rsplit("/", 1)[-1] for a in found}
            picked_id = st.select_slider(f"{kind.replace('_', ' ')}: which one", list(names), value=found[-1].id,
                                         format_func=names.__getitem__)
            chosen = next(a for a in found if a.id == picked_id)
        data = api.call(artifact_file, client, job.id, chosen.id, chosen.sha256)
        if data:
            st.image(data, caption=f"{kind} · {chosen.path.rsplit('/', 1)[-1]}")


def show_evaluation(report: dict, job_id: int) -> None:
    """An evaluate job's own report: confusion, per-class figures and the reliability diagram."""
    left, right = st.columns(2)
    left.plotly_chart(confusion_figure(report, "Confusion (rows: true class)"), width="stretch",
                      key=f"runs_job_confusion_{job_id}")
    bins = report.get("reliability") or []
    figure = go.Figure([
        go.Scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers",
                   name="model"),
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="perfectly calibrated")])
    figure.update_layout(title=f"Reliability (ECE {report['ece']:.3f})", xaxis_title="confidence",
                         yaxis_title="accuracy", height=380, margin={"t": 50, "b": 10})
    right.plotly_chart(figure, width="stretch", key=f"runs_job_reliability_{job_id}")
    st.dataframe([{"class": c, **row} for c, row in report["per_class"].items()],
                 hide_index=True)


def show_job(client: Client, job: JobInfo) -> None:
    """What one job logged: its curves, its image grids, its evaluation if it is one, its result."""
    st.caption(f"job {job.id} · {job.kind} · {job.state.value}"
               + (f" · {job.progress.message}" if job.progress.message else ""))
    if job.error:
        st.error(f"This job failed: {(job.error.strip().splitlines() or [job.error])[-1]}")
    show_curves(api.call(client.job_metrics, job.id) or [], key=f"runs_curves_{job.id}")
    artifacts = api.call(client.job_artifacts, job.id) or []
    show_images(client, job, artifacts)
    if job.kind == "evaluate" and (report := evaluation_report(client, job.id)):
        show_evaluation(report, job.id)
    with st.expander("Parameters and result"):
        st.json({"params": job.params, "result": job.result, "artifacts": [f"{a.kind}: {a.path}" for a in artifacts]},
                expanded=False)


def show_models(client: Client, run_of_job: dict[int, str]) -> None:
    """Exported models with their evaluation; admins pick the one the demo serves."""
    st.header("Models")
    models: list[ModelInfo] = api.call(client.models) or []
    if not models:
        st.info("No exported model yet: the export step at the end of a training run registers one "
                "(start a run from the Jobs page or with `make train`).")
        return

    def evaluated(model: ModelInfo, name: str) -> float | str | None:
        return (model.evaluation or {}).get(name)

    st.dataframe([{  # the figures first: names are long, and the table scrolls sideways on a narrow screen
        "served": "✓" if m.served else "", "model": m.id, "macro-F1": evaluated(m, "macro_f1"),
        "balanced accuracy": evaluated(m, "balanced_accuracy"), "accuracy": evaluated(m, "accuracy"),
        "AUC": evaluated(m, "auc_ovr"), "ECE": evaluated(m, "ece"), "name": m.name, "arm": evaluated(m, "arm"),
        "arch": m.arch, "image size": m.image_size, "dataset": m.dataset,
        "run": run_of_job.get(m.job_id, f"job {m.job_id}"), "export check max |Δp|": m.check_max_abs_diff,
        "exported (UTC)": m.created_at.strftime("%Y-%m-%d %H:%M"),
    } for m in models], hide_index=True, width="stretch",
        column_config={label: st.column_config.NumberColumn(format="%.3f") for label in
                       ("macro-F1", "balanced accuracy", "accuracy", "AUC", "ECE")})
    served = next((m for m in models if m.served), None)
    st.caption(f"The demo serves **{served.name}** (model {served.id})." if served else
               "No model is served yet: the demo has nothing to load until one is.")
    if api.session().user.role != "admin":
        st.caption("Only an admin can change the served model.")
        return
    others = [m for m in models if not m.served]
    if not others:
        return
    left, right = st.columns([3, 1], vertical_alignment="bottom")
    by_id = {m.id: m for m in others}
    chosen = left.selectbox("Serve instead", list(by_id), key="runs_serve_model",
                            format_func=lambda i: f"model {i} · {by_id[i].name}")
    if right.button("Make it the served model", key="runs_serve", type="primary") \
            and api.call(client.serve_model, chosen) is not None:
        st.rerun()


st.title("Runs & models")
client = api.client()
listed = api.call(client.jobs, limit=JOBS_LISTED)
if listed is None:
    st.stop()
runs: dict[str, list[JobInfo]] = {}  # newest first: jobs come newest first
for listed_job in listed.items:
    runs.setdefault(listed_job.pipeline_id or f"job {listed_job.id}", []).append(listed_job)
run_of_job = {j.id: j.pipeline_id for j in listed.items if j.pipeline_id}
training = [r for r, jobs in runs.items() if is_training_run(jobs)]

scope = st.segmented_control("Show", ["training runs", "all runs and jobs"], default="training runs",
                             required=True, key="runs_scope")
choices = training if scope == "training runs" else list(runs)
if not choices:
    st.info("No training run yet: start one from the Jobs page or with `make train`." if scope == "training runs"
            else "No job has run yet: start one from the Jobs page, or `make demo` for the whole chain.")
else:
    picked = remembered_selectbox("Run", choices, lambda r: run_label(r, runs[r]), "runs_picked_run")
    run_jobs = runs[picked]
    if run_jobs[0].pipeline_id:  # the listing may hold only part of an old run: fetch it whole
        pipeline = api.call(client.pipeline, picked)
        run_jobs = pipeline.jobs if pipeline else sorted(run_jobs, key=lambda j: j.id)
    if is_training_run(run_jobs) or arm_comparison(run_jobs):
        show_comparison(client, run_jobs)
    st.subheader("Jobs of this run" if len(run_jobs) > 1 else "Job")
    by_id = {j.id: j for j in run_jobs}
    job_id = run_jobs[0].id
    if len(run_jobs) > 1:
        job_id = remembered_selectbox(
            "Job", list(by_id), lambda i: f"job {i} · {by_id[i].pipeline_key or by_id[i].kind} ({by_id[i].kind}) · "
                                          f"{by_id[i].state.value}", f"runs_picked_job_{picked}")
    show_job(client, by_id[job_id])

show_models(client, run_of_job)
