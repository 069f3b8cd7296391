"""Frozen dataset versions: what goes in, immutability, lineage."""

import pytest

from engine.store import Store, UnknownDataset
from tests.factories import image_row as row


def review(store: Store, image: int, reviewer: str, decision: str) -> None:
    with store.db.transaction() as cur:
        cur.execute("INSERT INTO reviews (image_id, reviewer, decision, created_at) VALUES (?, ?, ?, now())",
                    [f"{image:064x}", reviewer, decision])


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "ws" / "dermae.duckdb")
    store.images.add_rows([row(1, "nv", "real", "train"), row(2, "df", "real", "val"), row(3, "df", "real", "test"),
                           *(row(10 + i, "df", "synthetic", None, job=7) for i in range(5)),
                           row(20, "vasc", "synthetic", None, job=8)])
    for i in range(4):
        review(store, 10 + i, "ann", "accept")
    review(store, 13, "bob", "reject")  # accepted by one, rejected by another: not in the set
    review(store, 20, "ann", "accept")
    yield store
    store.close()


def test_a_version_holds_all_real_splits_and_the_accepted_synthetic_images(store):
    version = store.datasets.freeze("first", "a note")
    rows = store.datasets.manifest(version["id"])
    synthetic = [r for r in rows if r["source"] == "synthetic"]
    assert sorted(int(r["id"], 16) for r in synthetic) == [10, 11, 12, 20]
    assert all(r["split"] == "train" for r in synthetic)
    assert version["counts"]["real"]["test"]["df"] == 1 and version["counts"]["synthetic"]["train"]["df"] == 3
    assert version["lineage"]["generation_jobs"] == [7, 8] and version["lineage"]["checkpoints"] == ["ckpt/ldm"]
    assert version["n_images"] == 7 and version["note"] == "a note"


def test_policy_k_accepts_and_per_class_targets(store):
    review(store, 10, "bob", "accept")
    two = store.datasets.freeze("two-readers", None, accepts_needed=2)
    assert [int(r["id"], 16) for r in store.datasets.manifest(two["id"], source="synthetic")] == [10]
    capped = store.datasets.freeze("capped", None, targets={"df": 1})
    synthetic = store.datasets.manifest(capped["id"], source="synthetic")
    assert sorted(r["label"] for r in synthetic) == ["df", "vasc"]


def test_versions_are_immutable_and_checked(store):
    version = store.datasets.freeze("v", None)
    before = store.datasets.manifest(version["id"])
    review(store, 14, "ann", "accept")  # later reviews do not change a frozen version
    assert store.datasets.manifest(version["id"]) == before
    manifest = store.db.path.parent / version["manifest_path"]
    manifest.write_bytes(manifest.read_bytes() + b"x")
    with pytest.raises(RuntimeError, match="altered"):
        store.datasets.manifest(version["id"])
    with pytest.raises(UnknownDataset):
        store.datasets.get("nope")


def score(store: Store, image: int, **values: float) -> None:
    store.images.set_scores(42, [{"image_id": f"{image:064x}", "name": k, "value": v} for k, v in values.items()])


def test_selections_for_the_curation_benchmark(store):
    score(store, 10, intended_prob=0.9, near_copy=0, dup_group=0)
    score(store, 11, intended_prob=0.8, near_copy=0, dup_group=0)   # same duplicate group as 10: dropped
    score(store, 12, intended_prob=0.2, near_copy=0, dup_group=-1)  # not typical of its class: dropped
    score(store, 13, intended_prob=0.95, near_copy=1, dup_group=-1)  # a near-copy of a real image: dropped
    score(store, 14, intended_prob=0.7, near_copy=0, dup_group=-1)
    ids = {}
    for selection in ("scores", "all", "none"):
        version = store.datasets.freeze(selection, None, selection=selection, min_intended_prob=0.5)
        ids[selection] = sorted(int(r["id"], 16) for r in store.datasets.manifest(version["id"], source="synthetic"))
        assert version["policy"]["selection"] == selection
    assert ids == {"scores": [10, 14], "all": [10, 11, 12, 13, 14, 20], "none": []}
    with pytest.raises(ValueError, match="selection must be one of"):
        store.datasets.freeze("x", None, selection="vibes")
    assert not any(p.name.startswith("x-") for p in (store.db.path.parent / "datasets").iterdir())
