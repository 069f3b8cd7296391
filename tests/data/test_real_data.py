"""Importers on the real data in ../shared/data (skipped where it is absent)."""

from collections import defaultdict

import pytest

from tests.conftest import DERMAMNIST, HAM_SAMPLE, needs

pytestmark = pytest.mark.data

OFFICIAL = {
    "train": {"akiec": 228, "bcc": 359, "bkl": 769, "df": 80, "mel": 779, "nv": 4693, "vasc": 99},
    "val": {"akiec": 33, "bcc": 52, "bkl": 110, "df": 12, "mel": 111, "nv": 671, "vasc": 14},
    "test": {"akiec": 66, "bcc": 103, "bkl": 220, "df": 23, "mel": 223, "nv": 1341, "vasc": 29},
}


@needs(HAM_SAMPLE)
def test_ham10000_sample(server):
    client = server.client()
    result = client.import_data("ham10000", str(HAM_SAMPLE))
    assert result.n_added == 70
    per_class = defaultdict(int)
    for counts in client.stats().real.values():
        for cls, n in counts.items():
            per_class[cls] += n
    assert set(per_class.values()) == {10}
    splits_of = defaultdict(set)
    page = client.images(limit=1000)
    for item in page.items:
        splits_of[item.lesion_id].add(item.split)
        assert item.metadata["localization"] and item.metadata["dx_type"]
    assert page.total == 70 and all(len(s) == 1 for s in splits_of.values())


@needs(DERMAMNIST)
@pytest.mark.slow
def test_dermamnist_keeps_official_splits_and_reimport_adds_nothing(server):
    client = server.client()
    first = client.import_data("medmnist", str(DERMAMNIST))
    assert first.n_added == 10015
    assert client.stats().real == OFFICIAL
    # DermaMNIST holds two exact duplicate pairs; they stay separate rows so the official counts hold.
    assert sum(1 for i in client.images(limit=1000, split="val").items if i.duplicate_of) <= 1
    again = client.import_data("medmnist", str(DERMAMNIST))
    assert again.n_added == 0
    assert client.stats().real == OFFICIAL
