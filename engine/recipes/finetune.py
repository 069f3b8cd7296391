"""finetune: the teacher classifier, initialised from the MAE-pre-trained ViT encoder (or from scratch when none
is given), fine-tuned on a dataset version with class-balanced sampling, dermoscopy augmentations and
layer-wise lr decay."""

from __future__ import annotations

from pydantic import Field

from engine.jobs.context import JobContext
from engine.recipes.fitting import FitParams, fit

KIND = "finetune"


class Params(FitParams):
    arch: str = "vit_tiny_patch16_224"
    image_size: int = 32
    encoder: str | None = Field(None, description="MAE encoder folder; default: the upstream pretrain_mae's.")
    from_scratch: bool = Field(False, description="No MAE initialisation (the ablation arm).")
    layer_decay: float | None = 0.75
    lr: float = 1e-3


def run(params: Params, ctx: JobContext) -> dict:
    import json

    from safetensors.torch import load_file

    from engine.labels import CLASSES
    from engine.models.classifier import build_classifier
    from engine.recipes.common import artifact_path

    kwargs = dict(params.arch_kwargs)
    encoder_dir = None
    if not params.from_scratch:
        encoder_dir = artifact_path(ctx, "mae_encoder", params.encoder, "pretrain_mae")
        encoder_meta = json.loads((encoder_dir / "classifier.json").read_text())
        if encoder_meta["arch"] != params.arch or encoder_meta["image_size"] != params.image_size:
            raise ValueError(f"the MAE encoder is {encoder_meta['arch']} at {encoder_meta['image_size']}px; "
                             f"finetune asks for {params.arch} at {params.image_size}px")
        kwargs = {**encoder_meta["kwargs"], **kwargs}
    params = params.model_copy(update={"arch_kwargs": kwargs})
    model = build_classifier(params.arch, len(CLASSES), params.image_size, **kwargs)
    if encoder_dir is not None:
        missing, unexpected = model.load_state_dict(load_file(encoder_dir / "model.safetensors"), strict=False)
        if unexpected or any(not k.startswith("head") for k in missing):
            raise ValueError(f"MAE weights do not fit {params.arch}: missing {missing}, unexpected {unexpected}")
        ctx.log(f"initialised from the MAE encoder at {encoder_dir}")
    fit_params = params.model_dump(exclude={"encoder", "from_scratch"})
    best = fit(model, FitParams(**fit_params), ctx,
               meta={"role": "teacher", "mae_encoder": str(encoder_dir) if encoder_dir else None})
    return {"val": best, "mae": encoder_dir is not None}
