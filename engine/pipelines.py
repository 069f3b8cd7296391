"""Named chains of jobs, built from a profile: what `dermae pipeline NAME` and the studio submit."""

from __future__ import annotations

from collections.abc import Callable

from engine.profiles import Profile
from engine.schemas import PipelineStep, PipelineSubmit


def generator_chain(profile: Profile) -> PipelineSubmit:
    """Reference classifier and VAE, then the latent diffusion model, then generation (a score job follows)."""
    return PipelineSubmit(name=f"generator-{profile.name}", steps=[
        PipelineStep(key="reference", kind="train_reference", params=profile.params("train_reference")),
        PipelineStep(key="vae", kind="train_vae", params=profile.params("train_vae")),
        PipelineStep(key="ldm", kind="train_ldm", params=profile.params("train_ldm"), after_keys=["vae"]),
        PipelineStep(key="generate", kind="generate", params=profile.params("generate"),
                     after_keys=["ldm", "reference"]),
    ])


def train_chain(profile: Profile, dataset: str) -> PipelineSubmit:
    """MAE pre-training -> teacher fine-tune -> students distilled on the curated version, and for every student
    the baseline arm (the same student, same budget, real data only, no teacher). Each model is evaluated on the
    real test split; the first student of the curated arm is exported for serving."""
    steps = [
        PipelineStep(key="mae", kind="pretrain_mae", params=profile.params("pretrain_mae", dataset=dataset)),
        PipelineStep(key="teacher", kind="finetune", params=profile.params("finetune", dataset=dataset),
                     after_keys=["mae"]),
        PipelineStep(key="teacher.eval", kind="evaluate", params={"arm": "teacher (MAE + fine-tune)"},
                     after_keys=["teacher"]),
    ]
    for i, student in enumerate(profile.students):
        name = student["arch"]
        arms = {
            "baseline": ({"use_synthetic": False, "use_teacher": False}, [], "real only"),
            "curated": ({"use_synthetic": True, "use_teacher": True}, ["teacher"], "curated synthetic + MAE + KD"),
        }
        for arm, (flags, after, label) in arms.items():
            key = f"{arm}.{name}"
            steps.append(PipelineStep(key=key, kind="distill", after_keys=after,
                                      params=profile.params("distill", dataset=dataset, **student, **flags)))
            steps.append(PipelineStep(key=f"{key}.eval", kind="evaluate", after_keys=[key],
                                      params={"arm": f"{name}: {label}"}))
        if i == 0:
            steps.append(PipelineStep(key=f"curated.{name}.export", kind="export",
                                      after_keys=[f"curated.{name}", f"curated.{name}.eval"],
                                      params={"model": None, "name": f"{name}-{profile.name}"}))
    return PipelineSubmit(name=f"train-{profile.name}", steps=steps)


PIPELINES: dict[str, Callable[[Profile], PipelineSubmit]] = {"generator": generator_chain}
