"""Small exported students (untrained, built in seconds) written by the export job's own function, and a really
launched demo serving one, on 127.0.0.1 and a free port, stopped by PID (process group) afterwards."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.images import square_resize
from engine.data.phantom import render_lesion
from engine.data.tensors import to_model_input
from engine.labels import CLASSES
from engine.launcher import Launcher
from tests.conftest import HAM_SAMPLE


def phantom_inputs(size: int, per_class: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Model inputs of phantom lesions, per_class of each class, and their labels."""
    rng = np.random.default_rng(seed)
    pixels = [np.asarray(square_resize(Image.fromarray(render_lesion(cls, rng)), size))
              for cls in CLASSES for _ in range(per_class)]
    return to_model_input(np.stack(pixels)), np.repeat(np.arange(len(CLASSES)), per_class)


def make_export(folder: Path, arch: str = "efficientnet_b0", size: int = 64, framing: dict | None = None,
                **kwargs) -> Path:
    """An untrained student exported for serving exactly as the export job does it (export_for_serving), with an
    evaluation of the same shape as the evaluate job's (on phantom images, which the model card then shows)."""
    from engine.metrics import classification_report
    from engine.models.classifier import build_classifier, probabilities
    from engine.models.profiling import count_flops, count_parameters, latency_ms
    from engine.recipes.export import export_for_serving

    torch.manual_seed(0)
    model = build_classifier(arch, len(CLASSES), size, **kwargs).eval()
    meta = {"arch": arch, "image_size": size, "kwargs": kwargs, "classes": list(CLASSES),
            "dataset": "phantom-fixture", "use_synthetic": False, "distilled": False, "framing": framing}
    test_x, test_y = phantom_inputs(size, 2, seed=1)
    val_x, val_y = phantom_inputs(size, 4, seed=2)
    evaluation = classification_report(probabilities(model, test_x), test_y, CLASSES) | {
        "split": "test (phantom fixture)", "dataset": meta["dataset"],
        "cost": {"params": count_parameters(model), "flops": count_flops(model, size),
                 "latency_ms": latency_ms(model, size, runs=3)}}
    export_for_serving(model, meta, folder, test_x[:4], val_x, val_y, evaluation=evaluation)
    return folder


def ham_images(per_class: int = 1) -> list[tuple[Path, str]]:
    """(image path, class) from the HAM10000 sample, the first `per_class` of each class by image id."""
    with (HAM_SAMPLE / "HAM10000_metadata.csv").open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["image_id"])
    chosen = []
    for cls in CLASSES:
        for row in [r for r in rows if r["dx"] == cls][:per_class]:
            chosen.append((next(HAM_SAMPLE.glob(f"*/{row['image_id']}.jpg")), cls))
    return chosen


def gradio_client(url: str):
    """A gradio_client.Client that sends nothing anywhere but `url`."""
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False)


@dataclass
class RunningDemo:
    url: str
    export: Path
    scratch_parent: Path  # the demo's TMPDIR: its scratch folder (uploads, outputs, examples) is inside


def launch_demo(launcher: Launcher, export: Path, tmp: Path, args: list[str] | None = None) -> RunningDemo:
    scratch_parent = tmp / "tmpdir"
    scratch_parent.mkdir(parents=True, exist_ok=True)
    url = launcher.start_demo("127.0.0.1", 0, model=export, args=args, env={"TMPDIR": str(scratch_parent)})
    return RunningDemo(url, export, scratch_parent)


@pytest.fixture(scope="module")
def effnet_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_export(tmp_path_factory.mktemp("effnet") / "export")


@pytest.fixture(scope="module")
def demo(effnet_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    launcher = Launcher()
    try:
        yield launch_demo(launcher, effnet_export, tmp_path_factory.mktemp("demo"))
    finally:
        launcher.stop_all()  # SIGTERM to its process group, SIGKILL after a grace period
