"""The Gradio page: upload an image or pick an example; see the picture as the model sees it, the top classes,
where the model looked, how long it took, and the model card — or "uncertain" under the calibrated threshold.

Everything a request touches is re-encoded pixels: uploads are read once, then deleted; nothing of the original
file is served back. A problem with a file is a message on the page (a warning and the status text), never a
stack trace."""

from __future__ import annotations

import functools
import logging
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr  # import after GRADIO_TEMP_DIR is set (studio/demo/__main__.py does): Gradio reads it then
import numpy as np

from engine.data.images import ImageProblem
from engine.labels import CLASS_NAMES
from engine.settings import MAX_IMAGE_BYTES
from studio.demo.examples import Example
from studio.demo.explain import overlay
from studio.demo.inputs import PreparedImage, read_upload
from studio.demo.model import ServedModel

RESEARCH_NOTE = (
    "**Research tool, not a diagnostic device.** This demo shows what a small model distilled in a research "
    "project answers on a dermoscopic image. It has not been validated clinically, it can be confidently wrong, "
    "and it must not be used to decide anything about anyone's health: see a dermatologist about a skin lesion.")
TOP_K = 3
DISPLAY_SIDE = 256  # the model's input (32-224 px) is enlarged by a whole factor to at least this, nearest-neighbour

log = logging.getLogger("studio.demo")


def enlarge(view: np.ndarray) -> np.ndarray:
    """Nearest-neighbour enlargement by a whole factor, so each model pixel stays one visible square."""
    factor = max(1, math.ceil(DISPLAY_SIDE / view.shape[0]))
    return np.repeat(np.repeat(view, factor, axis=0), factor, axis=1)


def forget_upload(path: Path, upload_dir: Path) -> None:
    """Delete an upload once read (and its per-upload folder), but only inside Gradio's upload folder."""
    path, upload_dir = path.resolve(), upload_dir.resolve()
    if not path.is_relative_to(upload_dir):
        return
    path.unlink(missing_ok=True)
    if path.parent != upload_dir and not any(path.parent.iterdir()):
        path.parent.rmdir()


class Demo:
    """The page's handlers, separate from the layout so that each is a plain function of its inputs."""

    def __init__(self, model: ServedModel, examples: dict[str, Example], upload_dir: Path, threads: int):
        self.model, self.examples, self.upload_dir, self.threads = model, examples, upload_dir, threads

    def classify_upload(self, path: str | None) -> tuple:
        """Outputs: (the upload box, cleared), then `outputs`'s five."""
        if not path:
            return (None, *self._nothing("Upload an image, or pick an example."))
        try:
            prepared = read_upload(Path(path))
        except ImageProblem as e:
            return (None, *self._problem(str(e)))
        finally:
            forget_upload(Path(path), self.upload_dir)
        return (None, *self._answer(prepared))

    def classify_example(self, name: str | None) -> tuple:
        example = self.examples.get(name or "")
        if example is None:
            return self._problem(f"unknown example {name!r}; pick one of: {', '.join(self.examples)}")
        truth = f"Example: {example.caption}; its diagnosis: {CLASS_NAMES[example.label]} ({example.label})."
        return self._answer(read_upload(example.path), truth)

    def _answer(self, prepared: PreparedImage, truth: str | None = None) -> tuple:
        model = self.model
        view = model.model_view(prepared.image)
        prediction = model.predict(view)
        top, top_p = next(iter(prediction.probabilities.items()))
        start = time.perf_counter()
        heat = model.explain(view, top)
        heat_ms = (time.perf_counter() - start) * 1000
        shown = enlarge(view)
        heatmap = overlay(shown, heat) if heat is not None else None
        probabilities = {f"{CLASS_NAMES.get(c, c)} ({c})": p for c, p in prediction.probabilities.items()}
        lines = [self._verdict(top, top_p)]
        lines += [f"- {note}" for note in prepared.notes]
        if truth:
            lines.append(f"\n_{truth}_")
        runtime = "ONNX Runtime" if model.runtime == "onnx" else "TorchScript"
        latency = (f"**Inference latency: {prediction.latency_ms:.1f} ms** ({runtime}, batch 1, {self.threads} "
                   f"thread{'s' if self.threads > 1 else ''})")
        if heat is not None:
            latency += (f" · heatmap ({model.explain_method} on the PyTorch model, {heat.shape[0]}×{heat.shape[1]} "
                        f"map, for {CLASS_NAMES.get(top, top)}): {heat_ms:.0f} ms")
        else:
            latency += " · no heatmap: this export has no PyTorch weights, or no explainer for its architecture"
        return "\n".join(lines), probabilities, shown, heatmap, latency

    def _verdict(self, top: str, top_p: float) -> str:
        model, name = self.model, f"{CLASS_NAMES.get(top, top)} ({top})"
        if model.serving is None:
            return (f"**Most likely: {name}**, {top_p:.0%}.\n\n_Not calibrated: this export has no serving.json, "
                    "so there is no threshold under which the demo says it is uncertain. Read the probabilities "
                    "with extra care._")
        target = model.serving["target_accuracy"]
        if model.threshold is None:
            return (f"**Uncertain.** On validation data this model never reached {target:.0%} accuracy at any "
                    f"confidence, so no answer is given. (Its top class: {name}, {top_p:.0%}.)")
        if model.is_uncertain(top_p):
            return (f"**Uncertain.** The top probability ({name}, {top_p:.0%}) is under the threshold "
                    f"{model.threshold:.0%} calibrated on validation data, at and above which answers were right "
                    f"at least {target:.0%} of the time. The probabilities are shown for information only.")
        return (f"**Most likely: {name}**, {top_p:.0%} (at or above the calibrated threshold "
                f"{model.threshold:.0%}: on validation data, answers this confident were right "
                f"{model.serving['accuracy_above']:.0%} of the time).")

    def _problem(self, message: str) -> tuple:
        gr.Warning(message)
        return self._nothing(f"**Cannot use this file:** {message}")

    @staticmethod
    def _nothing(status: str) -> tuple:
        return status, None, None, None, ""


def never_crash(handler: Callable[..., tuple], outputs: int) -> Callable[..., tuple]:
    """A bug must not show a stack trace on the page: log it, say so. `outputs`: how many values the handler
    returns, the last five being the answer's (status, probabilities, model view, heatmap, latency)."""

    @functools.wraps(handler)
    def wrapped(*args: Any) -> tuple:
        try:
            return handler(*args)
        except Exception:
            log.error("request failed:\n%s", traceback.format_exc())
            message = "something went wrong on the server while reading this image; the error is in its log"
            gr.Warning(message)
            return (None,) * (outputs - 5) + (f"**Error:** {message}.", None, None, None, "")

    return wrapped


def build_app(demo: Demo) -> gr.Blocks:
    """The gr.Blocks page (not launched)."""
    model = demo.model
    size = model.image_size
    # delete_cache: every 10 minutes, files Gradio made (re-encoded outputs) older than 10 minutes are deleted.
    with gr.Blocks(title="DerMAE demo", analytics_enabled=False, delete_cache=(600, 600)) as app:
        gr.Markdown("# DerMAE: try the distilled student")
        gr.Markdown(RESEARCH_NOTE, elem_id="research-note")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Upload a dermoscopic image (JPEG, PNG, BMP, TIFF or WebP, at most "
                                       f"{MAX_IMAGE_BYTES // 2**20} MiB)", type="filepath", elem_id="upload")
                gallery = gr.Gallery(value=[(str(e.path), e.caption) for e in demo.examples.values()],
                                     label="…or pick an example", columns=3, height=320, allow_preview=False,
                                     elem_id="examples")
                example = gr.Dropdown(choices=list(demo.examples), value=None, label="Example",
                                      elem_id="example")
            with gr.Column(scale=2):
                status = gr.Markdown("Upload an image, or pick an example.", elem_id="status")
                probabilities = gr.Label(num_top_classes=TOP_K, label="Top classes", elem_id="probabilities")
                with gr.Row():
                    seen = gr.Image(label=f"What the model sees ({size}×{size} px, enlarged)", format="png",
                                    interactive=False, elem_id="model-view")
                    heat = gr.Image(label=f"Where it looked ({model.explain_method or 'unavailable'})", format="png",
                                    interactive=False, elem_id="heatmap")
                latency = gr.Markdown(elem_id="latency")
        gr.Markdown(model.model_card(), elem_id="model-card")
        outputs = [status, probabilities, seen, heat, latency]

        # One queue for every event that runs the model (see the queue's limits in __main__), not one per event.
        one_at_a_time = {"concurrency_id": "model", "concurrency_limit": 1}
        upload.upload(never_crash(demo.classify_upload, 6), upload, [upload, *outputs], api_name="classify",
                      **one_at_a_time)
        example.input(never_crash(demo.classify_example, 5), example, outputs, api_name="classify_example",
                      **one_at_a_time)
        names = list(demo.examples)

        def pick(evt: gr.SelectData) -> tuple:
            name = names[evt.index]
            return (name, *never_crash(demo.classify_example, 5)(name))

        gallery.select(pick, None, [example, *outputs], api_visibility="private", **one_at_a_time)
    return app
