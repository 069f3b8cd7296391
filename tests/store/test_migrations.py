import subprocess
import sys
from datetime import datetime

import pytest

from engine.store import LATEST_VERSION, Store, StoreLocked
from engine.store.migrations import MIGRATIONS


def test_versions_are_consecutive():
    assert [v for v, _, _ in MIGRATIONS] == list(range(1, LATEST_VERSION + 1))


def test_a_fresh_database_comes_up_at_the_latest_version(tmp_path):
    store = Store(tmp_path / "db.duckdb")
    assert store.schema_version == LATEST_VERSION
    assert store.images.stats()["real"]["train"]["nv"] == 0
    store.close()


def test_an_old_database_is_upgraded_and_keeps_its_rows(tmp_path):
    path = tmp_path / "db.duckdb"
    old = Store(path, migrate_to=1)
    assert old.schema_version == 1
    with old.db.transaction() as cur:  # a batch as version 1 wrote it
        cur.execute("INSERT INTO import_batches VALUES ('b1', 'folder', 'x', ?, 1, 1, FALSE)", [datetime(2026, 1, 1)])
    old.images.add_rows([{
        "id": "a" * 64, "content_id": "a" * 64, "path": "aa/a.png", "thumb_path": "aa/a.png", "label": "df",
        "source": "real", "split": "train", "lesion_id": None, "width": 28, "height": 28, "format": "PNG",
        "size_bytes": 10, "import_batch": "b1", "original_name": "a.png", "metadata": "{}",
        "duplicate_of": None, "created_at": datetime(2026, 1, 1),
    }])
    old.close()

    upgraded = Store(path)
    assert upgraded.schema_version == LATEST_VERSION
    assert upgraded.images.stats()["real"]["train"]["df"] == 1
    assert upgraded.images.get("a" * 64)["label"] == "df"
    [batch] = upgraded.images.batches()
    assert (batch["id"], batch["split_kind"], batch["skipped"]) == ("b1", None, [])  # not recorded back then
    upgraded.close()
    again = Store(path)  # reopening applies nothing twice
    assert again.schema_version == LATEST_VERSION
    again.close()


def test_a_failed_batch_leaves_nothing(tmp_path):
    store = Store(tmp_path / "db.duckdb")
    bad_row = {"id": "b" * 64, "content_id": "b" * 64, "path": "p", "thumb_path": "p", "label": "eczema",
               "source": "real", "split": "train", "lesion_id": None, "width": 1, "height": 1, "format": "PNG",
               "size_bytes": 1, "import_batch": "b2", "original_name": "x", "metadata": "{}",
               "duplicate_of": None, "created_at": datetime(2026, 1, 1)}
    with pytest.raises(Exception, match="CHECK constraint"):
        store.images.add_batch(batch_id="b2", format="folder", source="x", n_records=1, rows=[bad_row],
                               phantom=False)
    assert store.images.batches() == []
    store.close()


def test_a_second_process_is_refused_with_advice(tmp_path):
    path = tmp_path / "db.duckdb"
    store = Store(path)
    code = f"from engine.store import Store; Store(__import__('pathlib').Path({str(path)!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert StoreLocked.__name__ in result.stderr and "Only the engine server opens the database" in result.stderr
    store.close()
