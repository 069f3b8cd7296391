"""The Gradio demo, really launched (a subprocess on 127.0.0.1, stopped by PID), driven through gradio_client:
predictions on HAM10000 sample images and on phantom examples, every kind of bad upload answered with a clear
message, uploads deleted after reading, metadata never served back, nothing outside the examples served."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import ExifTags, Image

from engine.data.phantom import render_lesion
from engine.labels import CLASS_NAMES
from engine.launcher import Launcher
from tests.conftest import HAM_SAMPLE, needs
from tests.demo.conftest import gradio_client, ham_images, launch_demo, make_export
from tests.factories import corrupt_jpeg, huge_png, text_as_jpg
from tests.processes import start_server, wait_until

pytestmark = pytest.mark.slow  # each module launches a demo (torch + gradio start-up: ~10-20 s on 2 cores)


@pytest.fixture(scope="module")
def client(demo):
    return gradio_client(demo.url)


def classify(client, path: Path) -> dict:
    from gradio_client import handle_file

    upload, status, label, seen, heat, latency = client.predict(handle_file(str(path)), api_name="/classify")
    assert upload is None  # the upload box is cleared: it would link to the (deleted) original
    return {"status": status, "label": label, "seen": seen, "heat": heat, "latency": latency}


def assert_answered(result: dict) -> None:
    assert "Most likely" in result["status"] or "Uncertain" in result["status"], result["status"]
    confidences = result["label"]["confidences"]
    assert len(confidences) == 3 and sum(c["confidence"] for c in confidences) <= 1 + 1e-6
    assert all(any(name in c["label"] for name in CLASS_NAMES.values()) for c in confidences)  # full names
    with Image.open(result["seen"]) as seen, Image.open(result["heat"]) as heat:
        assert seen.size == heat.size == (256, 256)  # 64 px, enlarged 4x
    assert "Inference latency" in result["latency"] and " ms" in result["latency"]
    assert "Grad-CAM" in result["latency"]


def uploads_left(demo, name: str) -> list[Path]:
    return [p for p in demo.scratch_parent.rglob(name) if "examples" not in p.parts]


def scratch_folders(tmpdir: Path) -> list[Path]:
    """The demo's own temporary folders (ONNX Runtime leaves a .ses file of its own in TMPDIR)."""
    return list(tmpdir.glob("dermae-demo-*"))


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def phantom(mode_change=None, fmt: str = "PNG", **save) -> bytes:
    img = Image.fromarray(render_lesion("mel", np.random.default_rng(7)))
    img = mode_change(img) if mode_change else img
    out = io.BytesIO()
    img.save(out, fmt, **save)
    return out.getvalue()


@needs(HAM_SAMPLE)
def test_predicts_on_ham10000_sample_images_and_deletes_each_upload(demo, client):
    for path, _cls in ham_images():
        result = classify(client, path)
        assert_answered(result)
        assert uploads_left(demo, path.name) == [], "the upload was not deleted after reading"


def test_predicts_on_a_phantom_example_and_says_what_it_is(demo, client):
    status, label, seen, heat, latency = client.predict("phantom-mel.png", api_name="/classify_example")
    result = {"status": status, "label": label, "seen": seen, "heat": heat, "latency": latency}
    assert_answered(result)
    assert "phantom, not clinical data" in status and "Melanoma (mel)" in status


def test_the_answer_follows_the_threshold_calibrated_on_validation_data(demo, client, tmp_path):
    serving = json.loads((demo.export / "serving.json").read_text())
    assert serving["split"] == "val (real)" and "lowest threshold" in serving["rule"]
    result = classify(client, write(tmp_path / "lesion.png", phantom()))
    top = result["label"]["confidences"][0]["confidence"]
    uncertain = serving["threshold"] is None or top < serving["threshold"]
    assert ("Uncertain" in result["status"]) is uncertain, (serving, top, result["status"])


@pytest.mark.parametrize(("name", "make", "message"), [
    ("notes.jpg", text_as_jpg, "not an image"),
    ("broken.jpg", corrupt_jpeg, "corrupt or truncated"),
    ("bomb.png", lambda: huge_png(20000), "too large"),  # 20000x20000: a few KiB on disk, 400 MP decoded
    ("empty.png", lambda: b"", "empty file"),
])
def test_a_bad_file_gets_a_clear_message_and_the_demo_keeps_serving(demo, client, tmp_path, name, make, message):
    result = classify(client, write(tmp_path / name, make()))
    assert result["status"].startswith("**Cannot use this file:**") and message in result["status"]
    assert "Traceback" not in result["status"] and not result["label"] and result["seen"] is None
    assert uploads_left(demo, name) == []
    assert_answered(classify(client, write(tmp_path / "after.png", phantom())))  # still serving


@pytest.mark.parametrize(("name", "data", "note"), [
    ("rgba.png", phantom(lambda im: Image.fromarray(np.dstack([np.asarray(im), np.full((64, 64), 128, np.uint8)]))),
     "transparent parts: flattened onto white"),
    ("grey.png", phantom(lambda im: im.convert("L")), "greyscale: converted to RGB"),
    ("sixteen.png", phantom(lambda im: Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257)),
     "16-bit greyscale: scaled to 8 bits"),
    ("palette.png", phantom(lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE)), None),
])
def test_other_image_modes_are_converted_with_a_note(client, tmp_path, name, data, note):
    result = classify(client, write(tmp_path / name, data))
    assert_answered(result)
    if note:
        assert note in result["status"]
    if name == "sixteen.png":  # scaled, not clipped: a mid-grey 16-bit pixel stays mid-grey
        assert 40 < np.asarray(Image.open(result["seen"])).mean() < 220


def test_exif_rotation_is_applied_and_metadata_never_served_back(client, tmp_path):
    pixels = np.zeros((40, 80, 3), np.uint8)
    pixels[:, :40] = (220, 30, 30)  # stored: red left half, blue right half
    pixels[:, 40:] = (30, 30, 220)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90° clockwise to view": red on top, blue below
    exif[ExifTags.Base.Make] = "SecretCam-4242"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif.tobytes())

    result = classify(client, path)
    assert "EXIF orientation tag (6)" in result["status"]
    seen = np.asarray(Image.open(result["seen"]).convert("RGB")).astype(int)
    top, bottom = seen[:64].mean((0, 1)), seen[-64:].mean((0, 1))
    assert top[0] > top[2] + 100 and bottom[2] > bottom[0] + 100  # upright: red above blue
    for served in (result["seen"], result["heat"]):
        data = Path(served).read_bytes()
        assert b"SecretCam" not in data and not Image.open(served).getexif()


def test_only_the_examples_are_served(demo, client):
    for path in (demo.export / "model.onnx", demo.export / "classifier.json", Path("/etc/passwd")):
        response = httpx.get(f"{demo.url}/gradio_api/file={path}")
        assert response.status_code in (403, 404), path
    config = httpx.get(f"{demo.url}/config").text
    assert "Research tool, not a diagnostic device" in config
    for shown in ("Model card", "phantom-fixture", "macro-F1", "balanced accuracy", "GFLOPs",
                  "Uncertainty threshold", "Melanoma (mel)"):
        assert shown in config, shown


@pytest.mark.parametrize("token", [None, "short"])
def test_refuses_a_public_address_without_a_token(effnet_export, token):
    env = {k: v for k, v in os.environ.items() if k != "DERMAE_DEMO_TOKEN"} | ({"DERMAE_DEMO_TOKEN": token}
                                                                              if token else {})
    done = subprocess.run([sys.executable, "-m", "studio.demo", "--host", "0.0.0.0", "--model", str(effnet_export)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "refusing to bind 0.0.0.0" in done.stderr and "DERMAE_DEMO_TOKEN" in done.stderr


def test_elsewhere_the_token_is_the_sign_in_password(monkeypatch):
    from studio.demo.__main__ import sign_in

    monkeypatch.setenv("DERMAE_DEMO_TOKEN", "a" * 32)
    assert sign_in("127.0.0.1") is None
    check = sign_in("0.0.0.0")
    assert check("anyone", "a" * 32) and not check("anyone", "a" * 31) and not check("anyone", "")


def test_a_missing_model_is_a_message_not_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "studio.demo", "--model", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "lacks model.onnx" in done.stderr and "Traceback" not in done.stderr


def test_serves_the_model_the_studio_marked_served_and_cleans_up_on_exit(effnet_export, tmp_path):
    """The engine's served model (GET /models/served, paths inside the workspace) rather than a folder; and once
    stopped, the demo's scratch folder (uploads, outputs, examples) is gone."""
    import shutil

    server = start_server(tmp_path / "ws")
    launcher = Launcher()
    try:
        api = server.client()
        queued = api.submit_job("selftest", {"steps": 100_000, "step_seconds": 0.05})
        job = wait_until(lambda: (j := api.job(queued.id)).state == "running" and j, what="a running job")
        workspace = server.settings.workspace
        folder = workspace / "jobs" / str(job.id) / "artifacts" / "export"
        shutil.copytree(effnet_export, folder)
        relative = lambda p: str(p.relative_to(workspace))  # noqa: E731
        model = api.register_model(job.id, job.attempt, name="fixture-b0", arch="efficientnet_b0", image_size=64,
                                   dataset="phantom-fixture", classifier_path=relative(folder),
                                   torchscript_path=relative(folder / "model.torchscript.pt"),
                                   onnx_path=relative(folder / "model.onnx"),
                                   evaluation=json.loads((folder / "evaluation.json").read_text()),
                                   check_max_abs_diff=0.0)
        api.serve_model(model.id)
        api.cancel_job(job.id)

        scratch_parent = tmp_path / "tmpdir"
        scratch_parent.mkdir()
        url = launcher.start_demo("127.0.0.1", 0, api=server.url, workspace=workspace,
                                  env={"TMPDIR": str(scratch_parent)})
        assert "Model card: fixture-b0" in httpx.get(f"{url}/config").text
        status, *_ = gradio_client(url).predict("phantom-nv.png", api_name="/classify_example")
        assert "Most likely" in status or "Uncertain" in status
        assert scratch_folders(scratch_parent)
    finally:
        launcher.stop_all()
        server.stop()
    assert scratch_folders(scratch_parent) == [], "the demo left its scratch folder behind"


def test_a_vit_student_is_served_with_attention_rollout(tmp_path):

    export = make_export(tmp_path / "vit", "vit_tiny_patch16_224", 32, patch_size=4, depth=2)
    launcher = Launcher()
    try:
        running = launch_demo(launcher, export, tmp_path, args=["--runtime", "torchscript"])
        status, label, seen, heat, latency = gradio_client(running.url).predict(
            "phantom-bcc.png", api_name="/classify_example")
        assert "Most likely" in status or "Uncertain" in status
        assert "attention rollout" in latency and "8×8 map" in latency and "TorchScript" in latency
        with Image.open(seen) as s, Image.open(heat) as h:
            assert s.size == h.size == (256, 256)  # 32 px, enlarged 8x
        assert len(label["confidences"]) == 3
    finally:
        launcher.stop_all()


def test_examples_include_the_ham10000_sample_when_present(client):
    names = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/classify_example"]
    choices = json.dumps(names)
    assert "phantom-mel.png" in choices
    if HAM_SAMPLE.exists():
        assert "ham10000-mel-" in choices

