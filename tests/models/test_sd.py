"""The SD paper path on a tiny Stable-Diffusion-shaped folder built here: load, fine-tune, sample, save, reload.

The folder mimics a real pipeline (unet/, vae/, scheduler/ written by diffusers' save_pretrained, plus a
text_encoder/ that must be ignored) but its models are a few hundred kB, so everything runs on CPU in seconds.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, PNDMScheduler

from engine.models.sd import ClassConditionedSD, _class_balanced_indices, finetune
from tests import factories

# diffusers 0.42's DPMSolverMultistepScheduler.set_timesteps calls np.array() on a tensor, which numpy 2.4 flags.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

NUM_CLASSES = 7
RES = 32  # image side; the 3-level VAE downsamples by 4, so latents are 8x8 (the UNet's sample_size)
STEPS = 3  # inference steps in tests; enough to exercise DPM-Solver++'s second-order update


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD-style pipeline folder: unet/, vae/, scheduler/ and an ignored text_encoder/."""
    return factories.tiny_sd_pipeline(tmp_path_factory.mktemp("tiny-sd"), RES)


@pytest.fixture
def model(pipeline_folder: Path) -> ClassConditionedSD:
    return ClassConditionedSD.from_pipeline_folder(pipeline_folder, num_classes=NUM_CLASSES, resolution=RES)


def _seed(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _capture_contexts(model: ClassConditionedSD) -> tuple[list[torch.Tensor], torch.utils.hooks.RemovableHandle]:
    """Record (batch size, encoder_hidden_states) of every UNet call."""
    seen: list[torch.Tensor] = []

    def hook(_module, _args, kwargs):
        seen.append(kwargs["encoder_hidden_states"].detach().clone())

    return seen, model.unet.register_forward_pre_hook(hook, with_kwargs=True)


def test_loads_pipeline_folder(model: ClassConditionedSD) -> None:
    assert isinstance(model.noise_scheduler, DDPMScheduler)
    assert model.num_classes == NUM_CLASSES and model.null_class == NUM_CLASSES
    assert model.class_embed.weight.shape == (NUM_CLASSES + 1, 32)
    assert model.encode_labels(torch.tensor([0, 6, 7])).shape == (3, 1, 32)
    assert not any(p.requires_grad for p in model.vae.parameters())
    assert all(p.requires_grad for p in model.unet.parameters())
    model.train()
    assert model.unet.training and not model.vae.training


def test_class_embedding_init_is_seeded(pipeline_folder: Path) -> None:
    a = ClassConditionedSD.from_pipeline_folder(pipeline_folder, resolution=RES)
    b = ClassConditionedSD.from_pipeline_folder(pipeline_folder, resolution=RES)
    assert torch.equal(a.class_embed.weight, b.class_embed.weight)


def test_finetune_one_step_updates_unet_not_vae(model: ClassConditionedSD) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, RES, RES, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 5, 6])
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in model.vae.state_dict().items()}
    losses: list[tuple[int, float]] = []

    finetune(model, images, labels, steps=1, batch_size=2, lr=1e-3, on_step=lambda s, loss: losses.append((s, loss)))

    assert len(losses) == 1 and losses[0][0] == 1 and math.isfinite(losses[0][1])
    assert any(not torch.equal(v, model.unet.state_dict()[k]) for k, v in unet_before.items())
    assert all(torch.equal(v, model.vae.state_dict()[k]) for k, v in vae_before.items())
    assert "_original_forward" not in model.__dict__  # no accelerate hook left on the model


def test_finetune_rejects_images_at_the_wrong_resolution(model: ClassConditionedSD) -> None:
    images = np.zeros((2, RES * 2, RES * 2, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="resize"):
        finetune(model, images, np.array([0, 1]), steps=1, batch_size=2)


def test_sample_is_uint8_and_deterministic_per_seed(model: ClassConditionedSD) -> None:
    out = model.sample([0, 3, 6], num_inference_steps=STEPS, generator=_seed(0))
    assert out.dtype == torch.uint8 and out.shape == (3, 3, RES, RES)
    assert torch.equal(out, model.sample([0, 3, 6], num_inference_steps=STEPS, generator=_seed(0)))
    assert not torch.equal(out, model.sample([0, 3, 6], num_inference_steps=STEPS, generator=_seed(1)))


def test_sample_runs_one_batched_unet_call_per_step(model: ClassConditionedSD) -> None:
    seen, handle = _capture_contexts(model)
    try:
        model.sample([2, 4], num_inference_steps=STEPS, generator=_seed(0))
    finally:
        handle.remove()
    assert len(seen) == STEPS
    null = model.class_embed.weight[model.null_class].view(1, 32)
    for context in seen:  # conditional half first, then the null class
        assert context.shape == (4, 1, 32)
        assert torch.equal(context[0], model.class_embed.weight[2].view(1, 32))
        assert torch.equal(context[2], null) and torch.equal(context[3], null)


def test_label_dropout_uses_the_null_class(model: ClassConditionedSD) -> None:
    images = torch.rand(2, 3, RES, RES) * 2 - 1
    labels = torch.tensor([1, 5])
    seen, handle = _capture_contexts(model)
    try:
        model.cond_dropout = 0.0
        model.training_loss(images, labels, generator=_seed(0))
        model.cond_dropout = 1.0
        model.training_loss(images, labels, generator=_seed(0))
    finally:
        handle.remove()
    weight = model.class_embed.weight.detach()
    assert torch.equal(seen[0][:, 0], weight[labels])
    assert torch.equal(seen[1][:, 0], weight[[model.null_class] * 2])


def test_save_and_load_round_trip(model: ClassConditionedSD, tmp_path: Path) -> None:
    with torch.no_grad():  # make both parts differ from what from_pipeline_folder would give
        model.class_embed.weight.add_(0.5)
        model.unet.conv_out.bias.add_(0.1)
    model.save_pretrained(tmp_path / "run")

    for name in ("unet", "vae", "scheduler", "class_embed.safetensors", "dermae_sd.json"):
        assert (tmp_path / "run" / name).exists(), name
    config = json.loads((tmp_path / "run" / "dermae_sd.json").read_text())
    assert config["num_classes"] == NUM_CLASSES and config["resolution"] == RES
    assert config["vae_scaling_factor"] == pytest.approx(model.vae.config.scaling_factor)

    loaded = ClassConditionedSD.from_pretrained(tmp_path / "run")
    assert torch.equal(loaded.class_embed.weight, model.class_embed.weight)
    expected = model.sample([1, 4], num_inference_steps=STEPS, generator=_seed(3))
    assert torch.equal(loaded.sample([1, 4], num_inference_steps=STEPS, generator=_seed(3)), expected)


def test_v_prediction_from_a_pndm_scheduler_config(pipeline_folder: Path, tmp_path: Path) -> None:
    """Real SD folders name PNDM/DDIM schedulers; training still uses DDPM noising with their betas and target."""
    folder = tmp_path / "sd-v"
    shutil.copytree(pipeline_folder, folder)
    shutil.rmtree(folder / "scheduler")
    PNDMScheduler(**factories.SD_SCHEDULER, prediction_type="v_prediction").save_pretrained(folder / "scheduler")

    v_model = ClassConditionedSD.from_pipeline_folder(folder, resolution=RES)
    eps_model = ClassConditionedSD.from_pipeline_folder(pipeline_folder, resolution=RES)
    assert isinstance(v_model.noise_scheduler, DDPMScheduler)
    assert v_model.noise_scheduler.config.prediction_type == "v_prediction"
    images, labels = torch.rand(2, 3, RES, RES) * 2 - 1, torch.tensor([0, 1])
    v_loss = v_model.training_loss(images, labels, generator=_seed(0))
    eps_loss = eps_model.training_loss(images, labels, generator=_seed(0))
    assert torch.isfinite(v_loss) and v_loss.item() != eps_loss.item()  # same draws, different target
    assert v_model.sample([0], num_inference_steps=STEPS, generator=_seed(0)).shape == (1, 3, RES, RES)


def test_loss_at_256px_forward_backward(pipeline_folder: Path) -> None:
    model = ClassConditionedSD.from_pipeline_folder(pipeline_folder, resolution=256)
    model.cond_dropout = 0.0
    images = torch.rand(1, 3, 256, 256, generator=_seed(0)) * 2 - 1
    loss = model.training_loss(images, torch.tensor([4]), generator=_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.class_embed.weight.grad[4].abs().sum() > 0
    assert model.unet.conv_in.weight.grad is not None
    assert all(p.grad is None for p in model.vae.parameters())


def test_folder_without_unet_is_a_clear_error(pipeline_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-unet"
    shutil.copytree(pipeline_folder, folder)
    shutil.rmtree(folder / "unet")
    with pytest.raises(FileNotFoundError, match="unet"):
        ClassConditionedSD.from_pipeline_folder(folder)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ClassConditionedSD.from_pipeline_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"dermae_sd\.json"):
        ClassConditionedSD.from_pretrained(pipeline_folder)


def test_class_balanced_indices_visit_every_class_equally() -> None:
    labels = np.array([0] * 100 + [1] * 5 + [2])
    indices = _class_balanced_indices(labels, np.random.default_rng(0))
    drawn = labels[[next(indices) for _ in range(300)]]
    assert np.bincount(drawn).tolist() == [100, 100, 100]
    assert all(sorted(drawn[i : i + 3]) == [0, 1, 2] for i in range(0, 300, 3))


def test_finetune_checkpoints_stops_and_resumes_through_the_recipes_end_of_step(
        model: ClassConditionedSD, pipeline_folder: Path, tmp_path: Path) -> None:
    """The SD fine-tune loop goes through engine.recipes.common.end_of_step like every recipe: asked to stop after
    step 2 it checkpoints there and raises Stopped; a fresh model resumed from that checkpoint trains steps 3-4
    only, from the saved weights and optimizer state."""
    from engine.jobs.context import JobContext, Stopped
    from engine.recipes.common import end_of_step, resume, save_state

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, RES, RES, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 5, 6])
    ctx = JobContext(job_id=1, attempt=1, work_dir=tmp_path / "job", workspace=tmp_path)

    def checkpoint_or_stop(step: int, optimizer, target=model) -> None:
        if step == 2:
            ctx.request_stop("SIGTERM")
        end_of_step(ctx, step, 4, 100, lambda at: save_state(ctx, at, unet=target.unet,
                                                             class_embed=target.class_embed, optimizer=optimizer))

    with pytest.raises(Stopped, match="stopped at step 2"):
        finetune(model, images, labels, steps=4, batch_size=2, lr=1e-3, end_of_step=checkpoint_or_stop)
    fresh = ClassConditionedSD.from_pipeline_folder(pipeline_folder, resolution=RES)
    state = resume(JobContext(job_id=1, attempt=2, work_dir=tmp_path / "job", workspace=tmp_path),
                   unet=fresh.unet, class_embed=fresh.class_embed)
    assert state["step"] == 2 and "optimizer" in state
    assert all(torch.equal(v, model.unet.state_dict()[k]) for k, v in fresh.unet.state_dict().items())
    steps: list[int] = []
    finetune(fresh, images, labels, steps=4, batch_size=2, lr=1e-3, start_step=state["step"],
             optimizer_state=state["optimizer"], on_step=lambda s, loss: steps.append(s))
    assert steps == [3, 4]
