"""Imports through the real server: every bad input is a clear 4xx that names the problem and writes nothing."""

from pathlib import Path

import pytest

from engine.client import ApiError
from tests import factories


def snapshot(server) -> tuple:
    """What an import could have written: rows, batches, image and thumbnail files."""
    ws = server.settings.workspace
    files = sorted(p.relative_to(ws).as_posix() for d in ("images", "thumbs") for p in (ws / d).rglob("*")
                   if p.is_file())
    with server.client() as client:
        return client.stats().model_dump(), len(client.imports()), files


def ham_with(tmp_path: Path, bad_name: str, bad_bytes: bytes) -> Path:
    root = factories.ham_tree(tmp_path / "ham", n_per_class=2)
    image = next((root / "HAM10000_images_part_2").glob("*.jpg"))
    (image.parent / f"{bad_name}.jpg").write_bytes(bad_bytes)
    metadata = root / "HAM10000_metadata.csv"
    metadata.write_text(metadata.read_text() + f"HAM_9,{bad_name},nv,histo,40,male,back\n")
    return root


BAD_IMAGES = {
    "corrupt JPEG": ("ISIC_corrupt", factories.corrupt_jpeg(), "corrupt or truncated"),
    "truncated PNG": ("ISIC_truncated", factories.truncated_png(), "corrupt or truncated"),
    "20000x20000 image": ("ISIC_huge", factories.huge_png(), "too large"),
    "text named .jpg": ("ISIC_text", factories.text_as_jpg(), "not an image"),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_a_batch_with_one_bad_image_fails_whole_naming_the_file(shared_server, tmp_path, case):
    name, data, reason = BAD_IMAGES[case]
    before = snapshot(shared_server)
    with shared_server.client() as client, pytest.raises(ApiError) as info:
        client.import_data("ham10000", str(ham_with(tmp_path, name, data)))
    assert info.value.status_code == 422
    assert "nothing was imported" in info.value.detail
    assert any(p.startswith(f"{name}: ") and reason in p for p in info.value.problems), info.value.problems
    assert snapshot(shared_server) == before


@pytest.mark.parametrize(("header", "rows", "problem"), [
    ("lesion_id,image_id,diagnosis", ["HAM_1,ISIC_00000000,nv"], "missing column(s) dx"),
    (factories.HAM_HEADER, ["HAM_1,ISIC_00000000,eczema,histo,1,male,back"], "line 2 (ISIC_00000000): unknown label"),
    (factories.HAM_HEADER, ["HAM_1,ISIC_00000000,nv,h,1,m,b", "HAM_2,ISIC_00000000,nv,h,1,m,b"], "appears 2 times"),
    (factories.HAM_HEADER, ["HAM_1,../ISIC_00000000,nv,h,1,m,b"], "not a plain file id"),
])
def test_bad_metadata_is_refused_and_nothing_written(shared_server, tmp_path, header, rows, problem):
    root = factories.ham_tree(tmp_path, rows=rows, header=header,
                              files={"ISIC_00000000": factories.image_bytes(0)})
    before = snapshot(shared_server)
    with shared_server.client() as client, pytest.raises(ApiError) as info:
        client.import_data("ham10000", str(root))
    assert info.value.status_code == 422
    assert problem in str(info.value)
    assert snapshot(shared_server) == before


def test_a_path_that_does_not_exist_is_a_404(shared_server, tmp_path):
    with shared_server.client() as client, pytest.raises(ApiError, match="does not exist") as info:
        client.import_data("folder", str(tmp_path / "nope"))
    assert info.value.status_code == 404


def test_unknown_format_and_missing_path_are_422(shared_server):
    with shared_server.client() as client:
        for body in ({"format": "dicom", "path": "/tmp"}, {"format": "folder"}):
            with pytest.raises(ApiError) as info:
                client._request("POST", "/imports", json=body)
            assert info.value.status_code == 422


def test_each_layout_imports_and_a_second_import_adds_nothing(server, tmp_path):
    client = server.client()
    results = [
        client.import_data("ham10000", str(factories.ham_tree(tmp_path / "ham", n_per_class=4))),
        client.import_data("isic", str(factories.isic_tree(tmp_path / "isic"))),
        client.import_data("folder", str(factories.class_folders(tmp_path / "folders", splits=True))),
        client.import_data("medmnist", str(factories.medmnist_npz(tmp_path / "d.npz"))),
    ]
    assert [r.n_added for r in results] == [28, 14, 28, 28]
    total = sum(sum(c.values()) for c in client.stats().real.values())
    assert total == 98
    again = client.import_data("ham10000", str(tmp_path / "ham"))
    assert again.n_added == 0 and again.n_records == 28
    assert sum(sum(c.values()) for c in client.stats().real.values()) == total
    assert len(client.imports()) == 5


def test_files_and_thumbnails_are_served_byte_exact(server, tmp_path):
    root = factories.ham_tree(tmp_path / "ham", n_per_class=1)
    client = server.client()
    client.import_data("ham10000", str(root))
    page = client.images(label="df")
    assert page.total == 1
    info = page.items[0]
    original = next(root.rglob(f"{info.original_name}.jpg")).read_bytes()
    assert client.image_bytes(info.id) == original
    assert client.image_bytes(info.id, thumbnail=True)[:4] == b"\x89PNG"
    assert info.metadata["dx_type"] == "histo" and info.lesion_id
    with pytest.raises(ApiError) as missing:
        client.image("f" * 64)
    assert missing.value.status_code == 404
    with pytest.raises(ApiError) as traversal:
        client._request("GET", "/images/..%2F..%2Fapi_token/file")
    assert traversal.value.status_code in (404, 422)


def test_phantom_import_is_marked_as_such(server):
    client = server.client()
    result = client.import_data("phantom", phantom_size=140)
    assert result.phantom and result.n_added == result.n_records
    assert client.stats().phantom
    item = client.images(limit=1).items[0]
    assert item.metadata["notice"] == "phantom, not clinical data"


def ham_missing_two(tmp_path: Path) -> Path:
    """A HAM10000 folder whose metadata names two images the folder lacks (lines 16 and 17)."""
    root = factories.ham_tree(tmp_path / "ham", n_per_class=2)
    metadata = root / "HAM10000_metadata.csv"
    metadata.write_text(metadata.read_text() + "HAM_98,ISIC_gone1,nv,histo,40,male,back\n"
                                                "HAM_99,ISIC_gone2,df,histo,40,male,back\n")
    return root


MISSING_ROWS = ["line 16: no image file for image_id 'ISIC_gone1'", "line 17: no image file for image_id 'ISIC_gone2'"]


def test_a_missing_image_file_fails_the_import_naming_the_rows(shared_server, tmp_path):
    before = snapshot(shared_server)
    with shared_server.client() as client, pytest.raises(ApiError) as info:
        client.import_data("ham10000", str(ham_missing_two(tmp_path)))
    assert info.value.status_code == 422
    assert info.value.problems == MISSING_ROWS
    assert "nothing was imported" in info.value.detail and "--skip-missing" in info.value.detail
    assert snapshot(shared_server) == before


def test_skip_missing_imports_the_rest_and_lists_the_skipped_rows(server, tmp_path):
    client = server.client()
    result = client.import_data("ham10000", str(ham_missing_two(tmp_path)), skip_missing=True)
    assert result.n_records == result.n_added == 14
    assert result.skipped == MISSING_ROWS
    assert result.split_kind == "lesion-aware"
    batch = client.imports()[0]
    assert (batch.id, batch.skipped, batch.split_kind) == (result.batch_id, MISSING_ROWS, "lesion-aware")


def test_skip_missing_does_not_excuse_other_problems(shared_server, tmp_path):
    root = ham_missing_two(tmp_path)
    metadata = root / "HAM10000_metadata.csv"
    metadata.write_text(metadata.read_text().replace("ISIC_0100000,bcc", "ISIC_0100000,eczema"))
    before = snapshot(shared_server)
    with shared_server.client() as client, pytest.raises(ApiError) as info:
        client.import_data("ham10000", str(root), skip_missing=True)
    assert any("unknown label 'eczema'" in p for p in info.value.problems)
    assert all(row in info.value.problems for row in MISSING_ROWS)  # every problem named, the missing files too
    assert snapshot(shared_server) == before


def test_images_of_other_sizes_import_as_they_are(server, tmp_path):
    sizes = {"ISIC_wide": (200, 150), "ISIC_full": (600, 450), "ISIC_tall": (150, 200)}
    root = factories.ham_tree(tmp_path / "ham", rows=[f"HAM_{i},{name},nv,histo,40,male,back"
                                                      for i, name in enumerate(sizes)],
                              files={name: factories.image_bytes(i, size=size)
                                     for i, (name, size) in enumerate(sizes.items())})
    client = server.client()
    assert client.import_data("ham10000", str(root)).n_added == 3
    stored = {i.original_name: (i.width, i.height) for i in client.images(limit=10).items}
    assert stored == sizes  # real images are never resized: only training arrays are


def test_split_kinds_are_recorded_per_import(server, tmp_path):
    client = server.client()
    kinds = [client.import_data("medmnist", str(factories.medmnist_npz(tmp_path / "d.npz"))).split_kind,
             client.import_data("isic", str(factories.isic_tree(tmp_path / "isic"))).split_kind,
             client.import_data("folder", str(factories.class_folders(tmp_path / "f", splits=True))).split_kind]
    assert kinds == ["per-image", "per-image", "given"]  # DermaMNIST's own split; ISIC without lesion ids; folders
