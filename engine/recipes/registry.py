"""The job kinds the engine knows. A new kind adds its module to `_MODULES`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from engine.profiles import CONFIG_DIR, Profile, load_profile
from engine.recipes import (
    distill,
    evaluate,
    export,
    finetune,
    finetune_sd,
    generate,
    pretrain_mae,
    score,
    selftest,
    train_judge,
    train_ldm,
    train_reference,
    train_vae,
)


@dataclass(frozen=True)
class JobKind:
    name: str
    params: type[BaseModel]
    run: Callable[[Any, Any], Any]
    description: str
    then: str | None = None  # a kind the engine queues after each job of this kind (generate -> score)


_MODULES = [selftest, train_reference, train_judge, train_vae, train_ldm, finetune_sd, generate, score, pretrain_mae,
            finetune, distill, evaluate, export]
KINDS: dict[str, JobKind] = {
    m.KIND: JobKind(m.KIND, m.Params, m.run, (m.__doc__ or "").strip().splitlines()[0], getattr(m, "THEN", None))
    for m in _MODULES
}


class UnknownKind(LookupError):
    pass


def get_kind(name: str) -> JobKind:
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"unknown job kind {name!r}; known kinds: {', '.join(sorted(KINDS))}") from None


def check_params(kind: str, params: dict[str, Any]) -> None:
    """Raise ValueError, naming what is wrong, unless `params` are valid parameters of job kind `kind`."""
    try:
        get_kind(kind).params.model_validate(params)
    except (UnknownKind, ValidationError) as e:
        raise ValueError(str(e)) from None


def checked_profile(name: str, config_dir: Path = CONFIG_DIR) -> Profile:
    """A profile with every job section validated against its kind's parameters, and every [resources.KIND] naming
    a kind: what the CLI loads."""
    profile = load_profile(name, config_dir, check_params)
    unknown = sorted(set(profile.resources) - set(KINDS) - {"default"})
    if unknown:
        raise ValueError(f"{config_dir / name}.toml: [resources.{unknown[0]}]: unknown job kind; known kinds: "
                         f"{', '.join(sorted(KINDS))} (or default)")
    return profile
