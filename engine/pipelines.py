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


PIPELINES: dict[str, Callable[[Profile], PipelineSubmit]] = {"generator": generator_chain}
