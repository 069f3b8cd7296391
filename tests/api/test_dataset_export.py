"""A frozen version exported through the API unpacks into the layout torchvision's ImageFolder reads, with the
manifest saying where every image came from."""

import csv
import hashlib

import pytest
from torchvision.datasets import ImageFolder

from engine.client import ApiError
from engine.labels import CLASSES
from tests.processes import review_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = review_server(tmp_path_factory.mktemp("export") / "ws", {"ann": "reviewer"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def version(server):
    ann = server.signed_in("ann")
    ann.decide(server.ids["df"][:5], "accept")
    ann.decide(server.ids["vasc"][:2], "accept")
    ann.decide(server.ids["vasc"][2:3], "reject", reasons=["artifact"])
    return server.client().freeze_dataset("export-me", "two classes reviewed")


def test_an_exported_version_is_an_imagefolder_tree_with_its_manifests(server, version, tmp_path):
    root = server.client().export_dataset(version.id, tmp_path / "out")
    assert root == tmp_path / "out" / version.id
    for split in ("train", "val", "test"):
        expected = {c: sum(version.counts[s].get(split, {}).get(c, 0) for s in version.counts) for c in CLASSES}
        folder = ImageFolder(str(root / split))
        assert folder.classes == sorted(c for c, n in expected.items() if n)  # alphabetical = our class order
        found = {c: 0 for c in CLASSES}
        for _, index in folder.samples:
            found[folder.classes[index]] += 1
        assert found == expected
    assert version.counts["synthetic"]["train"]["df"] == 5 and version.counts["synthetic"]["train"]["vasc"] == 2

    with open(root / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == version.n_images
    synthetic = [r for r in rows if r["source"] == "synthetic"]
    assert {r["id"] for r in synthetic} == set(server.ids["df"][:5] + server.ids["vasc"][:2])
    assert all((root / r["file"]).is_file() and r["file"].startswith(f"{r['split']}/{r['label']}/") for r in rows)
    assert all(r["generation_job"] for r in synthetic)
    # the version's own Parquet manifest, byte for byte: its recorded hash still holds
    assert hashlib.sha256((root / "manifest.parquet").read_bytes()).hexdigest() == version.manifest_sha256


def test_export_is_built_once_and_refuses_a_non_empty_folder(server, version, tmp_path):
    client = server.client()
    assert client.dataset_zip(version.id) == client.dataset_zip(version.id)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        client.export_dataset(version.id, tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("version_id", ["nope", "..%2F..%2Fdermae.duckdb", "%2E%2E"])
def test_an_unknown_or_hostile_version_id_is_a_404(server, version_id):
    with pytest.raises(ApiError) as refused:
        server.client().dataset_zip(version_id)
    assert refused.value.status_code == 404
