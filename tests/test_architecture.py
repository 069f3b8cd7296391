"""The ownership rules of ARCHITECTURE.md, checked on the source: the arrows that must never exist."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def uses(path: Path, banned: str) -> bool:
    return any(m == banned or m.startswith(banned + ".") for m in imported_modules(path))


@pytest.mark.parametrize(("banned", "owner"), [("duckdb", "engine/store"), ("fastapi", "engine/api")])
def test_only_the_owner_imports_it(banned, owner):
    offenders = [p.relative_to(ROOT) for p in files("engine") + files("studio")
                 if uses(p, banned) and not p.is_relative_to(ROOT / owner)]
    assert offenders == [], f"only {owner}/ may import {banned}"


def test_the_studio_talks_http_only():
    for banned in ("engine.store", "engine.api", "duckdb", "engine.jobs", "engine.recipes"):
        offenders = [p.relative_to(ROOT) for p in files("studio") if uses(p, banned)]
        assert offenders == [], f"the studio must not import {banned}"


def test_the_engine_imports_no_front_end_and_recipes_no_store():
    for banned in ("streamlit", "gradio"):
        assert [p for p in files("engine") if uses(p, banned)] == []
    assert [p for p in files("engine/recipes") if uses(p, "engine.store") or uses(p, "duckdb")] == []
