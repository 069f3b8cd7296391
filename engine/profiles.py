"""Profiles (configs/*.toml) as plain typed values: smoke (tests), tiny (CPU), paper (GPU)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PROFILES = ("smoke", "tiny", "paper")


@dataclass(frozen=True)
class DataProfile:
    image_size: int
    phantom_size: int
    split_seed: int


@dataclass(frozen=True)
class Profile:
    name: str
    data: DataProfile


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
    return Profile(name=name, data=DataProfile(**section))
