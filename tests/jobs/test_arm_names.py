"""An arm is named after what it trained on (issue 22): a version without synthetic images has no "curated
synthetic" arm, and a curated arm says how it was curated."""

from datetime import datetime

import pytest

from engine.pipelines import train_chain
from engine.profiles import load_profile
from engine.schemas import DatasetVersion


def version(synthetic: dict[str, int], selection: str = "reviews") -> DatasetVersion:
    return DatasetVersion(id="v", name="v", note=None, created_at=datetime(2026, 1, 1), policy={"selection": selection},
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
