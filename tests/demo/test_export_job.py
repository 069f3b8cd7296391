"""The export job's run() around export_for_serving: the threshold is calibrated on the REAL VAL split of the
model's dataset version (never test), the export folder is self-contained, and what it registers points into the
workspace. A stand-in for the API (the recipe reads data and registers only through ctx.api)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.data.images import encode_png
from engine.data.phantom import render_lesion
from engine.labels import CLASSES
from engine.models.classifier import build_classifier, load_classifier, save_classifier
from engine.recipes import export
from engine.schemas import DatasetItem


class FakeApi:
    def __init__(self, items: list[DatasetItem]):
        self.items, self.asked, self.registered = items, [], None

    def dataset_manifest(self, version: str, *, split: str | None = None, source: str | None = None):
        self.asked.append((version, split, source))
        return [i for i in self.items if i.split == split and i.source == source]

    def job_artifacts(self, job_id: int) -> list:
        return []

    def register_model(self, job_id: int, attempt: int, **entry):
        self.registered = entry
        return SimpleNamespace(id=7)


@pytest.mark.slow  # exports EfficientNet-B0 to TorchScript and ONNX: ~10-20 s on 2 cores
def test_the_export_job_calibrates_on_real_val_and_registers_a_self_contained_folder(tmp_path):
    workspace = tmp_path / "ws"
    (workspace / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    items = []
    for split, per_class in (("val", 3), ("test", 1)):
        for cls in CLASSES:
            for k in range(per_class):
                name = f"{split}-{cls}-{k}.png"
                (workspace / "images" / name).write_bytes(encode_png(render_lesion(cls, rng)))
                items.append(DatasetItem(id=name, label=cls, split=split, source="real", path=name, lesion_id=None,
                                         generation_job=None, checkpoint=None))
    folder = save_classifier(build_classifier("efficientnet_b0", len(CLASSES), 32).eval(),
                             workspace / "jobs" / "1" / "artifacts" / "classifier",
                             {"arch": "efficientnet_b0", "image_size": 32, "kwargs": {}, "classes": list(CLASSES),
                              "dataset": "v1"})
    api, logs = FakeApi(items), []
    ctx = SimpleNamespace(api=api, workspace=workspace, artifact_dir=workspace / "jobs" / "2" / "artifacts",
                          after=[], job_id=2, attempt=1, log=logs.append, save_artifact=lambda path, kind: None)

    result = export.run(export.Params(model=str(folder), check_images=4), ctx)

    assert ("v1", "val", "real") in api.asked and result["model_id"] == 7
    out = ctx.artifact_dir / "export"
    serving = json.loads((out / "serving.json").read_text())
    assert serving == result["serving"] and serving["n_val"] == 3 * len(CLASSES)  # every val image, no test one
    assert serving["split"] == "val (real)" and serving["target_accuracy"] == 0.9
    for name in ("model.onnx", "model.torchscript.pt", "model.safetensors", "classifier.json"):
        assert (out / name).exists(), name
    assert api.registered["onnx_path"] == "jobs/2/artifacts/export/model.onnx"
    assert api.registered["classifier_path"] == "jobs/1/artifacts/classifier"
    assert any("max |Δ probability|" in line for line in logs)

    # By default the exported graph answers with the mean over each image's 8 flips/rotations; the saved
    # classifier (for the demo's heatmaps) stays the plain one.
    assert json.loads((out / "classifier.json").read_text())["tta"] is True
    classifier, _ = load_classifier(out)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
        expected = torch.stack([classifier(v).softmax(1) for v in turns + [t.flip(-1) for t in turns]]).mean(0)
    logits = ort.InferenceSession(str(out / "model.onnx")).run(None, {"image": x.numpy()})[0]
    assert np.abs(torch.from_numpy(logits).softmax(1).numpy() - expected.numpy()).max() < 1e-4


def test_the_export_job_refuses_to_serve_otherwise_than_it_was_evaluated(tmp_path):
    workspace = tmp_path / "ws"
    folder = save_classifier(build_classifier("small_cnn", len(CLASSES), 16, width=8).eval(),
                             workspace / "jobs" / "1" / "artifacts" / "classifier",
                             {"arch": "small_cnn", "image_size": 16, "kwargs": {"width": 8},
                              "classes": list(CLASSES), "dataset": "v1"})
    (workspace / "jobs" / "1" / "artifacts" / "evaluation.json").write_text(json.dumps({"tta": None}))
    api = FakeApi([])
    api.job_artifacts = lambda job_id: [SimpleNamespace(kind="evaluation", path="jobs/1/artifacts/evaluation.json")]
    ctx = SimpleNamespace(api=api, workspace=workspace, artifact_dir=workspace / "jobs" / "2" / "artifacts",
                          after=[1], job_id=2, attempt=1, log=lambda line: None, save_artifact=lambda path, kind: None)
    with pytest.raises(ValueError, match="measured with tta=False but export asks for tta=True"):
        export.run(export.Params(model=str(folder)), ctx)
    assert not (ctx.artifact_dir / "export").exists()
