"""`dermae train`'s chain end to end with the smoke profile: dataset version -> MAE -> teacher -> students
(the real-only baseline and the distilled arm) -> evaluation on the real test split -> export registered for serving."""

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
import torch

from engine.pipelines import arm_comparison, arm_differences, predictions_over_http, train_chain
from engine.profiles import load_profile
from tests import factories
from tests.processes import start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("train") / "ws")
    client = server.client()
    client.import_data("phantom", phantom_size=140)
    version = client.freeze_dataset("phantom-real", "smoke test")
    # Other clinics' images, imported after the version was frozen: evaluated on, never trained on.
    outside = client.import_data("ham10000", str(factories.ham_tree(tmp_path_factory.mktemp("outside"), 4)))
    server.external = outside.batch_id
    run = client.submit_pipeline(train_chain(load_profile("smoke"), version, external=outside.batch_id))
    jobs = {j.pipeline_key: client.wait_for_job(j.id, timeout=900) for j in run.jobs}
    yield server, client, version, jobs
    server.stop()


def test_every_stage_succeeds(trained):
    *_, jobs = trained
    failed = {k: j.error for k, j in jobs.items() if j.state != "succeeded"}
    assert not failed


def test_the_teacher_starts_from_the_mae_encoder(trained):
    _, client, _, jobs = trained
    assert jobs["teacher"].result["mae"] is True
    kinds = {a.kind for a in client.job_artifacts(jobs["mae"].id)}
    assert {"mae_encoder", "reconstruction_grid"} <= kinds
    assert "initialised from the MAE encoder" in client.job_logs(jobs["teacher"].id).text


def test_arms_differ_only_in_their_flags_and_are_evaluated_on_real_test(trained):
    server, client, version, jobs = trained
    test_real = sum(version.counts["real"]["test"].values())
    # a version of real images only: its distilled arm says so, the teacher's gain is not the synthetic images'
    assert jobs["real_kd.efficientnet_b0.eval"].result["arm"] == "efficientnet_b0: real only + MAE + KD"
    assert not [key for key in jobs if key.startswith("curated")]
    for arm in ("baseline", "real_kd"):
        for student in ("efficientnet_b0", "vit_tiny_patch16_224"):
            result = jobs[f"{arm}.{student}.eval"].result
            assert result["arch"] == student and 0 <= result["macro_f1"] <= 1
            report_artifact = next(a for a in client.job_artifacts(jobs[f"{arm}.{student}.eval"].id)
                                   if a.kind == "evaluation")
            report = json.loads((server.settings.workspace / report_artifact.path).read_text())
            assert report["split"] == "test (real, lesion-aware split)" and report["n"] == test_real
            assert report["split_kind"] == result["split_kind"] == "lesion-aware"  # phantom lesions are split so
            assert report["cost"]["params"] > 0 and report["cost"]["flops"] > 0
            assert len(report["confusion"]) == 7 and report["reliability"]
            assert report["trained"]["distilled"] is (arm == "real_kd")
            assert report["tta"] and 0 <= report["single_view"]["macro_f1"] <= 1  # both figures, told apart
    distill_log = client.job_logs(jobs["real_kd.efficientnet_b0"].id).text
    assert "distilling at T=" in distill_log and "teacher targets: mean over 8 flips/rotations" in distill_log
    assert "images (bf16)" in distill_log  # the precision the teacher trained in, not the fp32 student's
    # Same teacher, same images at the teacher's size: the second KD arm reuses the first one's targets.
    assert "reused from the cache" not in distill_log
    assert "reused from the cache" in client.job_logs(jobs["real_kd.vit_tiny_patch16_224"].id).text
    assert "(real)" in client.job_logs(jobs["baseline.efficientnet_b0"].id).text


def test_each_arm_is_compared_with_real_only_over_resampled_test_lesions(trained):
    _, client, version, jobs = trained
    differences = arm_differences(jobs.values(), predictions_over_http(client), resamples=200)
    students = ("efficientnet_b0", "vit_tiny_patch16_224")
    assert [(d["job_ids"], d["baseline_job_ids"]) for d in differences] == [
        ([jobs[f"real_kd.{s}.eval"].id], [jobs[f"baseline.{s}.eval"].id]) for s in students]
    for d in differences:
        for name in ("macro_f1", "balanced_accuracy"):
            low, high = d[name]["ci95"]
            assert low <= d[name]["diff"] <= high and d[name]["diff"] == pytest.approx(d[name]["a"] - d[name]["b"])
        assert d["macro_f1"]["a"] == pytest.approx(jobs[f"real_kd.{d['arm'].split(':')[0]}.eval"].result["macro_f1"])
    lesions = {i.lesion_id for i in client.dataset_manifest(version.id, split="test", source="real")}
    assert differences[0]["macro_f1"]["groups"] == len(lesions)


def test_the_export_matches_pytorch_and_is_registered_with_its_evaluation(trained):
    server, client, _, jobs = trained
    export = jobs["real_kd.efficientnet_b0.export"].result
    assert export["evaluated"] and max(export["max_abs_diff"].values()) < 1e-3
    (model,) = client.models()
    assert model.id == export["model_id"] and model.evaluation["arm"].startswith("efficientnet_b0")
    outside = jobs["real_kd.efficientnet_b0.external"].result  # the card shows the drop on outside images
    assert model.evaluation["external_evaluation"]["macro_f1"] == outside["macro_f1"]
    assert model.evaluation["macro_f1"] == jobs["real_kd.efficientnet_b0.eval"].result["macro_f1"]
    ws = server.settings.workspace
    x = torch.rand(2, 3, model.image_size, model.image_size) * 2 - 1
    scripted = torch.jit.load(str(ws / model.torchscript_path))(x).detach().numpy()
    onnx = ort.InferenceSession(str(ws / model.onnx_path)).run(None, {"image": x.numpy()})[0]
    assert np.abs(scripted - onnx).max() < 1e-3
    assert client.serve_model(model.id).served and client.served_model().id == model.id
    served_meta = json.loads((ws / model.classifier_path / "classifier.json").read_text())
    assert served_meta["framing"] == {"crop": "centre-square", "via": None}  # phantom frames: as HAM10000's


def test_every_model_is_also_evaluated_on_the_external_batch_beside_its_test_split(trained):
    server, client, version, jobs = trained
    outside = {i.id for i in client.manifest(source="real", batch=server.external)}
    assert len(outside) == 28  # 4 per class
    assert not outside & {i.id for i in client.dataset_manifest(version.id, source="real")}  # never trained on
    rows = {r["arm"]: r for r in arm_comparison(jobs.values())}
    assert set(rows) == {jobs[k].result["arm"] for k in jobs if k.endswith(".eval")}  # one row per model
    for key, job in jobs.items():
        if key.endswith(".external"):
            assert job.result["external"] == server.external and job.result["n"] == 28
            row = rows[job.result["arm"]]
            assert row["external_macro_f1"] == job.result["macro_f1"]
            assert row["external_drop"] == pytest.approx(row["macro_f1"] - job.result["macro_f1"])
    report = next(a for a in client.job_artifacts(jobs["baseline.efficientnet_b0.external"].id)
                  if a.kind == "evaluation")
    split = json.loads((server.settings.workspace / report.path).read_text())["split"]
    assert split.startswith("external: ham10000 ") and f"({server.external}, 28 images)" in split


def test_an_external_evaluation_refuses_images_the_model_trained_on_and_the_cli_prints_the_drop(trained):
    import subprocess
    import sys

    server, client, version, jobs = trained
    [phantom] = [b for b in client.imports() if b.format == "phantom"]
    classifier = next(a for a in client.job_artifacts(jobs["baseline.efficientnet_b0"].id) if a.kind == "classifier")
    leaked = client.wait_for_job(client.submit_job("evaluate", {
        "model": str(server.settings.workspace / classifier.path), "source": phantom.id}).id, timeout=300)
    assert leaked.state == "failed" and "in the train or val split of" in leaked.error
    test_only = client.wait_for_job(client.submit_job("evaluate", {
        "model": str(server.settings.workspace / classifier.path), "source": phantom.id,
        "source_split": "test"}).id, timeout=300)
    assert test_only.state == "succeeded" and test_only.result["n"] == sum(version.counts["real"]["test"].values())

    (model,) = client.models()
    env = {**os.environ, "DERMAE_WORKSPACE": str(server.settings.workspace)}
    done = subprocess.run([sys.executable, "-m", "engine.cli", "evaluate", str(model.id), "--source", server.external],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{model.name} on {server.external}: macro-F1 " in done.stdout and "drop" in done.stdout
    listed = subprocess.run([sys.executable, "-m", "engine.cli", "imports"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert server.external in listed.stdout and "lesion-aware" in listed.stdout
