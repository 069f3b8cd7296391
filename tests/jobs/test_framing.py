"""Every trained model records how its training images were framed, from the dataset version's real data."""

from types import SimpleNamespace

from PIL import Image

from engine.recipes.fitting import version_framing


def context(tmp_path, formats: list[str], stored_side: int = 28) -> SimpleNamespace:
    (tmp_path / "images" / "ab").mkdir(parents=True)
    Image.new("RGB", (stored_side, stored_side)).save(tmp_path / "images" / "ab" / "x.png")
    version = SimpleNamespace(lineage={"real_data": [{"format": f, "split_kind": "per-image", "images": 5}
                                                     for f in formats]})
    api = SimpleNamespace(dataset=lambda _: version,
                          dataset_manifest=lambda *_, **__: [SimpleNamespace(path="ab/x.png")])
    return SimpleNamespace(api=api, workspace=tmp_path)


def test_dermamnist_models_saw_whole_frames_squashed_through_28_px(tmp_path):
    assert version_framing(context(tmp_path, ["medmnist"]), "v") == {"crop": "whole-frame", "via": 28}


def test_any_other_real_data_is_framed_as_centre_squares(tmp_path):
    assert version_framing(context(tmp_path, ["ham10000"]), "v") == {"crop": "centre-square", "via": None}
    mixed = context(tmp_path / "mixed", ["medmnist", "isic"])
    assert version_framing(mixed, "v") == {"crop": "centre-square", "via": None}
    assert version_framing(context(tmp_path / "old", []), "v")["crop"] == "centre-square"  # versions before lineage
