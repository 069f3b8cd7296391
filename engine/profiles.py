"""Profiles (configs/*.toml) as plain typed values: smoke (tests), cpu64 (the default: HAM10000 at 64 px on a CPU),
tiny (DermaMNIST at 32 px on a CPU), paper (GPU)."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.schemas import JobResources, JobSubmit

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
PROFILES = ("smoke", "cpu64", "tiny", "paper")
DEFAULT_PROFILE = "cpu64"
# The arms a train run may compare, each against `baseline` (real only, no teacher, always run): real_kd (real
# only, distilled from the MAE teacher), curated (+ the version's synthetic images), uncurated (+ as many
# synthetic images per class drawn from everything generated, before any review). All distilled arms of a seed
# share its teacher.
ARMS = ("baseline", "real_kd", "curated", "uncurated")


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
    arms: tuple[str, ...] = ARMS  # [train] arms: which of ARMS a run trains (where the version allows)
    # [resources.KIND] (and [resources.default] under them): what a job asks of its machine — JobResources' fields
    # and num_processes; the Slurm executor turns them into sbatch options
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)

    def params(self, kind: str, **overrides: Any) -> dict[str, Any]:
        return {**self.jobs.get(kind, {}), **overrides}

    def launch(self, kind: str) -> dict[str, Any]:
        """A pipeline step's num_processes and resources for a job of `kind`."""
        asked = {**self.resources.get("default", {}), **self.resources.get(kind, {})}
        processes = asked.pop("num_processes", 1)
        return {"num_processes": processes, "resources": JobResources(**asked)}


ParamsCheck = Callable[[str, dict[str, Any]], None]  # (job kind, parameters) -> None, or ValueError saying why


def load_profile(name: str, config_dir: Path = CONFIG_DIR, check_params: ParamsCheck | None = None) -> Profile:
    """Read configs/NAME.toml; unknown or missing keys are errors that name the key and the file. With
    `check_params` (engine.recipes.registry.check_params, as the CLI passes it) every [jobs.KIND] section and
    student is validated against its kind's parameters too; without, the engine validates a chain when it is
    submitted — so a front end needs the profile, not the recipes."""
    path = config_dir / f"{name}.toml"
    if not path.exists():
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)} (no {path})")
    raw = tomllib.loads(path.read_text())
    section = raw.get("data", {})
    expected = {f.name for f in fields(DataProfile)}
    if set(section) != expected:
        raise ValueError(f"{path}: [data] must set exactly {', '.join(sorted(expected))}; "
                         f"missing {sorted(expected - set(section))}, unknown {sorted(set(section) - expected)}")
    jobs = raw.get("jobs", {})
    students = raw.get("train", {}).get("students", [])
    if check_params is not None:
        for kind, params in jobs.items():
            try:
                check_params(kind, params)
            except ValueError as e:
                raise ValueError(f"{path}: [jobs.{kind}]: {e}") from None
        for student in students:
            try:
                check_params("distill", {**jobs.get("distill", {}), **student})
            except ValueError as e:
                raise ValueError(f"{path}: [[train.students]] {student.get('arch')}: {e}") from None
    unknown = sorted(set(raw) - {"data", "jobs", "train", "resources"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {unknown}")
    unknown_train = sorted(set(raw.get("train", {})) - {"students", "arms"})
    if unknown_train:
        raise ValueError(f"{path}: unknown key(s) {unknown_train} in [train]")
    arms = tuple(raw.get("train", {}).get("arms", ARMS))
    if set(arms) - set(ARMS) or "baseline" not in arms:
        raise ValueError(f"{path}: [train] arms must name some of {', '.join(ARMS)}, baseline among them; got "
                         f"{list(arms)}")
    profile = Profile(name=name, data=DataProfile(**section), jobs=jobs, students=students, arms=arms,
                      resources=raw.get("resources", {}))
    for kind in profile.resources:
        try:
            # what a step of that kind will ask, the default under it, checked as a job is on submit (processes a
            # multiple of nodes)
            JobSubmit(kind=kind, **profile.launch(kind))
        except (ValidationError, TypeError) as e:
            raise ValueError(f"{path}: [resources.{kind}]: {e}") from None
    return profile
