"""Named chains of jobs, built from a profile: what `dermae pipeline NAME` and the studio submit."""

from __future__ import annotations

import json
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
    return PipelineSubmit(name=f"generator-{profile.name}", steps=with_resources(profile, steps))


def with_resources(profile: Profile, steps: list[PipelineStep]) -> list[PipelineStep]:
    """Each step with what the profile's [resources.KIND] asks for its kind (processes, GPUs, memory, time)."""
    return [PipelineStep.model_validate(step.model_dump() | profile.launch(step.kind)) for step in steps]


def synthetic_counts(version: DatasetVersion) -> dict[str, int]:
    """The synthetic train images a dataset version holds, per class."""
    return version.counts.get("synthetic", {}).get("train", {})


def synthetic_in(version: DatasetVersion) -> int:
    """How many synthetic train images a dataset version holds."""
    return sum(synthetic_counts(version).values())


def curated_label(version: DatasetVersion) -> str:
    """What the version's synthetic images are, in words: how many, and who chose them."""
    chosen_by = {"scores": "auto-curated (from scores)", "all": "uncurated"}
    return f"{synthetic_in(version)} {chosen_by.get(version.policy.get('selection'), 'human-curated')} synthetic"


def curation_badge(version: DatasetVersion) -> str:
    """Who chose a version's synthetic images, in words a reader of a figure needs: human-reviewed (under which
    policy), frozen from scores (with which threshold), or everything generated; or that it has none."""
    policy = version.policy
    if not synthetic_in(version):
        return "real only: no synthetic image"
    if policy.get("selection") == "scores":
        threshold = policy.get("min_intended_prob", 0.5)
        return f"frozen from scores (selector's intended-class probability ≥ {threshold:g}), not human-reviewed"
    if policy.get("selection") == "all":
        return "uncurated: everything generated, drawn before any review"
    return f"human-reviewed ({policy.get('accepts_needed', 1)} accept(s) and no reject per image)"


def run_arms(profile: Profile, version: DatasetVersion, uncurated: DatasetVersion | None = None
             ) -> dict[str, tuple[DatasetVersion, dict[str, bool], str]]:
    """{arm: (the version it trains on, distill flags, label)} of a train run: the profile's arms where the data
    allow them, each named after what it trained on. A version without synthetic images has no curated arm (and
    always a real_kd one: its KD arm's gain is the teacher's, not synthetic images'); the uncurated arm needs the
    uncurated twin (`freeze_uncurated_twin`)."""
    arms = {"baseline": (version, {"use_synthetic": False, "use_teacher": False}, "real only")}
    if "real_kd" in profile.arms or not synthetic_in(version):
        arms["real_kd"] = (version, {"use_synthetic": False, "use_teacher": True}, "real only + MAE + KD")
    if "curated" in profile.arms and synthetic_in(version):
        arms["curated"] = (version, {"use_synthetic": True, "use_teacher": True},
                           f"real + {curated_label(version)} + MAE + KD")
    if "uncurated" in profile.arms and uncurated is not None and synthetic_in(uncurated):
        arms["uncurated"] = (uncurated, {"use_synthetic": True, "use_teacher": True},
                             f"real + {synthetic_in(uncurated)} uncurated synthetic + MAE + KD")
    return arms


TWIN_NOTE = "uncurated twin of "


def is_uncurated_twin(version: DatasetVersion) -> bool:
    """Whether the version was frozen as another's uncurated twin (`freeze_uncurated_twin`)."""
    return (version.note or "").startswith(TWIN_NOTE)


def uncurated_twin_of(versions: Iterable[DatasetVersion], version: DatasetVersion) -> DatasetVersion | None:
    """The newest uncurated twin already frozen for `version` (see `freeze_uncurated_twin`), if any."""
    return next((v for v in versions if (v.note or "").startswith(f"{TWIN_NOTE}{version.id}:")), None)


def freeze_uncurated_twin(client: Any, version: DatasetVersion) -> DatasetVersion | None:
    """The uncurated arm's data: a version with the same real images and, per class, as many synthetic images as
    `version` holds, taken from everything generated in the order it was made, before any review or score.
    None when `version` has no synthetic image."""
    targets = {c: n for c, n in synthetic_counts(version).items() if n}
    if not targets:
        return None
    return client.freeze_dataset(f"{version.name}-uncurated"[:64], f"{TWIN_NOTE}{version.id}: as many "
                                 "synthetic images per class, drawn before any review", selection="all",
                                 targets=targets)


def train_chain(profile: Profile, version: DatasetVersion, seeds: int = 1,
                uncurated: DatasetVersion | None = None, real_fraction: float = 1.0,
                external: str | None = None) -> PipelineSubmit:
    """MAE pre-training -> teacher fine-tune -> for every student, the run's arms (`run_arms`: real only, real +
    KD, curated, uncurated), same budget each. Each model is evaluated on the real test split; the first student
    of the first seed, curated arm (else real_kd, uncurated, baseline), is exported for serving.

    With `seeds` > 1 the teacher and every arm are trained once per seed (keys `seed<k>.`), each seed's arms
    distilled from that seed's teacher; the MAE encoder they start from is pre-trained once. With `real_fraction`
    < 1 every job — MAE, teacher and arms — sees only that share of the real train lesions, the same ones
    (`real_subsample`): what synthetic images are worth to a clinic with little data. With `external` (an import
    batch id), the teacher and every arm are evaluated on that batch's images as well (`<key>.external`)."""
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, not {seeds}")
    dataset = version.id
    arms = run_arms(profile, version, uncurated)
    served_arm = next(arm for arm in ("curated", "real_kd", "uncurated", "baseline") if arm in arms)
    scarce = {"real_fraction": real_fraction} if real_fraction < 1 else {}
    steps = [PipelineStep(key="mae", kind="pretrain_mae",
                          params=profile.params("pretrain_mae", dataset=dataset, **scarce))]
    for seed in range(seeds):
        prefix = f"seed{seed}." if seeds > 1 else ""
        steps += [
            PipelineStep(key=f"{prefix}teacher", kind="finetune", params=_seeded(profile, "finetune", seed,
                                                                                 dataset=dataset, **scarce),
                         after_keys=["mae"]),
            *evaluations(f"{prefix}teacher", "teacher (MAE + fine-tune)", external),
        ]
        for i, student in enumerate(profile.students):
            name = student["arch"]
            for arm, (data, flags, label) in arms.items():
                key = f"{prefix}{arm}.{name}"
                steps.append(PipelineStep(key=key, kind="distill",
                                          params=_seeded(profile, "distill", seed, dataset=data.id, **student,
                                                         **flags, **scarce),
                                          after_keys=[f"{prefix}teacher"] if flags["use_teacher"] else []))
                steps += evaluations(key, f"{name}: {label}", external)
            if i == 0 and seed == 0:
                served = f"{prefix}{served_arm}.{name}"
                evaluated = [f"{served}.eval"] + ([f"{served}.external"] if external else [])
                steps.append(PipelineStep(key=f"{served}.export", kind="export", after_keys=[served, *evaluated],
                                          params={"model": None, "name": f"{name}-{profile.name}"}))
    name = f"train-{profile.name}" + (f"-real{real_fraction:g}" if scarce else "")
    return PipelineSubmit(name=name, steps=with_resources(profile, steps))


def evaluations(key: str, arm: str, external: str | None) -> list[PipelineStep]:
    """The evaluate steps of a trained model: the version's real test split (`<key>.eval`), and with `external`
    that import batch's images too (`<key>.external`)."""
    steps = [PipelineStep(key=f"{key}.eval", kind="evaluate", params={"arm": arm}, after_keys=[key])]
    if external:
        steps.append(PipelineStep(key=f"{key}.external", kind="evaluate", params={"arm": arm, "source": external},
                                  after_keys=[key]))
    return steps


def _seeded(profile: Profile, kind: str, seed: int, **overrides: Any) -> dict[str, Any]:
    """A job's profile parameters with its seed moved on by `seed` (0: the profile's own)."""
    params = profile.params(kind, **overrides)
    return params | {"seed": params.get("seed", 0) + seed}


def arm_comparison(jobs: Iterable[JobInfo]) -> list[dict[str, Any]]:
    """The arms of a train run side by side: one row per evaluate job that has a result, in the order the chain
    submitted them (teacher, then per student the real-only baseline before the curated arm). `dermae train`
    prints these rows and the studio shows them, so the two never disagree."""
    evaluated = [j for j in sorted(jobs, key=lambda j: j.id) if j.kind == "evaluate" and isinstance(j.result, dict)]
    outside = {j.pipeline_key.removesuffix(".external"): j.result for j in evaluated
               if j.result.get("external") and j.pipeline_key}
    rows = []
    for job in evaluated:
        result = job.result
        if result.get("external"):
            continue
        row = {"arm": result.get("arm") or result.get("arch") or f"job {job.id}", "job_id": job.id,
               "arch": result.get("arch"), "split_kind": result.get("split_kind") or "unrecorded",
               **{name: result.get(name) for name in ARM_FIGURES}}
        external = outside.get((job.pipeline_key or "").removesuffix(".eval"))
        if external is not None:
            row |= {"external": external["external"], "external_macro_f1": external.get("macro_f1"),
                    "external_balanced_accuracy": external.get("balanced_accuracy"),
                    "external_drop": (result["macro_f1"] - external["macro_f1"]
                                      if result.get("macro_f1") is not None and external.get("macro_f1") is not None
                                      else None)}
        rows.append(row)
    return rows


PIPELINES: dict[str, Callable[[Profile], PipelineSubmit]] = {"generator": generator_chain}


def baseline_key(key: str | None, reference: str = "baseline") -> str | None:
    """The pipeline key of the evaluation an arm's evaluation is compared with: the same student (and whatever
    prefix, such as a seed, the key has) in the `reference` arm (real only unless told). None for the reference
    arm itself and for evaluations outside an arm (the teacher)."""
    parts = (key or "").split(".")
    if len(parts) < 3 or parts[-1] != "eval" or parts[-3] == reference:
        return None
    return ".".join([*parts[:-3], reference, *parts[-2:]])


def arm_of(key: str | None) -> str | None:
    """The arm (baseline, real_kd, curated, uncurated) an evaluation's pipeline key belongs to."""
    parts = (key or "").split(".")
    return parts[-3] if len(parts) >= 3 and parts[-1] == "eval" else None


def arm_differences(jobs: Iterable[JobInfo], predictions: Callable[[int], dict], resamples: int = 2000,
                    seed: int = 0, reference: str = "baseline", arms: Iterable[str] | None = None
                    ) -> list[dict[str, Any]]:
    """Each arm (or those named in `arms`) minus the `reference` arm — real only unless told — of the same
    student in the same seed, on the same test images: macro-F1 and balanced accuracy with 95% intervals from
    resampling test lesions (`metrics.paired_bootstrap`), averaged over the run's seeds (each seed's difference
    in `per_seed`). `predictions(job_id)` gives an evaluate job's per-image predictions (its `predictions`
    artifact). With reference "uncurated" and arms ["curated"]: does curation help; with "real_kd": what the
    synthetic images add beyond the teacher."""
    import numpy as np

    from engine import metrics
    from engine.labels import CLASSES

    wanted = None if arms is None else set(arms)
    evaluated = {j.pipeline_key: j for j in jobs if j.kind == "evaluate" and isinstance(j.result, dict)}
    pairs: dict[str, list[tuple[JobInfo, JobInfo]]] = {}  # arm -> (its evaluation, its reference's) per seed
    for key, job in sorted(evaluated.items(), key=lambda kv: kv[1].id):
        base = evaluated.get(baseline_key(key, reference))
        if base is not None and (wanted is None or arm_of(key) in wanted):
            pairs.setdefault(job.result.get("arm") or key, []).append((job, base))
    rows = []
    for arm, seeded in pairs.items():
        ours, theirs = [predictions(j.id) for j, _ in seeded], [predictions(b.id) for _, b in seeded]
        for (job, base), one, other in zip(seeded, ours, theirs, strict=True):
            if one["ids"] != other["ids"] or one["ids"] != ours[0]["ids"]:
                raise ValueError(f"jobs {job.id} and {base.id} were evaluated on different images: no paired "
                                 "comparison")
        rows.append({"arm": arm, "baseline": seeded[0][1].result.get("arm") or seeded[0][1].pipeline_key,
                     "job_ids": [j.id for j, _ in seeded], "baseline_job_ids": [b.id for _, b in seeded],
                     "seeds": len(seeded),
                     **metrics.paired_bootstrap(ours[0]["labels"], np.array([p["predicted"] for p in ours]),
                                                np.array([p["predicted"] for p in theirs]),
                                                ours[0]["lesion_ids"], len(CLASSES), resamples, seed)})
    return rows


def arm_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`arm_comparison`'s rows of a run with several seeds, one row per arm: each figure's mean and standard
    deviation over the seeds (sd None with one seed), in the order the arms first appear."""
    import numpy as np

    by_arm: dict[str, list[dict]] = {}
    for row in rows:
        by_arm.setdefault(row["arm"], []).append(row)
    summary = []
    for arm, seeded in by_arm.items():
        out: dict[str, Any] = {"arm": arm, "arch": seeded[0]["arch"], "seeds": len(seeded),
                               "split_kind": seeded[0]["split_kind"]}
        for name in ARM_FIGURES:
            values = [r[name] for r in seeded if r[name] is not None]
            out[name] = float(np.mean(values)) if values else None
            out[f"{name}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        summary.append(out)
    return summary


def predictions_over_http(client, fetch: Callable[[int, Any], bytes] | None = None) -> Callable[[int], dict]:
    """`arm_differences`' reader for an API client: an evaluate job's predictions artifact. `fetch(job_id,
    artifact)` reads its bytes (the studio passes a cached one); default, `client.artifact_bytes`."""
    def read(job_id: int) -> dict:
        artifact = next((a for a in reversed(client.job_artifacts(job_id)) if a.kind == "predictions"), None)
        if artifact is None:
            raise LookupError(f"evaluate job {job_id} kept no per-image predictions (evaluated before they were)")
        data = fetch(job_id, artifact) if fetch else client.artifact_bytes(job_id, artifact.id)
        return json.loads(data)
    return read
