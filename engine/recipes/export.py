"""export: a trained student as TorchScript and ONNX, each checked against the PyTorch model on real test images,
with the confidence threshold under which the demo answers "uncertain" calibrated on REAL VALIDATION images (never
the test split), then registered as a servable model together with its evaluation (from an upstream evaluate job).

The export folder is self-contained, so that `python -m studio.demo --model FOLDER` serves it without the engine:

    model.onnx, model.torchscript.pt   the servable model (input "image": (N, 3, S, S) in [-1, 1]; output "logits";
                                       by default the mean over each image's 8 flips/rotations, as evaluated)
    model.safetensors, classifier.json the PyTorch classifier (`load_classifier`): the demo's heatmaps need gradients
                                       and attention weights, which the exported graphs do not expose
    serving.json                       the uncertainty threshold (`calibrate_threshold`) and how it was found
    evaluation.json                    the evaluation on real test data, when an evaluate job ran upstream

`export_for_serving` writes all of it; the job and the tests both call it, so there is one way to export.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext

if TYPE_CHECKING:  # imported where used: listing job kinds must not pay for torch
    import numpy as np
    import torch

KIND = "export"
SERVING_FILE = "serving.json"
EVALUATION_FILE = "evaluation.json"

CALIBRATION_RULE = (
    "the lowest threshold t such that, of the real validation images whose top probability is at least t, at least "
    "target_accuracy are predicted right; answers under t are shown as uncertain")


class Params(BaseModel, extra="forbid"):
    model: str | None = Field(None, description="Classifier folder; default: the upstream job's classifier.")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    check_images: int = Field(64, ge=1, le=2048)
    tolerance: float = Field(1e-3, gt=0, description="Largest allowed |difference| of the probabilities.")
    target_accuracy: float = Field(0.9, gt=0, le=1, description="Accuracy the demo's confident answers must reach "
                                                                "on real validation images (sets its threshold).")
    tta: bool = Field(True, description="Export the mean over the 8 flips/rotations of each image (as evaluate "
                                        "measures it by default): 8x the compute per answer.")


def onnx_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": images})[0]
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def served_model(model: torch.nn.Module, tta: bool) -> torch.nn.Module:
    """What the exported graphs compute: the classifier, or its 8-view test-time augmentation."""
    from engine.models.classifier import DihedralTTA

    return DihedralTTA(model).eval() if tta else model


def export_model(model: torch.nn.Module, meta: dict, out: Path, check_images: torch.Tensor,
                 tolerance: float = 1e-3, tta: bool = False) -> dict[str, float]:
    """Write the classifier (weights + classifier.json), TorchScript and ONNX into `out`; return the largest
    |difference| of each exported model's probabilities from PyTorch's on `check_images`. Raises when one exceeds
    `tolerance`: a served model must answer as the evaluated one did. With `tta`, the exported graphs answer with
    the mean over the 8 flips/rotations (`DihedralTTA`); the saved classifier stays the plain one."""
    import numpy as np
    import torch

    from engine.models.classifier import probabilities, save_classifier

    size = meta["image_size"]
    save_classifier(model, out, meta | {"tta": tta})
    model = served_model(model, tta)
    reference = probabilities(model, check_images)
    with torch.no_grad():
        scripted = torch.jit.trace(model, torch.zeros(1, 3, size, size))
        scripted.save(str(out / "model.torchscript.pt"))
        script_probs = probabilities(torch.jit.load(str(out / "model.torchscript.pt")), check_images)
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(out / "model.onnx"), dynamo=False,
                      input_names=["image"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    onnx_probs = onnx_probabilities(out / "model.onnx", check_images.numpy())
    diffs = {"torchscript": float(np.abs(script_probs - reference).max()),
             "onnx": float(np.abs(onnx_probs - reference).max())}
    if max(diffs.values()) > tolerance:
        raise RuntimeError(f"exported models disagree with PyTorch beyond {tolerance}: {diffs}")
    return diffs


def calibrate_threshold(probs: np.ndarray, labels: np.ndarray, target_accuracy: float = 0.9) -> dict:
    """The demo's "uncertain" threshold from validation predictions (see CALIBRATION_RULE): the lowest top
    probability t at which the predictions with top probability >= t are right at least `target_accuracy` of
    the time. Lowest, so the demo answers as often as the target allows. When no t reaches the target, the
    threshold is None and every answer is uncertain. Also returns the coverage (share of validation images
    answered) and the accuracy of those answers."""
    import numpy as np

    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if len(labels) == 0:
        raise ValueError("no validation predictions to calibrate on")
    top = probs.max(1)
    order = np.argsort(-top, kind="stable")
    right = (probs.argmax(1) == labels)[order].astype(np.float64)
    accuracy_above = np.cumsum(right) / np.arange(1, len(right) + 1)  # accuracy of the k most confident
    # A threshold equal to top[order][k] admits every prediction tied with it: evaluate at the last of each tie.
    sorted_top = top[order]
    last_of_tie = np.r_[sorted_top[1:] != sorted_top[:-1], True]
    meets = np.flatnonzero(last_of_tie & (accuracy_above >= target_accuracy))
    base = {"rule": CALIBRATION_RULE, "target_accuracy": target_accuracy, "n_val": len(labels)}
    if len(meets) == 0:
        return base | {"threshold": None, "coverage": 0.0, "accuracy_above": None, "n_above": 0}
    k = int(meets[-1])  # the largest set, i.e. the lowest threshold
    return base | {"threshold": float(sorted_top[k]), "coverage": (k + 1) / len(labels),
                   "accuracy_above": float(accuracy_above[k]), "n_above": k + 1}


def export_for_serving(model: torch.nn.Module, meta: dict, out: Path, check_images: torch.Tensor,
                       val_images: torch.Tensor | None, val_labels: np.ndarray | None, *, tolerance: float = 1e-3,
                       target_accuracy: float = 0.9, evaluation: dict | None = None, tta: bool = False) -> dict:
    """Everything the demo serves, into `out` (see the module docstring). Without validation images there is no
    serving.json and the demo says the model is not calibrated. Returns {"max_abs_diff", "serving"}."""
    from engine.models.classifier import probabilities

    out.mkdir(parents=True, exist_ok=True)
    diffs = export_model(model, meta, out, check_images, tolerance, tta)
    serving = None
    if val_images is not None and len(val_images):
        val_probs = probabilities(served_model(model, tta), val_images)
        serving = calibrate_threshold(val_probs, val_labels, target_accuracy) | {
            "split": "val (real)", "dataset": meta.get("dataset")}
        (out / SERVING_FILE).write_text(json.dumps(serving, indent=2))
    if evaluation is not None:
        (out / EVALUATION_FILE).write_text(json.dumps(evaluation, indent=2))
    return {"max_abs_diff": diffs, "serving": serving}


EXTERNAL_FIGURES = ("n", "split", "macro_f1", "balanced_accuracy", "accuracy", "external")


def upstream_evaluation(ctx: JobContext) -> dict | None:
    """The evaluation the served model carries: the upstream evaluate job's on the version's test split, with an
    upstream evaluation on an external import batch (`dermae train --external`) under "external_evaluation", so
    the model card shows the drop. None when no evaluate job ran upstream."""
    found = [json.loads((ctx.workspace / artifact.path).read_text())
             for job_id in ctx.after for artifact in ctx.api.job_artifacts(job_id) if artifact.kind == "evaluation"]
    inside = [e for e in found if not e.get("external")]
    outside = [e for e in found if e.get("external")]
    if not inside:
        return None
    evaluation = inside[-1]
    if outside:
        evaluation["external_evaluation"] = {k: outside[-1].get(k) for k in EXTERNAL_FIGURES}
    return evaluation


def run(params: Params, ctx: JobContext) -> dict:
    from engine.data.tensors import labels_of, load_array, to_model_input
    from engine.models.classifier import load_classifier
    from engine.recipes.common import artifact_path

    folder = artifact_path(ctx, "classifier", params.model, "distill")
    model, meta = load_classifier(folder)
    size = meta["image_size"]
    test = [i.model_dump() for i in ctx.api.dataset_manifest(meta["dataset"], split="test", source="real")]
    check = to_model_input(load_array(ctx.workspace, test[:params.check_images], size))
    val = [i.model_dump() for i in ctx.api.dataset_manifest(meta["dataset"], split="val", source="real")]
    val_x = to_model_input(load_array(ctx.workspace, val, size)) if val else None
    if not val:
        ctx.log("no real validation images in this dataset version: the demo will say the model is not calibrated")

    evaluation = upstream_evaluation(ctx)
    if evaluation is not None and bool(evaluation.get("tta")) != params.tta:
        raise ValueError(f"the upstream evaluation was measured with tta={bool(evaluation.get('tta'))} but export "
                         f"asks for tta={params.tta}: set them alike, so the served model answers as evaluated")
    out = ctx.artifact_dir / "export"
    exported = export_for_serving(model, meta, out, check, val_x, labels_of(val) if val else None,
                                  tolerance=params.tolerance, target_accuracy=params.target_accuracy,
                                  evaluation=evaluation, tta=params.tta)
    diffs, serving = exported["max_abs_diff"], exported["serving"]
    ctx.log(f"checked on {len(check)} real test images: max |Δ probability| " +
            ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if serving and serving["threshold"] is not None:
        ctx.log(f"uncertainty threshold {serving['threshold']:.3f} on {serving['n_val']} real val images: "
                f"{serving['coverage']:.0%} answered, {serving['accuracy_above']:.0%} of those right")
    elif serving:
        ctx.log(f"no threshold reaches {params.target_accuracy:.0%} accuracy on real val: every answer is uncertain")

    workspace = ctx.workspace.resolve()
    model_info = ctx.api.register_model(
        ctx.job_id, ctx.attempt, name=params.name or f"{meta['arch']}-job{ctx.job_id}", arch=meta["arch"],
        image_size=size, dataset=meta.get("dataset"),
        classifier_path=str(folder.resolve().relative_to(workspace)),
        torchscript_path=str((out / "model.torchscript.pt").resolve().relative_to(workspace)),
        onnx_path=str((out / "model.onnx").resolve().relative_to(workspace)),
        evaluation=evaluation, check_max_abs_diff=max(diffs.values()))
    ctx.save_artifact(out, "exported_model")
    return {"model_id": model_info.id, "max_abs_diff": diffs, "evaluated": evaluation is not None,
            "serving": serving}
