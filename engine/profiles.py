"""Profiles (configs/*.toml) as plain typed values: smoke (tests), cpu64 (the default: HAM10000 at 64 px on a CPU),
tiny (DermaMNIST at 32 px on a CPU), paper (GPU)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PROFILES = ("smoke", "cpu64", "tiny", "paper")
DEFAULT_PROFILE = "cpu64"


@dataclass(frozen=True)
class DataProfile:
    image_size: int
    phantom_size: int
    split_seed: int


@dataclass(frozen=True)
class Profile:
    name: str
    data: DataProfile
    jobs: dict[str, dict[str, Any]]  # job kind -> parameters, validated against the kind's Params
    students: list[dict[str, Any]]  # [train.students]: distill parameters per student (arch, image_size …)

    def params(self, kind: str, **overrides: Any) -> dict[str, Any]:
        return {**self.jobs.get(kind, {}), **overrides}


def load_profile(name: str, config_dir: Path = CONFIG_DIR) -> Profile:
    """Read configs/NAME.toml; unknown or missing keys are errors that name the key and the file."""
    path = config_dir / f"{name}.toml"
    if not path.exists():
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)} (no {path})")
    raw = tomllib.loads(path.read_text())
    section = raw.get("data", {})
    expected = {f.name for f in fields(DataProfile)}
    if set(section) != expected:
        raise ValueError(f"{path}: [data] must set exactly {', '.join(sorted(expected))}; "
                         f"missing {sorted(expected - set(section))}, unknown {sorted(set(section) - expected)}")
    from pydantic import ValidationError

    from engine.recipes.registry import UnknownKind, get_kind

    jobs = raw.get("jobs", {})
    for kind, params in jobs.items():
        try:
            get_kind(kind).params.model_validate(params)
        except (UnknownKind, ValidationError) as e:
            raise ValueError(f"{path}: [jobs.{kind}]: {e}") from None
    students = raw.get("train", {}).get("students", [])
    for student in students:
        try:
            get_kind("distill").params.model_validate({**jobs.get("distill", {}), **student})
        except ValidationError as e:
            raise ValueError(f"{path}: [[train.students]] {student.get('arch')}: {e}") from None
    unknown = sorted(set(raw) - {"data", "jobs", "train"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}")
    return Profile(name=name, data=DataProfile(**section), jobs=jobs, students=students)
