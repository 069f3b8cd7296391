"""The export job's run() around export_for_serving: the threshold is calibrated on the REAL VAL split of the
model's dataset version (never test), the export folder is self-contained, and what it registers points into the
workspace. A stand-in for the API (the recipe reads data and registers only through ctx.api)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from engine.data.images import encode_png
from engine.data.labels import CLASSES
from engine.data.phantom import render_lesion
from engine.models.classifier import build_classifier, save_classifier
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
