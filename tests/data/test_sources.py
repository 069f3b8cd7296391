"""The readers on each layout, and the errors that name the offending rows."""

import numpy as np
import pytest

from engine.data.phantom import PHANTOM_NOTICE, phantom_counts, phantom_records
from engine.data.sources import SourceError, read_folder, read_ham10000, read_isic, read_medmnist
from engine.labels import CLASSES, normalise_label
from tests import factories


def test_ham10000_reads_rows_metadata_and_both_image_parts(tmp_path):
    records = read_ham10000(factories.ham_tree(tmp_path, n_per_class=3))
    assert len(records) == 21
    assert {r.label for r in records} == set(CLASSES)
    first = records[0]
    assert first.lesion_id.startswith("HAM_") and first.split is None
    assert first.metadata == {"dx_type": "histo", "age": "50", "sex": "female", "localization": "back",
                               "dataset": "HAM10000"}
    assert first.read()[:2] == b"\xff\xd8"


def test_ham10000_reads_the_dataverse_tab_file(tmp_path):
    factories.ham_tree(tmp_path, n_per_class=1)
    csv_path = tmp_path / "HAM10000_metadata.csv"
    tab = csv_path.read_text().replace(",", "\t")
    csv_path.unlink()
    (tmp_path / "HAM10000_metadata.tab").write_text(tab)
    assert len(read_ham10000(tmp_path)) == 7


def test_ham10000_missing_columns_are_named(tmp_path):
    factories.ham_tree(tmp_path, n_per_class=1, header="lesion_id,image_id,diagnosis,dx_type,age,sex,localization")
    with pytest.raises(SourceError, match=r"missing column.*dx; found lesion_id, image_id, diagnosis"):
        read_ham10000(tmp_path)


def test_ham10000_every_bad_row_is_named(tmp_path):
    rows = [
        "HAM_1,ISIC_1,nv,histo,50,male,back",
        "HAM_2,ISIC_2,psoriasis,histo,50,male,back",      # unknown dx
        "HAM_3,ISIC_1,mel,histo,50,male,back",            # duplicate image_id
        "HAM_4,../../etc/passwd,mel,histo,50,male,back",  # path traversal
        "HAM_5,ISIC_5,bcc,histo,50,male,back",            # no image file
    ]
    files = {"ISIC_1": factories.image_bytes(1), "ISIC_2": factories.image_bytes(2)}
    factories.ham_tree(tmp_path, rows=rows, files=files)
    with pytest.raises(SourceError) as info:
        read_ham10000(tmp_path)
    text = str(info.value)
    assert "line 3 (ISIC_2): unknown label 'psoriasis'" in text
    assert "image_id 'ISIC_1' appears 2 times (lines 2, 4)" in text
    assert "line 5: image_id '../../etc/passwd' is not a plain file id" in text
    assert "line 6: no image file for image_id 'ISIC_5'" in text
    assert "nothing was imported" in text


def test_isic_one_hot_columns(tmp_path):
    records = read_isic(factories.isic_tree(tmp_path))
    assert len(records) == 14
    assert sorted({r.label for r in records}) == sorted(CLASSES)


def test_isic_rows_without_exactly_one_class_are_named(tmp_path):
    factories.isic_tree(tmp_path, n_per_class=1)
    gt = tmp_path / "ISIC2018_Task3_Training_GroundTruth.csv"
    lines = gt.read_text().splitlines()
    lines[1] = lines[1].split(",")[0] + ",1.0,1.0,0,0,0,0,0"
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(SourceError, match=r"line 2 .*exactly one of MEL, NV.* found 2"):
        read_isic(tmp_path)


def test_isic_uses_lesion_groupings_when_present(tmp_path):
    factories.isic_tree(tmp_path, n_per_class=1)
    (tmp_path / "ISIC2018_Task3_Training_LesionGroupings.csv").write_text(
        "image,lesion_id\nISIC_9000000,HAM_0000001\n")
    by_name = {r.name: r.lesion_id for r in read_isic(tmp_path)}
    assert by_name["ISIC_9000000"] == "HAM_0000001" and by_name["ISIC_9010000"] is None


def test_folder_per_class_with_and_without_splits(tmp_path):
    flat = read_folder(factories.class_folders(tmp_path / "flat"))
    assert len(flat) == 14 and all(r.split is None for r in flat)
    nested = read_folder(factories.class_folders(tmp_path / "nested", splits=True))
    assert {r.split for r in nested} == {"train", "val"} and len(nested) == 28


def test_folder_with_an_unknown_class_folder(tmp_path):
    factories.class_folders(tmp_path)
    (tmp_path / "psoriasis").mkdir()
    with pytest.raises(SourceError, match="folder psoriasis: unknown label"):
        read_folder(tmp_path)


def test_folder_refuses_links_out_of_the_tree(tmp_path):
    factories.class_folders(tmp_path / "data")
    secret = tmp_path / "outside.png"
    secret.write_bytes(factories.image_bytes(9, "PNG"))
    (tmp_path / "data" / "nv" / "link.png").symlink_to(secret)
    with pytest.raises(SourceError, match=r"nv/link.png: a link that points outside"):
        read_folder(tmp_path / "data")


def test_medmnist_keeps_official_splits(tmp_path):
    records = read_medmnist(factories.medmnist_npz(tmp_path / "dermamnist.npz"))
    assert [sum(r.split == s for r in records) for s in ("train", "val", "test")] == [14, 7, 7]
    assert records[3].label == CLASSES[3] and records[3].name == "train[3]"


def test_medmnist_bad_archives(tmp_path):
    np.savez(tmp_path / "x.npz", train_images=np.zeros((1, 28, 28, 3), np.uint8))
    with pytest.raises(SourceError, match=r"missing array.*train_labels"):
        read_medmnist(tmp_path / "x.npz")
    path = factories.medmnist_npz(tmp_path / "y.npz")
    arrays = dict(np.load(path))
    arrays["val_labels"][2] = 9
    np.savez(path, **arrays)
    with pytest.raises(SourceError, match=r"val\[2\]: label 9 is not a class index"):
        read_medmnist(path)
    (tmp_path / "z.npz").write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="cannot read"):
        read_medmnist(tmp_path / "z.npz")


def test_label_spellings():
    assert normalise_label(" Melanoma ") == "mel"
    assert normalise_label("NV") == "nv"
    assert normalise_label("Vascular_lesions") == "vasc"


def test_phantom_set_is_deterministic_imbalanced_and_marked():
    a, b = phantom_records(300, seed=3), phantom_records(300, seed=3)
    assert [r.read() for r in a[:20]] == [r.read() for r in b[:20]]
    counts = phantom_counts(1000)
    assert counts["nv"] > 10 * counts["df"] and min(counts.values()) >= 6
    assert all(r.metadata["notice"] == PHANTOM_NOTICE for r in a)
    assert len({r.lesion_id for r in a}) < len(a)  # some lesions have two views
