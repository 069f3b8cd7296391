"""An arm is named after what it trained on (issue 22): a version without synthetic images has no "curated
synthetic" arm, and a curated arm says how it was curated."""

from datetime import datetime

import pytest

from engine.pipelines import train_chain
from engine.profiles import load_profile
from engine.schemas import DatasetVersion


def version(synthetic: dict[str, int], selection: str = "reviews", id: str = "v", note: str | None = None
            ) -> DatasetVersion:
    return DatasetVersion(id=id, name="v", note=note, created_at=datetime(2026, 1, 1), policy={"selection": selection},
                          counts={"real": {"train": {"nv": 50, "df": 5}}, "synthetic": {"train": synthetic}},
                          lineage={}, manifest_path="m", manifest_sha256="0" * 64, n_images=55)


def arm_labels(v: DatasetVersion) -> dict[str, str]:
    return {step.key: step.params["arm"] for step in train_chain(load_profile("smoke"), v).steps
            if step.kind == "evaluate"}


def test_a_real_only_version_has_no_curated_synthetic_arm():
    labels = arm_labels(version({}))
    assert labels["baseline.efficientnet_b0.eval"] == "efficientnet_b0: real only"
    assert labels["real_kd.efficientnet_b0.eval"] == "efficientnet_b0: real only + MAE + KD"
    assert not [label for label in labels.values() if "synthetic" in label or "curated" in label]
    steps = {s.key: s for s in train_chain(load_profile("smoke"), version({})).steps}
    assert steps["real_kd.efficientnet_b0.export"].after_keys == ["real_kd.efficientnet_b0",
                                                                 "real_kd.efficientnet_b0.eval"]


@pytest.mark.parametrize(("selection", "named"), [("reviews", "human-curated"),
                                                  ("scores", "auto-curated (from scores)")])
def test_a_curated_arm_says_how_many_synthetic_images_and_how_they_were_chosen(selection, named):
    labels = arm_labels(version({"df": 30, "vasc": 12}, selection))
    assert labels["curated.efficientnet_b0.eval"] == f"efficientnet_b0: real + 42 {named} synthetic + MAE + KD"


# --- each arm against real only, paired over test lesions ---

def test_every_arm_is_paired_with_the_real_only_baseline_of_its_own_student():
    from engine.pipelines import baseline_key

    assert baseline_key("curated.efficientnet_b0.eval") == "baseline.efficientnet_b0.eval"
    assert baseline_key("seed2.uncurated.vit_tiny_patch16_224.eval") == "seed2.baseline.vit_tiny_patch16_224.eval"
    for no_pair in ("baseline.efficientnet_b0.eval", "teacher.eval", "curated.efficientnet_b0", None):
        assert baseline_key(no_pair) is None


def test_arm_differences_bootstrap_each_arm_against_its_baseline_on_the_same_images():
    from types import SimpleNamespace

    import numpy as np

    from engine.pipelines import arm_differences

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 400)
    lesions = [f"L{i // 2}" for i in range(400)]
    noisy = np.where(rng.random(400) < 0.5, rng.integers(0, 7, 400), labels)
    better = np.where(rng.random(400) < 0.7, labels, noisy)
    predicted = {1: labels, 2: noisy, 3: better, 4: noisy}  # teacher, baseline, curated, another student's baseline

    def job(job_id, key, arm):
        return SimpleNamespace(id=job_id, kind="evaluate", pipeline_key=key, result={"arm": arm})

    jobs = [job(1, "teacher.eval", "teacher"), job(2, "baseline.effnet.eval", "effnet: real only"),
            job(3, "curated.effnet.eval", "effnet: real + 40 human-curated synthetic + MAE + KD"),
            job(4, "baseline.vit.eval", "vit: real only")]
    read = lambda job_id: {"ids": list(range(400)), "lesion_ids": lesions, "labels": labels.tolist(),  # noqa: E731
                           "predicted": predicted[job_id].tolist()}
    [row] = arm_differences(jobs, read, resamples=500)
    assert (row["job_ids"], row["baseline_job_ids"], row["baseline"]) == ([3], [2], "effnet: real only")
    assert row["macro_f1"]["excludes_zero"] and row["macro_f1"]["ci95"][0] > 0
    assert row["macro_f1"]["groups"] == 200  # lesions, not images

    shifted = lambda job_id: read(job_id) | ({"ids": list(range(1, 401))} if job_id == 3 else {})  # noqa: E731
    with pytest.raises(ValueError, match="evaluated on different images"):
        arm_differences(jobs, shifted)


def test_curated_is_also_compared_with_the_uncurated_and_the_kd_arm_of_its_seed():
    """Does curation help (curated minus uncurated), and what do the synthetic images add beyond the teacher
    (curated minus real + KD): the same paired bootstrap against another reference arm."""
    from types import SimpleNamespace

    import numpy as np

    from engine.pipelines import arm_differences, arm_of, baseline_key

    assert baseline_key("seed1.curated.effnet.eval", "uncurated") == "seed1.uncurated.effnet.eval"
    assert arm_of("seed1.curated.effnet.eval") == "curated" and arm_of("teacher.eval") is None
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 7, 300)
    rightness = {"baseline": 0.5, "real_kd": 0.6, "uncurated": 0.6, "curated": 0.9}
    jobs, predicted = [], {}
    for seed in range(2):
        for offset, (arm, right) in enumerate(rightness.items()):
            job_id = 10 * seed + offset
            predicted[job_id] = np.where(rng.random(300) < right, labels, (labels + 1) % 7)
            jobs.append(SimpleNamespace(id=job_id, kind="evaluate", pipeline_key=f"seed{seed}.{arm}.effnet.eval",
                                        result={"arm": f"effnet: {arm}"}))
    read = lambda job_id: {"ids": list(range(300)), "lesion_ids": list(range(300)),  # noqa: E731
                           "labels": labels.tolist(), "predicted": predicted[job_id].tolist()}
    [curation] = arm_differences(jobs, read, resamples=300, reference="uncurated", arms=["curated"])
    assert (curation["job_ids"], curation["baseline_job_ids"]) == ([3, 13], [2, 12])
    assert curation["baseline"] == "effnet: uncurated" and curation["macro_f1"]["excludes_zero"]
    [beyond_teacher] = arm_differences(jobs, read, resamples=300, reference="real_kd", arms=["curated"])
    assert beyond_teacher["baseline_job_ids"] == [1, 11] and beyond_teacher["macro_f1"]["diff"] > 0.1
    assert len(arm_differences(jobs, read, resamples=100)) == 3  # against real only: every other arm


def test_seeds_train_the_teacher_and_every_arm_once_each_from_one_mae_encoder():
    steps = {s.key: s for s in train_chain(load_profile("smoke"), version({"df": 3}), seeds=3).steps}
    assert [k for k in steps if steps[k].kind == "pretrain_mae"] == ["mae"]
    for seed in range(3):
        teacher = steps[f"seed{seed}.teacher"]
        assert teacher.after_keys == ["mae"] and teacher.params["seed"] == seed
        for arm in ("baseline", "curated"):
            student = steps[f"seed{seed}.{arm}.efficientnet_b0"]
            assert student.params["seed"] == seed
            assert student.after_keys == ([f"seed{seed}.teacher"] if arm == "curated" else [])
    assert [k for k in steps if k.endswith(".export")] == ["seed0.curated.efficientnet_b0.export"]
    with pytest.raises(ValueError, match="seeds must be at least 1"):
        train_chain(load_profile("smoke"), version({}), seeds=0)


def test_differences_and_the_summary_average_over_seeds():
    from types import SimpleNamespace

    import numpy as np

    from engine.pipelines import arm_comparison, arm_differences, arm_summary

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, 300)
    jobs, predicted = [], {}
    for seed in range(3):
        for offset, (arm, label, right) in enumerate((("baseline", "real only", 0.5), ("curated", "curated", 0.8))):
            job_id = 10 * seed + offset
            predicted[job_id] = np.where(rng.random(300) < right, labels, (labels + 1) % 7)
            f1 = float(np.mean(predicted[job_id] == labels))
            jobs.append(SimpleNamespace(id=job_id, kind="evaluate", pipeline_key=f"seed{seed}.{arm}.effnet.eval",
                                        result={"arm": f"effnet: {label}", "arch": "effnet", "macro_f1": f1}))
    read = lambda job_id: {"ids": list(range(300)), "lesion_ids": list(range(300)),  # noqa: E731
                           "labels": labels.tolist(), "predicted": predicted[job_id].tolist()}
    [row] = arm_differences(jobs, read, resamples=300)
    assert row["seeds"] == 3 and row["job_ids"] == [1, 11, 21] and row["baseline_job_ids"] == [0, 10, 20]
    assert len(row["macro_f1"]["per_seed"]) == 3 and row["macro_f1"]["excludes_zero"]
    summary = arm_summary(arm_comparison(jobs))
    assert [(r["arm"], r["seeds"]) for r in summary] == [("effnet: real only", 3), ("effnet: curated", 3)]
    accuracies = [j.result["macro_f1"] for j in jobs if j.result["arm"] == "effnet: curated"]
    assert summary[1]["macro_f1"] == pytest.approx(np.mean(accuracies))
    assert summary[1]["macro_f1_sd"] == pytest.approx(np.std(accuracies, ddof=1))


def test_the_uncurated_arm_trains_on_its_twin_with_the_same_teacher():
    curated = version({"df": 30, "vasc": 12})
    twin = version({"df": 30, "vasc": 12}, "all", id="v-uncurated")
    steps = {s.key: s for s in train_chain(load_profile("smoke"), curated, uncurated=twin).steps}
    arms = [k.removesuffix(".efficientnet_b0") for k in steps if k.endswith(".efficientnet_b0")]
    assert arms == ["baseline", "real_kd", "curated", "uncurated"]
    assert steps["uncurated.efficientnet_b0"].params["dataset"] == "v-uncurated"
    for arm in ("baseline", "real_kd", "curated"):
        assert steps[f"{arm}.efficientnet_b0"].params["dataset"] == "v"
    for arm in ("real_kd", "curated", "uncurated"):
        assert steps[f"{arm}.efficientnet_b0"].after_keys == ["teacher"]
    assert steps["uncurated.efficientnet_b0.eval"].params["arm"] == \
        "efficientnet_b0: real + 42 uncurated synthetic + MAE + KD"


def test_the_uncurated_twin_takes_as_many_images_per_class_before_any_review():
    from types import SimpleNamespace

    from engine.pipelines import freeze_uncurated_twin, is_uncurated_twin, uncurated_twin_of

    frozen = []
    client = SimpleNamespace(freeze_dataset=lambda *args, **kwargs: frozen.append((args, kwargs)) or "twin")
    assert freeze_uncurated_twin(client, version({"df": 30, "vasc": 0, "bcc": 5})) == "twin"
    [((name, note), kwargs)] = frozen
    assert name == "v-uncurated" and note.startswith("uncurated twin of v:")
    assert kwargs == {"selection": "all", "targets": {"df": 30, "bcc": 5}}
    assert freeze_uncurated_twin(client, version({})) is None  # nothing to match
    twin = version({"df": 30}, "all", id="twin", note=note)
    assert uncurated_twin_of([version({}, id="other"), twin], version({"df": 30})) is twin
    assert uncurated_twin_of([twin], version({"df": 30}, id="another")) is None
    assert is_uncurated_twin(twin) and not is_uncurated_twin(version({"df": 30}))
    # trained on by itself (dermae train --dataset TWIN), it says what it is
    assert arm_labels(twin)["curated.efficientnet_b0.eval"] == \
        "efficientnet_b0: real + 30 uncurated synthetic + MAE + KD"


def test_a_profile_chooses_its_arms_but_never_drops_the_baseline(tmp_path):
    from engine.profiles import load_profile as load

    base = "[data]\nimage_size = 16\nphantom_size = 10\nsplit_seed = 0\n"
    student = '[[train.students]]\narch = "efficientnet_b0"\nimage_size = 16\n'
    (tmp_path / "two.toml").write_text(base + '[train]\narms = ["baseline", "curated"]\n' + student)
    profile = load("two", tmp_path)
    assert profile.arms == ("baseline", "curated")
    steps = [s.key for s in train_chain(profile, version({"df": 3})).steps if s.kind == "distill"]
    assert steps == ["baseline.efficientnet_b0", "curated.efficientnet_b0"]
    real_only = [s.key for s in train_chain(profile, version({})).steps if s.kind == "distill"]
    assert real_only == ["baseline.efficientnet_b0", "real_kd.efficientnet_b0"]  # its KD arm, named as such
    for bad in ('["curated"]', '["baseline", "mixup"]'):
        (tmp_path / "bad.toml").write_text(base + f"[train]\narms = {bad}\n")
        with pytest.raises(ValueError, match="arms must name some of"):
            load("bad", tmp_path)


def test_a_real_fraction_reaches_every_training_job_of_the_run():
    chain = train_chain(load_profile("smoke"), version({"df": 3}), seeds=2, real_fraction=0.25)
    assert chain.name == "train-smoke-real0.25"
    trained = [s for s in chain.steps if s.kind in ("pretrain_mae", "finetune", "distill")]
    assert trained and all(s.params["real_fraction"] == 0.25 for s in trained)
    full = train_chain(load_profile("smoke"), version({"df": 3}))
    assert full.name == "train-smoke" and not [s for s in full.steps if "real_fraction" in s.params]


def test_with_an_external_batch_every_model_is_evaluated_twice_and_compared_with_its_drop():
    from types import SimpleNamespace

    from engine.pipelines import arm_comparison

    steps = {s.key: s for s in train_chain(load_profile("smoke"), version({"df": 3}), external="imp-1").steps}
    for key in ("teacher", "baseline.efficientnet_b0", "curated.vit_tiny_patch16_224"):
        assert steps[f"{key}.external"].params == {"arm": steps[f"{key}.eval"].params["arm"], "source": "imp-1"}
        assert steps[f"{key}.external"].after_keys == [key]
    assert "teacher.external" not in {s.key for s in train_chain(load_profile("smoke"), version({})).steps}

    def job(job_id, key, f1, external=None):
        return SimpleNamespace(id=job_id, kind="evaluate", pipeline_key=key,
                               result={"arm": "effnet: real only", "arch": "effnet", "macro_f1": f1,
                                       "balanced_accuracy": f1, "external": external})

    [row] = arm_comparison([job(1, "baseline.effnet.eval", 0.6), job(2, "baseline.effnet.external", 0.52, "imp-1")])
    assert row["job_id"] == 1 and row["external"] == "imp-1" and row["external_macro_f1"] == 0.52
    assert row["external_drop"] == pytest.approx(0.08)


def test_a_versions_badge_says_who_chose_its_synthetic_images():
    from engine.pipelines import curation_badge

    reviewed = version({"df": 3}, "reviewed")
    reviewed.policy["accepts_needed"] = 2
    assert curation_badge(reviewed) == "human-reviewed (2 accept(s) and no reject per image)"
    scored = version({"df": 3}, "scores")
    scored.policy["min_intended_prob"] = 0.7
    assert curation_badge(scored) == ("frozen from scores (selector's intended-class probability ≥ 0.7), "
                                      "not human-reviewed")
    assert curation_badge(version({"df": 3}, "all")).startswith("uncurated")
    assert curation_badge(version({}, "scores")) == "real only: no synthetic image"


def test_a_profile_without_distilled_arms_still_exports_its_first_student():
    from dataclasses import replace

    profile = replace(load_profile("smoke"), arms=("baseline",))
    steps = {s.key: s for s in train_chain(profile, version({"df": 3}, "scores")).steps}
    assert [k for k in steps if k.endswith(".export")] == ["baseline.efficientnet_b0.export"]


def test_with_an_external_set_the_export_waits_for_the_external_evaluation_too():
    steps = {s.key: s for s in train_chain(load_profile("smoke"), version({"df": 3}), external="b1").steps}
    assert steps["curated.efficientnet_b0.export"].after_keys == [
        "curated.efficientnet_b0", "curated.efficientnet_b0.eval", "curated.efficientnet_b0.external"]
