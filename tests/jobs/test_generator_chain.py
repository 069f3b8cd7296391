"""The generator chain end to end on the phantom set with the smoke profile: real server, real job processes."""

import dataclasses
import json

import pytest
from PIL import Image

from engine.client import ApiError
from engine.labels import CLASSES
from engine.models.ldm import load_generator
from engine.pipelines import generator_chain
from engine.profiles import load_profile
from tests import factories
from tests.processes import start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("chain") / "ws")
    client = server.client()
    client.import_data("phantom", phantom_size=140)
    run = client.submit_pipeline(generator_chain(load_profile("smoke"), preview=True))  # as `dermae demo` does
    jobs = {j.pipeline_key: client.wait_for_job(j.id, timeout=600) for j in run.jobs}
    yield server, client, jobs
    server.stop()


def test_every_stage_succeeds_and_a_score_job_follows_generate(chain):
    _, _, jobs = chain
    assert list(jobs) == ["vae", "ldm", "reference", "judge", "preview.score", "generate", "generate.score"]
    assert {k: j.state.value for k, j in jobs.items()} == dict.fromkeys(jobs, "succeeded"), \
        {k: j.error for k, j in jobs.items()}
    assert jobs["generate.score"].after == [jobs["generate"].id]
    assert set(jobs["generate"].after) == {jobs[k].id for k in ("ldm", "reference", "judge")}


def test_the_diffusion_job_previews_images_for_review_a_tenth_of_the_way(chain):
    server, client, jobs = chain
    ldm = jobs["ldm"]
    assert ldm.params["preview_at"] == ldm.params["steps"] // 10
    preview = [i for i in client.images(source="synthetic", limit=1000).items if i.generation_job == ldm.id]
    short = [c for c in CLASSES if c != "nv"]  # phantom classes short of the largest (nv)
    assert sorted({i.label for i in preview}) == sorted(short) and len(preview) == 8 * len(short)
    checkpoint = {i.checkpoint for i in preview}
    assert len(checkpoint) == 1 and checkpoint.pop().endswith(f"ldm-preview-step{ldm.params['preview_at']:07d}")
    assert load_generator(server.settings.workspace / next(
        a.path for a in client.job_artifacts(ldm.id) if a.kind == "ldm_preview")).num_classes == len(CLASSES)
    assert jobs["preview.score"].result["generation_job"] == ldm.id
    assert jobs["preview.score"].result["scored"] == len(preview)


def test_generate_fills_exactly_the_planners_quotas_with_provenance(chain):
    _, client, jobs = chain
    quotas = jobs["generate"].result["quotas"]
    assert sum(quotas.values()) > 0
    made = [i for i in client.images(source="synthetic", limit=1000).items if i.generation_job == jobs["generate"].id]
    assert {c: sum(i.label == c for i in made) for c in CLASSES} == quotas  # per class exactly, all pending review
    everything = client.images(source="synthetic", limit=1000).items
    preview = {c: sum(i.label == c and i.generation_job == jobs["ldm"].id for i in everything) for c in CLASSES}
    assert client.stats().synthetic["pending"] == {c: quotas[c] + preview[c] for c in CLASSES}  # all pending
    seeds = set()
    for image in made:
        assert image.guidance == 3.0 and image.steps == 4 and image.checkpoint.endswith("/ldm")
        seeds.add(image.seed)
    assert len(seeds) == len(made)


def test_a_second_job_remaking_the_same_images_still_fills_its_quota_with_new_ones(chain):
    _, client, jobs = chain
    first = jobs["generate"]
    before = client.stats().synthetic["pending"]["df"]
    # the first job's own seeds: its first candidates are already in the store, so they add nothing new
    job = client.submit_job("generate", {"quotas": {"df": 3}, "seed": first.id, "steps": 4, "guidance": 3.0})
    again = client.wait_for_job(job.id, timeout=300)
    assert again.state == "succeeded", again.error
    assert client.stats().synthetic["pending"]["df"] == before + 3 and again.result["generated"] == 3
    assert again.result["candidates"] > 3  # it had to go past the duplicates
    score = next(j for j in client.jobs(kind="score").items if j.after == [job.id])
    assert client.wait_for_job(score.id, timeout=300).state == "succeeded"  # the next tests see every image scored


def test_per_class_settings_take_any_spelling_of_a_class_and_refuse_unknown_ones(chain):
    _, client, _ = chain
    with pytest.raises(ApiError, match="unknown label 'vasx'") as info:
        client.submit_job("generate", {"quotas": {"vasx": 3}})  # a typo must not quietly generate nothing
    assert info.value.status_code == 422
    job = client.submit_job("generate", {"quotas": {"Dermatofibroma": 2, "vasc": 2}, "oversample": 1.0,
                                         "class_oversample": {"VASC": 3.0}, "steps": 2, "guidance": 3.0})
    assert job.params["quotas"] == {"df": 2, "vasc": 2} and job.params["class_oversample"] == {"vasc": 3.0}
    done = client.wait_for_job(job.id, timeout=300)
    assert done.state == "succeeded", done.error
    assert done.result["candidates_per_class"] == {**dict.fromkeys(CLASSES, 0), "df": 2, "vasc": 6}
    score = next(j for j in client.jobs(kind="score").items if j.after == [job.id])
    assert client.wait_for_job(score.id, timeout=300).state == "succeeded"  # the next tests see every image scored


def test_every_synthetic_image_is_scored(chain):
    server, client, jobs = chain
    ids = [i.id for i in client.images(source="synthetic", limit=1000).items]
    real_ids = {i.id for i in client.images(source="real", split="train", limit=1000).items}
    scores = {i: {n: v.model_dump() for n, v in named.items()} for i, named in client.scores(ids).items()}
    for image_id in ids:
        names = scores[image_id]
        assert set(names) >= {"intended_prob", "judge_prob", "judge_class", "nearest_real_dist", "near_copy",
                              "dup_group", "sharpness"}
        assert 0 <= names["intended_prob"]["value"] <= 1 and 0 <= names["judge_prob"]["value"] <= 1
        assert names["judge_class"]["ref"] in CLASSES
        assert names["nearest_real_dist"]["ref"] in real_ids  # the nearest real image's id is kept
        assert names["near_copy"]["value"] in (0, 1)
    artifacts = {a.kind: a for a in client.job_artifacts(jobs["generate.score"].id)}
    report = json.loads((server.settings.workspace / artifacts["score_report"].path).read_text())
    grid = Image.open(server.settings.workspace / artifacts["class_grid"].path)
    cell = grid.width // 16  # 8 synthetic + 8 real per row, a row per generated class
    assert grid.height == cell * len(report["per_class"]) > 0
    assert "Inception" in report["note"] and report["near_copy_threshold"] > 0
    judge = jobs["judge"]
    assert report["judge"].endswith(f"jobs/{judge.id}/artifacts/judge") and report["judge_arch"] == "resnet18"
    assert report["selector"] == "small_cnn"  # the selector is another model, which the report never quotes
    for cls, row in report["per_class"].items():
        assert cls in CLASSES and row["real_val_recall"] == judge.result["val_recall"][cls]
        assert 0 <= row["intended_rate"] <= 1 and row["n"] == sum(i.label == cls for i in client.images(
            source="synthetic", limit=1000).items if i.generation_job == jobs["generate"].id)
        assert set(row["bars"]) == {"intended_rate", "precision", "recall"}
        if "fd" in row:
            assert row["fd"] >= 0 and row["fd_floor"] >= 0 and row["fd_at_n"] >= 2
        # the two-sample test where its folds have rows enough (test_metrics checks what it finds)
        assert ("c2st" in row) == (min(row["n"], row["n_unseen_real"]) >= 5)
        assert ("precision" in row) == (min(row["n"], row["n_unseen_real"]) > 3)
    assert jobs["generate.score"].result["per_class"] == report["per_class"]  # what the Overview reads


def test_models_and_grids_are_artifacts_that_load_offline(chain):
    server, client, jobs = chain
    kinds = {a.kind: a for a in client.job_artifacts(jobs["ldm"].id)}
    assert {"ldm_model", "sample_grid"} <= set(kinds)
    model = load_generator(server.settings.workspace / kinds["ldm_model"].path)
    assert model.num_classes == len(CLASSES)
    assert len(model.latent_range.low) == model.unet.config.in_channels  # guided sampling clips to it
    assert "reconstructions" in {a.kind for a in client.job_artifacts(jobs["vae"].id)}
    series = {m.name for m in client.job_metrics(jobs["ldm"].id)}
    assert "train/loss" in series


def test_the_paper_path_fine_tunes_a_local_sd_folder_and_generates_from_it(chain, tmp_path):
    _, client, _ = chain
    folder = factories.tiny_sd_pipeline(tmp_path / "sd", 32)
    tuned = client.wait_for_job(client.submit_job("finetune_sd", {
        "pipeline": str(folder), "image_size": 32, "steps": 1, "batch_size": 2}).id, timeout=300)
    assert tuned.state == "succeeded", tuned.error
    generated = client.wait_for_job(client.submit_job("generate", {
        "quotas": {"df": 2}, "steps": 2, "batch_size": 2}, after=[tuned.id]).id, timeout=300)
    assert generated.state == "succeeded", generated.error
    assert generated.result["generated"] == 2 and generated.result["model"].endswith(f"jobs/{tuned.id}/artifacts/ldm")


def test_a_pixel_space_profile_trains_no_vae_and_generates_from_pixels(chain):
    server, client, _ = chain
    smoke = load_profile("smoke")
    pixel = dataclasses.replace(smoke, jobs={**smoke.jobs, "train_ldm": {**smoke.jobs["train_ldm"], "pixel_space": True,
                                                                         "image_size": 16}})
    run = client.submit_pipeline(generator_chain(pixel))
    jobs = {j.pipeline_key: client.wait_for_job(j.id, timeout=600) for j in run.jobs}
    assert list(jobs) == ["ldm", "reference", "judge", "generate", "generate.score"]  # no VAE to train
    assert {k: j.state.value for k, j in jobs.items()} == dict.fromkeys(jobs, "succeeded"), \
        {k: j.error for k, j in jobs.items()}
    model = load_generator(server.settings.workspace / next(
        a.path for a in client.job_artifacts(jobs["ldm"].id) if a.kind == "ldm_model"))
    assert model.vae is None and model.image_size == 16
    made = [i for i in client.images(source="synthetic", limit=1000).items if i.generation_job == jobs["generate"].id]
    assert len(made) == jobs["generate"].result["generated"] > 0 and {(i.width, i.height) for i in made} == {(16, 16)}
