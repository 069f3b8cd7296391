"""The served student: where its files are (the engine's served model, or an export folder), the runtime that
answers (ONNX Runtime or TorchScript), the PyTorch classifier behind the heatmaps, and its model card."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from engine.data.images import Framing, frame_for_model
from engine.data.tensors import to_model_input
from engine.labels import CLASS_NAMES
from studio.demo.explain import Explainer, explainer_for

# Chosen by bench/serve_latency.py (ratios against eager fp32 in one run; see the README): ONNX Runtime was
# 2.6x (224 px) and 5x (64 px) faster than eager fp32 at batch 1 on one thread, TorchScript 1.2x / 1.7x.
Runtime = Literal["onnx", "torchscript"]
DEFAULT_RUNTIME: Runtime = "onnx"

# Written by engine/recipes/export.py (the demo must not import the recipes: it is a front end).
SERVING_FILE = "serving.json"
EVALUATION_FILE = "evaluation.json"


class ModelNotFound(RuntimeError):
    """No model to serve; the message says how to get one."""


@dataclass(frozen=True)
class ModelFiles:
    name: str
    export_dir: Path  # model.onnx, model.torchscript.pt, serving.json …
    classifier_dir: Path  # model.safetensors + classifier.json: the PyTorch classifier for heatmaps
    evaluation: dict | None
    dataset: str | None


def files_in_folder(folder: Path) -> ModelFiles:
    """An export folder as engine/recipes/export.py writes it (self-contained)."""
    folder = folder.expanduser().resolve()
    missing = [f for f in ("model.onnx", "model.torchscript.pt", "classifier.json") if not (folder / f).exists()]
    if missing:
        raise ModelNotFound(f"{folder} lacks {', '.join(missing)}: pass the export folder of an export job "
                            "(workspace/jobs/<id>/artifacts/export)")
    meta = json.loads((folder / "classifier.json").read_text())
    evaluation = _read_json(folder / EVALUATION_FILE)
    return ModelFiles(f"{meta['arch']} ({folder.name})", folder, folder, evaluation, meta.get("dataset"))


def files_of_served_model(workspace: Path) -> ModelFiles:
    """The model the studio marked as served, through the engine API; its files are paths inside `workspace`."""
    from engine.client import ApiError, Client, ServerNotFound
    from engine.settings import Settings

    try:
        with Client.from_settings(Settings.from_env(workspace)) as client:
            info = client.served_model()
    except ServerNotFound as e:
        raise ModelNotFound(f"{e}; or serve an export folder without the engine: --model PATH") from None
    except ApiError as e:
        raise ModelNotFound(f"the engine has no model to serve ({e.detail}); or pass --model PATH") from None
    root = workspace.resolve()

    def inside(relative: str) -> Path:
        path = (root / relative).resolve()
        if not path.is_relative_to(root) or not path.exists():
            raise ModelNotFound(f"the served model's file {relative} is not in the workspace {root}: is "
                                "DERMAE_WORKSPACE the engine's workspace?")
        return path

    export_dir = inside(info.onnx_path).parent
    inside(info.torchscript_path)
    return ModelFiles(info.name, export_dir, inside(info.classifier_path), info.evaluation, info.dataset)


@dataclass(frozen=True)
class Prediction:
    probabilities: dict[str, float]  # class code -> probability, highest first
    latency_ms: float  # the runtime's forward pass alone (batch 1)


class ServedModel:
    """Loads once at start; `predict` and `explain` are called by one request at a time (the queue's concurrency
    limit is 1), so the runtime session and the PyTorch model are not shared between threads at once."""

    def __init__(self, files: ModelFiles, runtime: Runtime = DEFAULT_RUNTIME, threads: int = 1):
        from engine.models.classifier import load_classifier

        self.files = files
        self.runtime = runtime
        self.meta = json.loads((files.export_dir / "classifier.json").read_text())
        self.classes: list[str] = list(self.meta["classes"])
        self.image_size: int = int(self.meta["image_size"])
        self.serving = _read_json(files.export_dir / SERVING_FILE)
        torch.set_num_threads(threads)
        if runtime == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(files.export_dir / "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
            self._forward = lambda x: session.run(None, {"image": x})[0]
        elif runtime == "torchscript":
            scripted = torch.jit.load(str(files.export_dir / "model.torchscript.pt"), map_location="cpu").eval()

            def forward(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return scripted(torch.from_numpy(x)).numpy()

            self._forward = forward
        else:
            raise ValueError(f"unknown runtime {runtime!r}; use onnx or torchscript")
        self.classifier, self.explainer, self.explain_method = None, None, None
        if (files.classifier_dir / "model.safetensors").exists():
            self.classifier, _ = load_classifier(files.classifier_dir)
            found = explainer_for(self.classifier)
            if found:
                self.explain_method, self.explainer = found
        # Warm-up: the first call of each pays for allocations and kernel choice, not the first user.
        blank = np.zeros((self.image_size, self.image_size, 3), np.uint8)
        self.predict(blank)
        self.explain(blank, self.classes[0])

    def model_view(self, image: Image.Image) -> np.ndarray:
        """uint8 (S, S, 3): the picture as the model saw its training images (its recorded framing: the centre
        square, or for a DermaMNIST model the whole frame squashed as MedMNIST did), resized as in training."""
        return np.asarray(frame_for_model(image, self.image_size, self.meta.get("framing")))

    def predict(self, view: np.ndarray) -> Prediction:
        x = to_model_input(view[None]).numpy()
        start = time.perf_counter()
        logits = self._forward(x)[0].astype(np.float64)
        latency = (time.perf_counter() - start) * 1000
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        ranked = sorted(zip(self.classes, probs.tolist(), strict=True), key=lambda kv: -kv[1])
        return Prediction(dict(ranked), latency)

    def explain(self, view: np.ndarray, target: str) -> np.ndarray | None:
        """The heatmap of class `target` on the model view, (h, w) in [0, 1]; None without an explainer."""
        if self.explainer is None:
            return None
        explain: Explainer = self.explainer
        return explain(to_model_input(view[None]), self.classes.index(target))

    @property
    def threshold(self) -> float | None:
        return self.serving.get("threshold") if self.serving else None

    def is_uncertain(self, top_probability: float) -> bool:
        """Uncertain when under the calibrated threshold; always when calibration found none that works.
        Without serving.json the answer is shown with a "not calibrated" note instead (see the page)."""
        if self.serving is None:
            return False
        return self.threshold is None or top_probability < self.threshold

    def model_card(self) -> str:
        """Markdown: what the model is, what it was trained on, how it did on real test data."""
        meta, evaluation = self.meta, self.files.evaluation
        lines = [f"### Model card: {self.files.name}",
                 f"- **Architecture**: {meta['arch']} at {self.image_size}×{self.image_size} px, served through "
                 f"{'ONNX Runtime' if self.runtime == 'onnx' else 'TorchScript'}",
                 f"- **Trained on** dataset version `{self.files.dataset or meta.get('dataset') or 'unknown'}`"
                 + (f" ({'real + curated synthetic' if meta.get('use_synthetic') else 'real only'}"
                    f"{', distilled from a teacher' if meta.get('distilled') else ''})"
                    if 'use_synthetic' in meta else ""),
                 f"- **Framing**: {framing_text(meta.get('framing'), self.image_size)}; uploads are framed the same "
                 "way before the model sees them"]
        if self.serving is None:
            lines.append("- **Uncertainty threshold**: not calibrated (no serving.json in the export): answers "
                         "are shown without an uncertainty cut-off")
        elif self.threshold is None:
            lines.append(f"- **Uncertainty threshold**: no confidence level reached "
                         f"{self.serving['target_accuracy']:.0%} accuracy on {self.serving['n_val']} real "
                         "validation images, so every answer is shown as uncertain")
        else:
            lines.append(f"- **Uncertainty threshold**: {self.threshold:.1%} top probability, calibrated on "
                         f"{self.serving['n_val']} real validation images: {self.serving['coverage']:.0%} of them "
                         f"are answered, and {self.serving['accuracy_above']:.0%} of those answers are right "
                         f"(target {self.serving['target_accuracy']:.0%})")
        if not evaluation:
            lines.append("- **Evaluation**: none recorded for this model")
            return "\n".join(lines)
        cost = evaluation.get("cost", {})
        lines += [
            f"- **Evaluation** on {evaluation.get('n', '?')} images, {evaluation.get('split', 'test')}: "
            f"macro-F1 **{evaluation['macro_f1']:.3f}**, balanced accuracy **{evaluation['balanced_accuracy']:.3f}**, "
            f"accuracy **{evaluation['accuracy']:.3f}**",
            *external_lines(evaluation),
            f"- **Cost**: {cost.get('params', 0) / 1e6:.2f} M parameters, {cost.get('flops', 0) / 1e9:.3f} GFLOPs, "
            f"{cost.get('latency_ms', float('nan')):.1f} ms batch-1 eager latency when evaluated",
            "",
            "| class | precision | recall | F1 | support |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for code, row in evaluation.get("per_class", {}).items():
            lines.append(f"| {CLASS_NAMES.get(code, code)} ({code}) | {row['precision']:.3f} | {row['recall']:.3f} "
                         f"| {row['f1']:.3f} | {row['support']} |")
        return "\n".join(lines)


def external_lines(evaluation: dict) -> list[str]:
    """The card's line for an evaluation on outside images (`dermae train --external`), with the drop from the
    in-distribution figure; none when the model was not evaluated on any."""
    outside = evaluation.get("external_evaluation")
    if not outside or outside.get("macro_f1") is None:
        return []
    drop = evaluation["macro_f1"] - outside["macro_f1"]
    return [f"- **External evaluation** on {outside.get('n', '?')} images, {outside.get('split', 'outside images')}: "
            f"macro-F1 **{outside['macro_f1']:.3f}** ({'a drop' if drop >= 0 else 'a gain'} of {abs(drop):.3f} "
            f"from the test split), balanced accuracy **{outside['balanced_accuracy']:.3f}**, "
            f"accuracy **{outside['accuracy']:.3f}**"]


def framing_text(framing: dict | None, size: int) -> str:
    """How a model's training images were made, in words."""
    if framing and framing.get("crop") == Framing.whole_frame:
        through = f" through {framing['via']}×{framing['via']} px" if framing.get("via") else ""
        return f"the whole frame squashed to a square{through} (as MedMNIST made DermaMNIST), then {size} px"
    return f"the centre square of each frame, resized to {size} px"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
