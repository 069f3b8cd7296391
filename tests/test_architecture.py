"""The ownership rules of ARCHITECTURE.md and the README's dependency picture, checked on the source: the arrows
that must never exist. Imports inside functions count too — a lazy import is still a dependency."""

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A module may import modules of its own layer and of the layers below, never above (README,
# "Layout"): the vocabulary, then the API's contract, then data and the client, then what builds on data, then the
# jobs machinery, then the recipes, and on top what starts processes or serves.
LAYERS: list[set[str]] = [
    {"engine", "engine.settings", "engine.files", "engine.labels"},
    {"engine.schemas", "engine.metrics"},
    {"engine.client", "engine.data"},
    {"engine.store", "engine.models", "engine.profiles", "engine.pipelines"},
    {"engine.jobs"},
    {"engine.recipes"},
    {"engine.worker", "engine.api", "engine.backup", "engine.launcher", "engine.cli"},
]
# What the front ends may reach, directly or through anything they import: the engine's lower layers, and the
# engine itself over HTTP (engine.client). The demo also runs its model in-process.
FRONT_ENDS: dict[str, set[str]] = {
    "studio": {"engine.store", "engine.api", "engine.jobs", "engine.recipes", "engine.worker", "engine.backup",
               "engine.cli", "engine.models"},
    "studio.demo": {"engine.store", "engine.api", "engine.jobs", "engine.recipes", "engine.worker", "engine.backup",
                    "engine.cli"},
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from engine import metrics`
    return names


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    """{module: the engine and studio modules it imports}, for every module of both packages."""
    modules = {module_name(p): p for p in files("engine") + files("studio")}
    return {name: {m for m in imported_modules(path) if m in modules} for name, path in modules.items()}


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_of(module: str) -> int | None:
    """The layer of the longest package in LAYERS that holds `module` (None outside the engine)."""
    found = [(len(p), i) for i, layer in enumerate(LAYERS) for p in layer if within(module, p)]
    return max(found)[1] if found else None


def upward_imports(graph: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """(importer, imported) for each import of a module in a higher layer than the importer's."""
    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if layer_of(a) is not None and layer_of(b) is not None and layer_of(b) > layer_of(a))


def reachable(graph: Mapping[str, Iterable[str]], start: str) -> dict[str, str]:
    """{module: the module it was first imported from} for everything `start` reaches."""
    seen, todo = {}, [start]
    while todo:
        current = todo.pop()
        for nxt in graph.get(current, ()):
            if nxt not in seen and nxt != start:
                seen[nxt] = current
                todo.append(nxt)
    return seen


def front_end_breaches(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """'studio.x reaches engine.recipes.y through engine.z' for each front-end module that reaches a package it
    must not, however many modules lie between."""
    breaches = []
    for module in graph:
        front = max((f for f in FRONT_ENDS if within(module, f)), key=len, default=None)
        if front is None:
            continue
        for target, via in reachable(graph, module).items():
            if any(within(target, banned) for banned in FRONT_ENDS[front]):
                breaches.append(f"{module} reaches {target} through {via}")
    return sorted(breaches)


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(module_graph()) == []


def test_the_front_ends_reach_the_engine_only_through_its_lower_layers_and_http():
    assert front_end_breaches(module_graph()) == []


def test_every_engine_module_has_a_layer():
    assert [m for m in module_graph() if m.startswith("engine") and layer_of(m) is None] == []


def test_the_checks_catch_an_upward_import_and_a_path_through_another_module():
    """A synthetic graph: data importing the store is upward; a studio page that imports pipelines, which
    imports a recipe, reaches the recipes without naming them."""
    graph = {"engine.data.images": {"engine.store.db"}, "engine.store.db": {"engine.data.images"},
             "studio.pages.jobs": {"engine.pipelines"}, "engine.pipelines": {"engine.recipes.registry"},
             "engine.recipes.registry": set()}
    assert upward_imports(graph) == [("engine.data.images", "engine.store.db"),
                                     ("engine.pipelines", "engine.recipes.registry")]
    assert front_end_breaches(graph) == [
        "studio.pages.jobs reaches engine.recipes.registry through engine.pipelines"]
    assert upward_imports({"engine.store.db": {"engine.data.images"}}) == []  # downward is fine


# -- third-party owners -------------------------------------------------------------------------------------------
def uses(path: Path, banned: str) -> bool:
    return any(within(m, banned) for m in imported_modules(path))


@pytest.mark.parametrize(("banned", "owner"), [("duckdb", "engine/store"), ("fastapi", "engine/api")])
def test_only_the_owner_imports_it(banned, owner):
    offenders = [p.relative_to(ROOT) for p in files("engine") + files("studio")
                 if uses(p, banned) and not p.is_relative_to(ROOT / owner)]
    assert offenders == [], f"only {owner}/ may import {banned}"


def test_the_studio_talks_http_only():
    for banned in ("duckdb", "fastapi"):
        assert [p.relative_to(ROOT) for p in files("studio") if uses(p, banned)] == []


def test_the_engine_imports_no_front_end():
    for banned in ("streamlit", "gradio"):
        assert [p for p in files("engine") if uses(p, banned)] == []
