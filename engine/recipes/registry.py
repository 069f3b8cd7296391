"""The job kinds the engine knows. A new kind adds its module to `_MODULES`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from engine.recipes import selftest


@dataclass(frozen=True)
class JobKind:
    name: str
    params: type[BaseModel]
    run: Callable[[Any, Any], Any]
    description: str


_MODULES = [selftest]
KINDS: dict[str, JobKind] = {
    m.KIND: JobKind(m.KIND, m.Params, m.run, (m.__doc__ or "").strip().splitlines()[0]) for m in _MODULES
}


class UnknownKind(LookupError):
    pass


def get_kind(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"unknown job kind {name!r}; known kinds: {', '.join(sorted(KINDS))}") from None
