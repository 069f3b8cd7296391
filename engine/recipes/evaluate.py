"""evaluate: a classifier on the REAL test split of its dataset version — never synthetic images, never used to
choose a model. Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1, confusion matrix,
one-vs-rest ROC-AUC, calibration (ECE, reliability diagram); parameters, FLOPs and batch-1 CPU latency. Stored as
metrics, a JSON report, the per-image predictions (for paired comparisons of arms) and an HTML report with plotly
figures."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext
from engine.schemas import IMPORT_BATCH_ID, EvaluationResult

KIND = "evaluate"
PREDICTIONS_FILE = "predictions.json"


class Params(BaseModel, extra="forbid"):
    model: str | None = Field(None, description="Classifier folder; default: the upstream job's classifier.")
    dataset: str | None = Field(None, description="Default: the version the model was trained on.")
    arm: str | None = Field(None, max_length=100, description="A name for comparison tables.")
    latency_runs: int = Field(30, ge=1, le=1000)
    tta: bool = Field(True, description="Average the 8 flips/rotations of each image, as the exported model "
                                        "does; the single-view figures are reported as well.")
    source: str | None = Field(None, pattern=IMPORT_BATCH_ID,
                               description="An import batch (GET /imports): evaluate on the real images it added — "
                                           "another clinic's — instead of the version's test split.")
    source_split: Literal["train", "val", "test"] | None = Field(None, description="With source: only that split "
                                                                                    "of it (default: all of it).")


def report_html(report: dict, title: str) -> str:
    """Confusion matrix, per-class F1 and the reliability diagram as one self-contained HTML page."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    classes = list(report["per_class"])
    fig = make_subplots(rows=1, cols=3, subplot_titles=("Confusion (rows: true)", "Per-class F1", "Reliability"))
    fig.add_trace(go.Heatmap(z=report["confusion"], x=classes, y=classes, colorscale="Blues", showscale=False,
                             text=report["confusion"], texttemplate="%{text}"), row=1, col=1)
    fig.add_trace(go.Bar(x=classes, y=[report["per_class"][c]["f1"] for c in classes]), row=1, col=2)
    bins = report["reliability"]
    fig.add_trace(go.Scatter(x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins],
                             mode="lines+markers", name="model"), row=1, col=3)
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="perfect"), row=1, col=3)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_layout(title=f"{title} — macro-F1 {report['macro_f1']:.3f}, balanced acc "
                            f"{report['balanced_accuracy']:.3f}, acc {report['accuracy']:.3f}, ECE {report['ece']:.3f}",
                      showlegend=False, height=450, width=1350)
    return fig.to_html(include_plotlyjs=True, full_html=True)


def external_items(params: Params, ctx: JobContext, trained_on: str) -> tuple[list[dict], list[dict], str]:
    """(manifest items, real-data lineage, a description) of the import batch `params.source` names. Refuses a
    batch whose images the model trained or was selected on: that would be no outside test."""
    batch = next((b for b in ctx.api.imports() if b.id == params.source), None)
    if batch is None:
        raise ValueError(f"unknown import batch {params.source!r}: `dermae imports` (GET /imports) lists them")
    items = [i.model_dump() for i in ctx.api.manifest(source="real", batch=batch.id, split=params.source_split)]
    if not items:
        raise ValueError(f"import batch {batch.id} added no real images" + (
            f" to its {params.source_split} split" if params.source_split else ""))
    seen = {i.id for i in ctx.api.dataset_manifest(trained_on, source="real") if i.split in ("train", "val")}
    leaked = sum(i["id"] in seen for i in items)
    if leaked:
        raise ValueError(f"{leaked} of the {len(items)} images of {batch.id} are in the train or val split of "
                         f"{trained_on}, which the model was trained and selected on: evaluate on "
                         "source_split=test, or import the outside images into a workspace of their own")
    where = f", {params.source_split} split" if params.source_split else ""
    lineage = [{"format": batch.format, "source": batch.source, "split_kind": batch.split_kind, "images": len(items)}]
    return items, lineage, f"{batch.format} {batch.source} ({batch.id}{where}, {len(items)} images)"


def run(params: Params, ctx: JobContext) -> dict:
    import json

    import numpy as np

    from engine.data.splits import lesion_of, split_summary
    from engine.data.tensors import labels_of, load_array, to_model_input
    from engine.labels import CLASSES
    from engine.metrics import classification_report
    from engine.models.classifier import DihedralTTA, load_classifier, probabilities
    from engine.models.profiling import count_flops, count_parameters, latency_ms
    from engine.recipes.common import artifact_path

    folder = artifact_path(ctx, "classifier", params.model, "distill")
    model, meta = load_classifier(folder)
    version = params.dataset or meta["dataset"]
    if params.source:
        items, real_data, described = external_items(params, ctx, meta["dataset"])
        split = split_summary(real_data)
        split_text = f"external: {described}"
    else:
        real_data = ctx.api.dataset(version).lineage.get("real_data", [])
        split = split_summary(real_data)
        items = [i.model_dump() for i in ctx.api.dataset_manifest(version, split="test", source="real")]
        split_text = f"test (real, {split} split)"
    # framed as the model's training images were (centre square, or whole frame for a DermaMNIST model)
    x = to_model_input(load_array(ctx.workspace, items, meta["image_size"], meta.get("framing")))
    y = labels_of(items)
    ctx.progress(0, 2, f"predicting {len(y)} real images ({split_text})" + (" (8 views each)" if params.tta else ""))
    single_probs = probabilities(model, x)
    single = classification_report(single_probs, np.asarray(y), CLASSES)
    if params.tta:
        model = DihedralTTA(model)
        probs = probabilities(model, x, batch=64)
        report = classification_report(probs, np.asarray(y), CLASSES)
    else:
        probs, report = single_probs, single
    report["tta"] = "mean over the 8 flips/rotations" if params.tta else None
    report["single_view"] = {k: single[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "ece")}
    ctx.progress(1, 2, "measuring cost")
    report["cost"] = {"params": count_parameters(model), "flops": count_flops(model, meta["image_size"]),
                      "latency_ms": latency_ms(model, meta["image_size"], params.latency_runs),
                      "latency_ms_fast": latency_ms(model, meta["image_size"], params.latency_runs, fast=True)}
    report |= {"model": str(folder), "arch": meta["arch"], "image_size": meta["image_size"], "dataset": version,
               "arm": params.arm, "split": split_text, "split_kind": split, "external": params.source,
               "real_data": real_data, "framing": meta.get("framing"), "trained": {k: meta.get(k) for k in
                                                                    ("use_synthetic", "distilled", "role")}}
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "ece"):
        ctx.log_metric(f"test/{name}", report[name], 0)
    for cls, row in report["per_class"].items():
        ctx.log_metric(f"test/f1/{cls}", row["f1"], 0)
    if params.tta:
        ctx.log(f"single view: test macro-F1 {single['macro_f1']:.3f}, balanced acc "
                f"{single['balanced_accuracy']:.3f}, acc {single['accuracy']:.3f}")
    ctx.log(f"{params.arm or meta['arch']}{' (8-view TTA)' if params.tta else ''}: test macro-F1 "
            f"{report['macro_f1']:.3f}, balanced acc "
            f"{report['balanced_accuracy']:.3f}, acc {report['accuracy']:.3f}, AUC {report['auc_ovr']:.3f}, "
            f"{report['cost']['params'] / 1e6:.2f}M params, {report['cost']['flops'] / 1e9:.3f} GFLOPs, "
            f"{report['cost']['latency_ms']:.1f} ms")
    path = ctx.artifact_dir / "evaluation.json"
    path.write_text(json.dumps(report, indent=2))
    ctx.save_artifact(path, "evaluation")
    predictions = ctx.artifact_dir / PREDICTIONS_FILE  # per image, for paired comparisons of arms over lesions
    predictions.write_text(json.dumps({
        "ids": [i["id"] for i in items], "lesion_ids": [lesion_of(i) for i in items],
        "labels": [int(v) for v in y], "predicted": [int(v) for v in np.asarray(probs).argmax(1)],
        "probs": np.round(np.asarray(probs, dtype=np.float64), 5).tolist()}))
    ctx.save_artifact(predictions, "predictions")
    html = ctx.artifact_dir / "evaluation.html"
    html.write_text(report_html(report, params.arm or meta["arch"]))
    ctx.save_artifact(html, "evaluation_report")
    ctx.progress(2, 2, "done")
    return EvaluationResult(
        **{k: report[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "ece")},
        single_view=report["single_view"], tta=params.tta, macro_f1_1view=single["macro_f1"], arm=params.arm,
        arch=meta["arch"], split_kind=split, external=params.source, n=report["n"],
        params=report["cost"]["params"], gflops=report["cost"]["flops"] / 1e9,
        latency_ms=report["cost"]["latency_ms"]).model_dump()
