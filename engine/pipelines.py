"""Named chains of jobs, built from a profile: what `dermae pipeline NAME` and the studio submit."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from engine.profiles import Profile
from engine.schemas import DatasetVersion, JobInfo, PipelineStep, PipelineSubmit

# What an evaluate job's result holds for comparing arms, with the name a table heads it with.
ARM_FIGURES = {"macro_f1": "macro-F1", "macro_f1_1view": "macro-F1, 1 view",
               "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy",
               "auc_ovr": "AUC", "ece": "ECE", "params": "params", "gflops": "GFLOPs", "latency_ms": "latency (ms)"}


def generator_chain(profile: Profile, preview: bool = False) -> PipelineSubmit:
    """VAE (unless the profile diffuses pixels), then the diffusion model, then the reference classifier (the
    selector) and the independent judge, then generation (a score job follows, judged by the judge).
    The classifiers come after the diffusion model (one job runs at a time on a CPU) so that, with `preview`, the
    first images for review — made a tenth of the way through diffusion training — arrive as early as they can;
    they are scored once both classifiers exist. Generation waits for the judge too, so that the score job that
    follows it finds one. A first run (`dermae demo`) previews."""
    ldm = profile.params("train_ldm")
    latent = not ldm.get("pixel_space", False)  # pixel-space diffusion needs no VAE
    steps = [PipelineStep(key="vae", kind="train_vae", params=profile.params("train_vae"))] if latent else []
    steps += [
        PipelineStep(key="ldm", kind="train_ldm", after_keys=["vae"] if latent else [],
                     params=ldm | ({"preview_at": max(1, ldm.get("steps", 1) // 10)} if preview else {})),
        PipelineStep(key="reference", kind="train_reference", params=profile.params("train_reference")),
        PipelineStep(key="judge", kind="train_judge", params=profile.params("train_judge")),
    ]
    classifiers = ["ldm", "reference", "judge"]
    if preview:
        steps.append(PipelineStep(key="preview.score", kind="score", after_keys=classifiers))
    steps.append(PipelineStep(key="generate", kind="generate", params=profile.params("generate"),
                              after_keys=classifiers))
    return PipelineSubmit(name=f"generator-{profile.name}", steps=steps)


def synthetic_in(version: DatasetVersion) -> int:
    """How many synthetic train images a dataset version holds."""
    return sum(version.counts.get("synthetic", {}).get("train", {}).values())


def distilled_arm(version: DatasetVersion) -> tuple[str, str]:
    """(key, label) of the arm that trains on the version's images with the teacher, named after what it trained
    on: a version without synthetic images has no "curated synthetic" arm — its gain is the teacher's."""
    n = synthetic_in(version)
    if n == 0:
        return "real_kd", "real only + MAE + KD"
    curated = "auto-curated (from scores)" if version.policy.get("selection") == "scores" else "human-curated"
    return "curated", f"real + {n} {curated} synthetic + MAE + KD"


def train_chain(profile: Profile, version: DatasetVersion) -> PipelineSubmit:
    """MAE pre-training -> teacher fine-tune -> students distilled on the version, and for every student the
    baseline arm (the same student, same budget, real data only, no teacher). Each model is evaluated on the
    real test split; the first student of the distilled arm is exported for serving."""
    dataset = version.id
    steps = [
        PipelineStep(key="mae", kind="pretrain_mae", params=profile.params("pretrain_mae", dataset=dataset)),
        PipelineStep(key="teacher", kind="finetune", params=profile.params("finetune", dataset=dataset),
                     after_keys=["mae"]),
        PipelineStep(key="teacher.eval", kind="evaluate", params={"arm": "teacher (MAE + fine-tune)"},
                     after_keys=["teacher"]),
    ]
    distilled, distilled_label = distilled_arm(version)
    arms = {
        "baseline": ({"use_synthetic": False, "use_teacher": False}, [], "real only"),
        distilled: ({"use_synthetic": True, "use_teacher": True}, ["teacher"], distilled_label),
    }
    for i, student in enumerate(profile.students):
        name = student["arch"]
        for arm, (flags, after, label) in arms.items():
            key = f"{arm}.{name}"
            steps.append(PipelineStep(key=key, kind="distill", after_keys=after,
                                      params=profile.params("distill", dataset=dataset, **student, **flags)))
            steps.append(PipelineStep(key=f"{key}.eval", kind="evaluate", after_keys=[key],
                                      params={"arm": f"{name}: {label}"}))
        if i == 0:
            steps.append(PipelineStep(key=f"{distilled}.{name}.export", kind="export",
                                      after_keys=[f"{distilled}.{name}", f"{distilled}.{name}.eval"],
                                      params={"model": None, "name": f"{name}-{profile.name}"}))
    return PipelineSubmit(name=f"train-{profile.name}", steps=steps)


def arm_comparison(jobs: Iterable[JobInfo]) -> list[dict[str, Any]]:
    """The arms of a train run side by side: one row per evaluate job that has a result, in the order the chain
    submitted them (teacher, then per student the real-only baseline before the curated arm). `dermae train`
    prints these rows and the studio shows them, so the two never disagree."""
    rows = []
    for job in sorted(jobs, key=lambda j: j.id):
        if job.kind != "evaluate" or not isinstance(job.result, dict):
            continue
        result = job.result
        rows.append({"arm": result.get("arm") or result.get("arch") or f"job {job.id}", "job_id": job.id,
                     "arch": result.get("arch"), "split_kind": result.get("split_kind") or "unrecorded",
                     **{name: result.get(name) for name in ARM_FIGURES}})
    return rows


PIPELINES: dict[str, Callable[[Profile], PipelineSubmit]] = {"generator": generator_chain}
