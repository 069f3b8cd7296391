"""The demo's parts in-process (fast): the calibration rule of the uncertainty threshold, Grad-CAM and attention
rollout on real timm students, and the conversions of uploaded images."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.images import ImageProblem
from engine.labels import CLASSES
from engine.models.classifier import build_classifier
from engine.recipes.export import calibrate_threshold
from studio.demo.explain import explainer_for, overlay
from studio.demo.inputs import prepare_image


def one_hot_probs(tops: list[float], predicted: list[int]) -> np.ndarray:
    """Rows whose top probability is `tops[i]` on class `predicted[i]`, the rest spread evenly."""
    probs = np.zeros((len(tops), 7))
    for i, (top, cls) in enumerate(zip(tops, predicted, strict=True)):
        probs[i] = (1 - top) / 6
        probs[i, cls] = top
    return probs


def test_the_threshold_is_the_lowest_at_which_answers_above_it_reach_the_target():
    tops = [0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    right = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # the 9 most confident: 8/9 = 0.89; the 8 most: 8/8
    labels = np.zeros(10, int)
    probs = one_hot_probs(tops, [0 if r else 1 for r in right])
    calibration = calibrate_threshold(probs, labels, target_accuracy=0.9)
    assert calibration["threshold"] == pytest.approx(0.4)
    assert calibration["coverage"] == pytest.approx(0.8) and calibration["accuracy_above"] == 1.0
    assert calibration["n_above"] == 8 and calibration["n_val"] == 10
    # A lower target admits the ninth too (8 of 9 right >= 0.85).
    assert calibrate_threshold(probs, labels, target_accuracy=0.85)["threshold"] == pytest.approx(0.3)


def test_ties_are_admitted_together_and_an_unreachable_target_makes_every_answer_uncertain():
    probs = one_hot_probs([0.9, 0.9, 0.5], [0, 1, 0])  # a tie at 0.9: one right, one wrong
    calibration = calibrate_threshold(probs, np.zeros(3, int), target_accuracy=0.9)
    assert calibration["threshold"] is None and calibration["coverage"] == 0 and calibration["n_above"] == 0
    with pytest.raises(ValueError, match="no validation predictions"):
        calibrate_threshold(np.zeros((0, 7)), np.zeros(0, int))


def test_grad_cam_on_efficientnet_b0_and_attention_rollout_on_a_tiny_vit():
    torch.manual_seed(0)
    cnn = build_classifier("efficientnet_b0", len(CLASSES), 64).eval()
    method, explain = explainer_for(cnn)
    heat = explain(torch.rand(1, 3, 64, 64) * 2 - 1, 3)
    # the last stage is 2x2 at 64 px: the deepest stage at least 4 cells wide is used instead
    assert method == "Grad-CAM" and heat.shape == (4, 4) and heat.min() >= 0 and heat.max() <= 1
    assert explain(torch.rand(1, 3, 224, 224) * 2 - 1, 3).shape == (7, 7)  # at 224 px: the usual last layer
    assert all(p.grad is None for p in cnn.parameters())  # nothing left on the shared model

    vit = build_classifier("vit_tiny_patch16_224", len(CLASSES), 32, patch_size=4, depth=2).eval()
    method, explain = explainer_for(vit)
    heat = explain(torch.rand(1, 3, 32, 32) * 2 - 1, 0)
    assert method == "attention rollout" and heat.shape == (8, 8)
    assert heat.max() == pytest.approx(1.0) and heat.min() == pytest.approx(0.0)

    picture = np.full((256, 256, 3), 128, np.uint8)
    shown = overlay(picture, heat)
    assert shown.shape == picture.shape and shown.dtype == np.uint8 and not np.array_equal(shown, picture)


def png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def test_image_modes_become_8_bit_rgb_without_metadata():
    grey16 = Image.fromarray(np.full((20, 30), 32896, np.uint16))  # mid-grey in 16 bits
    prepared = prepare_image(png(grey16))
    assert prepared.image.mode == "RGB" and np.asarray(prepared.image).max() == 128
    assert "16-bit" in prepared.notes[0]
    opaque = prepare_image(png(Image.new("RGBA", (20, 20), (10, 20, 30, 255))))
    assert np.asarray(opaque.image)[0, 0].tolist() == [10, 20, 30] and "fully opaque" in opaque.notes[0]
    assert prepare_image(png(Image.new("RGB", (20, 20)))).notes == ()
    with_text = Image.new("RGB", (20, 20))
    out = io.BytesIO()
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("patient", "Jane Doe")
    with_text.save(out, "PNG", pnginfo=info)
    assert prepare_image(out.getvalue()).image.info == {}
    with pytest.raises(ImageProblem, match="floating-point"):
        prepare_image(_tiff(Image.fromarray(np.zeros((20, 20), np.float32))))


def _tiff(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "TIFF")
    return out.getvalue()


@pytest.mark.parametrize("crop", ["whole-frame", "centre-square"])
def test_the_demo_frames_an_upload_as_the_model_was_trained(tmp_path, crop):
    """A DermaMNIST model saw whole frames squashed to 28 px; a HAM10000 model saw centre squares: each is served
    the way it was trained (issue 22: centre crops served to a whole-frame model cost ~0.025 macro-F1)."""
    from engine.data.images import frame_for_model
    from studio.demo.model import ServedModel, files_in_folder
    from tests.demo.conftest import make_export

    framing = {"crop": crop, "via": 28 if crop == "whole-frame" else None}
    model = ServedModel(files_in_folder(make_export(tmp_path / "export", "vit_tiny_patch16_224", 32, framing,
                                                    patch_size=4, depth=1)))
    upload = Image.new("RGB", (600, 450), (0, 0, 255))
    upload.paste((255, 0, 0), (75, 0, 525, 450))  # red centre square, blue margins
    view = model.model_view(upload)
    assert np.array_equal(view, np.asarray(frame_for_model(upload, 32, framing)))
    assert bool(view[16, 0, 2] > 200) is (crop == "whole-frame")  # the margin reaches only the whole-frame model
    card = model.model_card()
    assert ("the whole frame squashed to a square through 28×28 px" in card) is (crop == "whole-frame")
    assert ("the centre square of each frame, resized to 32 px" in card) is (crop == "centre-square")


def test_the_model_card_shows_the_external_evaluation_beside_the_test_split_with_the_drop():
    from studio.demo.model import external_lines

    evaluation = {"macro_f1": 0.55, "balanced_accuracy": 0.6, "accuracy": 0.7}
    assert external_lines(evaluation) == []  # never evaluated outside: no line, no invented figure
    evaluation["external_evaluation"] = {"n": 70, "split": "external: isic clinic-b (b1, 70 images)",
                                         "macro_f1": 0.48, "balanced_accuracy": 0.52, "accuracy": 0.66}
    (line,) = external_lines(evaluation)
    assert "70 images, external: isic clinic-b" in line and "**0.480** (a drop of 0.070 from the test split)" in line
