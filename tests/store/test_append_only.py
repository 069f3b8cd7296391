"""Review decisions, the acceptance policy and Turing answers are append-only at the store level: no code path
updates or deletes them. DuckDB has no triggers or grants to enforce it, so this test reads every SQL statement
the product can run (only engine/store touches the database: tests/test_architecture.py) and refuses any that
could change or remove a row of those tables; the API side is tests/api/test_audit_integrity.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
APPEND_ONLY = ("reviews", "review_requests", "review_policy", "turing_answers")
CHANGES = (r"(UPDATE|DELETE\s+FROM|TRUNCATE(\s+TABLE)?|DROP\s+TABLE(\s+IF\s+EXISTS)?|ALTER\s+TABLE"
           r"|INSERT\s+OR\s+REPLACE\s+INTO)")
# A migration may add a nullable column (existing rows read NULL, nothing in them changes); any other ALTER —
# dropping, retyping or defaulting a column — could rewrite what was recorded.
HARMLESS = r"(?!\s+ADD\s+COLUMN\s+\w+\s+\w+\s*;)"


def statements_changing(table: str, source: str) -> list[str]:
    pattern = re.compile(rf"\b{CHANGES}\s+{table}\b{HARMLESS}", re.IGNORECASE)
    upserts = re.compile(rf"INSERT\s+INTO\s+{table}\b[^;]*?ON\s+CONFLICT[^;]*?DO\s+UPDATE", re.IGNORECASE | re.DOTALL)
    return [m.group(0) for m in pattern.finditer(source)] + [m.group(0)[:60] for m in upserts.finditer(source)]


def product_sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text() for folder in ("engine", "studio")
            for p in (REPO / folder).rglob("*.py")}


@pytest.mark.parametrize("table", APPEND_ONLY)
def test_no_code_changes_or_removes_rows_of(table):
    found = {path: hits for path, source in product_sources().items() if (hits := statements_changing(table, source))}
    assert found == {}


def test_the_check_would_catch_a_change():
    """The scanner itself: each way of changing a row is seen, inserting and reading are not."""
    for sql in ("UPDATE reviews SET decision = 'accept'", "delete from reviews where seq = 1",
                "TRUNCATE reviews", "DROP TABLE IF EXISTS reviews", "ALTER TABLE reviews DROP COLUMN note",
                "INSERT OR REPLACE INTO reviews VALUES (1)",
                "INSERT INTO reviews VALUES (1) ON CONFLICT (seq) DO UPDATE SET note = 'x'"):
        assert statements_changing("reviews", sql), sql
    for sql in ("INSERT INTO reviews BY NAME SELECT * FROM new_reviews", "SELECT * FROM reviews",
                "UPDATE reviews_view_cache SET x = 1"):
        assert not statements_changing("reviews", sql), sql


def test_the_check_catches_alters_that_rewrite_rows_and_lets_a_nullable_new_column_through():
    changing = ["ALTER TABLE reviews DROP COLUMN note;", "ALTER TABLE reviews ALTER COLUMN note TYPE INTEGER;",
                "ALTER TABLE reviews ADD COLUMN weight DOUBLE DEFAULT 1;", "UPDATE reviews SET note = '';"]
    assert all(statements_changing("reviews", sql) for sql in changing)
    assert statements_changing("reviews", "ALTER TABLE reviews ADD COLUMN weight DOUBLE;") == []
