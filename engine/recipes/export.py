"""export: a trained student as TorchScript and ONNX, each checked against the PyTorch model on real test images,
then registered as a servable model together with its evaluation (from an upstream evaluate job)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext

KIND = "export"


class Params(BaseModel, extra="forbid"):
    model: str | None = Field(None, description="Classifier folder; default: the upstream job's classifier.")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    check_images: int = Field(64, ge=1, le=2048)
    tolerance: float = Field(1e-3, gt=0, description="Largest allowed |difference| of the probabilities.")


def run(params: Params, ctx: JobContext) -> dict:
    import json

    import numpy as np
    import onnxruntime as ort
    import torch

    from engine.data.tensors import load_array, to_model_input
    from engine.models.classifier import load_classifier
    from engine.recipes.common import artifact_path

    folder = artifact_path(ctx, "classifier", params.model, "distill")
    model, meta = load_classifier(folder)
    size = meta["image_size"]
    items = [i.model_dump() for i in ctx.api.dataset_manifest(meta["dataset"], split="test", source="real")]
    x = to_model_input(load_array(ctx.workspace, items[:params.check_images], size))
    out = ctx.artifact_dir / "export"
    out.mkdir(parents=True, exist_ok=True)

    with torch.no_grad():
        reference = torch.softmax(model(x), 1).numpy()
        scripted = torch.jit.trace(model, torch.zeros(1, 3, size, size))
        scripted.save(str(out / "model.torchscript.pt"))
        script_probs = torch.softmax(torch.jit.load(str(out / "model.torchscript.pt"))(x), 1).numpy()
    torch.onnx.export(model, (torch.zeros(1, 3, size, size),), str(out / "model.onnx"), dynamo=False,
                      input_names=["image"], output_names=["logits"], opset_version=17,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": x.numpy()})[0]
    onnx_probs = np.exp(logits - logits.max(1, keepdims=True))
    onnx_probs /= onnx_probs.sum(1, keepdims=True)
    diffs = {"torchscript": float(np.abs(script_probs - reference).max()),
             "onnx": float(np.abs(onnx_probs - reference).max())}
    ctx.log(f"checked on {len(x)} real test images: max |Δ probability| " +
            ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    if max(diffs.values()) > params.tolerance:
        raise RuntimeError(f"exported models disagree with PyTorch beyond {params.tolerance}: {diffs}")
    (out / "classifier.json").write_text(json.dumps(meta, indent=2))

    evaluation = None
    for job_id in ctx.after:
        for artifact in ctx.api.job_artifacts(job_id):
            if artifact.kind == "evaluation":
                evaluation = json.loads((ctx.workspace / artifact.path).read_text())
    workspace = ctx.workspace.resolve()
    model_info = ctx.api.register_model(
        ctx.job_id, ctx.attempt, name=params.name or f"{meta['arch']}-job{ctx.job_id}", arch=meta["arch"],
        image_size=size, dataset=meta.get("dataset"),
        classifier_path=str(folder.resolve().relative_to(workspace)),
        torchscript_path=str((out / "model.torchscript.pt").resolve().relative_to(workspace)),
        onnx_path=str((out / "model.onnx").resolve().relative_to(workspace)),
        evaluation=evaluation, check_max_abs_diff=max(diffs.values()))
    ctx.save_artifact(out, "exported_model")
    return {"model_id": model_info.id, "max_abs_diff": diffs, "evaluated": evaluation is not None}
