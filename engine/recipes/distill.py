"""distill: a student (EfficientNet-B0, or a ViT-B-family model; timm, pretrained=False) trained on a dataset
version with soft-logit distillation from the teacher (temperature, alpha). The ablation arms are this job with
other flags: no teacher (plain training), real data only (use_synthetic=false)."""

from __future__ import annotations

from pydantic import Field

from engine.jobs.context import JobContext
from engine.recipes.fitting import FitParams, fit

KIND = "distill"


class Params(FitParams):
    teacher: str | None = Field(None, description="Teacher classifier folder; default: the upstream finetune's.")
    use_teacher: bool = Field(True, description="False: train the student on labels alone (the baseline arms).")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the distillation term.")
    teacher_tta: bool = Field(True, description="Distil towards the teacher's mean over each image's 8 "
                                                "flips/rotations, computed once before training (False: the "
                                                "teacher sees the student's augmented batch every step).")


def run(params: Params, ctx: JobContext) -> dict:
    from engine.labels import CLASSES
    from engine.models.classifier import build_classifier, load_classifier
    from engine.recipes.common import artifact_path

    teacher, teacher_meta, teacher_dir = None, None, None
    if params.use_teacher:
        teacher_dir = artifact_path(ctx, "classifier", params.teacher, "finetune")
        teacher, teacher_meta = load_classifier(teacher_dir)
        for p in teacher.parameters():
            p.requires_grad_(False)
    model = build_classifier(params.arch, len(CLASSES), params.image_size, **params.arch_kwargs)
    fit_params = FitParams(**params.model_dump(exclude={"teacher", "use_teacher", "temperature", "alpha",
                                                        "teacher_tta"}))
    best = fit(model, fit_params, ctx, teacher=teacher,
               teacher_meta=teacher_meta,
               temperature=params.temperature, alpha=params.alpha, teacher_tta=params.teacher_tta,
               meta={"role": "student", "teacher": str(teacher_dir) if teacher_dir else None})
    return {"val": best, "distilled": teacher is not None}
