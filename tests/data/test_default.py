"""Which data `dermae demo` imports on an empty workspace."""

import pytest

from engine.data import default
from engine.schemas import ImportFormat


@pytest.fixture(autouse=True)
def no_configured_data(monkeypatch, tmp_path):
    monkeypatch.delenv("DERMAE_DATA", raising=False)
    monkeypatch.setattr(default, "MEDMNIST_CACHE", tmp_path / "no-cache" / "dermamnist.npz")


def test_dermae_data_comes_first_and_a_wrong_path_is_a_clear_error(monkeypatch, tmp_path):
    chosen = tmp_path / "mine.npz"
    chosen.write_bytes(b"npz")
    monkeypatch.setenv("DERMAE_DATA", str(chosen))
    source = default.default_source(shared=tmp_path / "shared.npz")
    assert (source.format, source.path) == (ImportFormat.medmnist, str(chosen))
    monkeypatch.setenv("DERMAE_DATA", str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match="DERMAE_DATA"):
        default.default_source()


def test_the_shared_data_folder_beside_the_checkout_is_found(tmp_path):
    shared = tmp_path / "shared" / "data" / "dermamnist.npz"
    shared.parent.mkdir(parents=True)
    shared.write_bytes(b"npz")
    source = default.default_source(shared=shared)
    assert (source.format, source.path) == (ImportFormat.medmnist, str(shared))


def test_without_dermamnist_the_phantom_set_says_it_is_not_clinical(tmp_path):
    source = default.default_source(shared=tmp_path / "absent.npz")
    assert source.format == ImportFormat.phantom and source.path is None
    assert "NOT CLINICAL" in source.description


def test_dermae_data_phantom_asks_for_the_offline_set_even_with_dermamnist_at_hand(monkeypatch, tmp_path):
    shared = tmp_path / "dermamnist.npz"
    shared.write_bytes(b"npz")
    monkeypatch.setenv("DERMAE_DATA", "phantom")
    assert default.default_source(shared=shared).format == ImportFormat.phantom
