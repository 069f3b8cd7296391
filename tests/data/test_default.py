"""Which data `dermae demo` imports on an empty workspace: DERMAE_DATA, else HAM10000 in the shared data folder,
else DermaMNIST there or in medmnist's cache, else phantom lesions."""

import pytest

from engine.data import default
from engine.schemas import ImportFormat
from tests import factories


@pytest.fixture(autouse=True)
def no_configured_data(monkeypatch, tmp_path):
    monkeypatch.delenv("DERMAE_DATA", raising=False)
    monkeypatch.delenv("DERMAE_SHARED_DATA", raising=False)
    monkeypatch.setattr(default, "MEDMNIST_CACHE", tmp_path / "no-cache" / "dermamnist.npz")


def shared_folder(tmp_path, ham: bool = True, dermamnist: bool = True):
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    if ham:
        factories.ham_tree(shared / "ham10000-200", n_per_class=1)
    if dermamnist:
        (shared / "dermamnist.npz").write_bytes(b"npz")
    return shared


def test_ham10000_in_the_shared_folder_comes_before_dermamnist(tmp_path):
    shared = shared_folder(tmp_path)
    source = default.default_source(shared=shared)
    assert (source.format, source.path) == (ImportFormat.ham10000, str(shared / "ham10000-200"))
    assert source.profile == "cpu64" and "lesion-aware" in source.description


def test_without_ham10000_dermamnist_is_next_with_its_32px_profile(tmp_path):
    shared = shared_folder(tmp_path, ham=False)
    source = default.default_source(shared=shared)
    assert (source.format, source.path) == (ImportFormat.medmnist, str(shared / "dermamnist.npz"))
    assert source.profile == "tiny" and "per-image" in source.description


def test_medmnist_cache_is_the_last_real_source(monkeypatch, tmp_path):
    cache = tmp_path / "cache" / "dermamnist.npz"
    cache.parent.mkdir()
    cache.write_bytes(b"npz")
    monkeypatch.setattr(default, "MEDMNIST_CACHE", cache)
    source = default.default_source(shared=tmp_path / "empty")
    assert (source.format, source.path) == (ImportFormat.medmnist, str(cache))
    assert "medmnist's cache" in source.description


def test_without_real_data_the_phantom_set_says_it_is_not_clinical(tmp_path):
    source = default.default_source(shared=tmp_path / "absent")
    assert source.format == ImportFormat.phantom and source.path is None
    assert "NOT CLINICAL" in source.description


def test_dermae_data_comes_first_and_names_either_kind_of_source(monkeypatch, tmp_path):
    shared = shared_folder(tmp_path)
    npz = tmp_path / "mine.npz"
    npz.write_bytes(b"npz")
    monkeypatch.setenv("DERMAE_DATA", str(npz))
    assert default.default_source(shared=shared).format == ImportFormat.medmnist
    ham = factories.ham_tree(tmp_path / "my-ham", n_per_class=1)
    monkeypatch.setenv("DERMAE_DATA", str(ham))
    source = default.default_source(shared=tmp_path / "absent")
    assert (source.format, source.path) == (ImportFormat.ham10000, str(ham.resolve()))


def test_dermae_data_that_is_missing_or_not_a_dataset_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("DERMAE_DATA", str(tmp_path / "missing.npz"))
    with pytest.raises(FileNotFoundError, match="DERMAE_DATA"):
        default.default_source()
    monkeypatch.setenv("DERMAE_DATA", str(tmp_path))  # a folder with no HAM10000_metadata.csv
    with pytest.raises(ValueError, match="neither a HAM10000 folder"):
        default.default_source()


def test_dermae_data_phantom_asks_for_the_offline_set_even_with_real_data_at_hand(monkeypatch, tmp_path):
    monkeypatch.setenv("DERMAE_DATA", "phantom")
    assert default.default_source(shared=shared_folder(tmp_path)).format == ImportFormat.phantom


def test_dermae_shared_data_moves_the_shared_folder(monkeypatch, tmp_path):
    shared = shared_folder(tmp_path, dermamnist=False)
    monkeypatch.setenv("DERMAE_SHARED_DATA", str(shared))
    assert default.default_source().path == str(shared / "ham10000-200")
