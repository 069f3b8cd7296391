"""The latent diffusion model: training loss, batched classifier-free guidance, regenerable seeds, offline load."""

import pytest
import torch

from engine.models.ldm import (
    LatentDiffusion,
    LatentRange,
    UNetConfig,
    VAEConfig,
    build_unet,
    build_vae,
    dpm_solver,
    load_generator,
    new_noise_scheduler,
    vae_loss,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    vae = build_vae(VAEConfig((16, 32)), 32)
    unet = build_unet(UNetConfig((32, 32), 1, (False, True)), 16, 4, 7)
    return LatentDiffusion(vae, unet, new_noise_scheduler(), 7, 0.5).eval()


def test_losses_are_finite_and_train_the_unet(model):
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    loss, parts = vae_loss(model.vae, images)
    assert torch.isfinite(loss) and set(parts) == {"l1", "mse", "kl"}
    latents = model.encode(images)
    assert latents.shape == (4, 4, 16, 16)
    loss = model.training_loss(latents, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss) and model.unet.conv_in.weight.grad is not None
    assert model.vae.encoder.conv_in.weight.grad is None  # the VAE is frozen during diffusion training
    model.unet.zero_grad()


def test_vae_norms_keep_at_least_four_channels_per_group():
    # One channel per group makes the last norm an instance norm that erases each image's colour amplitude.
    vae = build_vae(VAEConfig((32, 64), 8), 32)
    norms = [m for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups >= 4 for m in norms)
    assert vae.decoder.conv_norm_out.num_groups == 8


def test_min_snr_weighting_only_lowers_the_weight_of_easy_timesteps(model):
    latents = torch.randn(8, 4, 16, 16)
    labels = torch.arange(8) % 7

    def loss(gamma):
        with torch.no_grad():
            return model.training_loss(latents, labels, 0.0, torch.Generator().manual_seed(1), min_snr_gamma=gamma)

    plain, weighted = loss(None), loss(5.0)
    assert weighted < plain  # weights min(SNR, 5) / SNR are ≤ 1, < 1 wherever SNR > 5
    assert torch.isclose(loss(1e9), plain, rtol=1e-4)  # a γ above every SNR is the plain loss


def test_guidance_runs_one_batched_forward_per_step(model):
    calls = []
    hook = model.unet.register_forward_hook(lambda m, args, kwargs_out: calls.append(args[0].shape[0]))
    try:
        images = model.sample(torch.tensor([5, 3, 6]), guidance_scale=3.0, num_inference_steps=4,
                              generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
    assert calls == [6, 6, 6, 6]  # conditional + null class in one forward of batch 2B, once per step


def test_an_image_is_fixed_by_its_seed_whatever_its_batch(model):
    batch = model.sample(torch.tensor([0, 4, 6]), 2.0, 3, seeds=[10, 11, 12])
    alone = model.sample(torch.tensor([4]), 2.0, 3, seeds=[11])
    assert torch.equal(batch[1], alone[0]) or (batch[1].int() - alone[0].int()).abs().max() <= 1
    other = model.sample(torch.tensor([4]), 2.0, 3, seeds=[99])
    assert not torch.equal(other[0], alone[0])


def test_saved_folder_loads_offline_and_samples_the_same(model, tmp_path):
    model.save_pretrained(tmp_path / "ldm")
    assert {p.name for p in (tmp_path / "ldm").iterdir()} == {"vae", "unet", "scheduler", "dermae_ldm.json"}
    loaded = load_generator(tmp_path / "ldm")
    assert isinstance(loaded, LatentDiffusion) and loaded.scaling_factor == 0.5
    a = model.sample(torch.tensor([1, 2]), 3.0, 3, seeds=[1, 2])
    b = loaded.sample(torch.tensor([1, 2]), 3.0, 3, seeds=[1, 2])
    assert torch.equal(a, b)
    with pytest.raises(FileNotFoundError, match="not a saved latent diffusion model"):
        load_generator(tmp_path)


def test_latent_range_is_per_channel_and_clips_to_it():
    latents = torch.randn(200, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    latents[:, 1] = latents[:, 1] * 3 + 5
    full = LatentRange.of(latents, 0.0)
    assert full.low == pytest.approx([float(latents[:, c].min()) for c in (0, 1)])
    assert full.high == pytest.approx([float(latents[:, c].max()) for c in (0, 1)])
    inner = LatentRange.of(latents, 0.05)
    assert full.low[1] < inner.low[1] < 5 < inner.high[1] < full.high[1]
    clipped = inner.clip(latents * 10)
    assert [float(clipped[:, c].min()) for c in (0, 1)] == pytest.approx(inner.low)
    assert [float(clipped[:, c].max()) for c in (0, 1)] == pytest.approx(inner.high)


def test_guided_sampling_clips_each_clean_estimate_and_the_range_is_saved(model, tmp_path):
    labels, seeds = torch.tensor([0, 3, 6]), [1, 2, 3]
    free = model.sample(labels, 10.0, 4, seeds=seeds)
    model.latent_range = LatentRange((0.0,) * 4, (0.0,) * 4)  # every clean estimate pinned to zero
    try:
        pinned = model.sample(labels, 10.0, 4, seeds=seeds)
        model.save_pretrained(tmp_path / "ldm")
    finally:
        model.latent_range = None
    assert (free[0].int() - free[1].int()).abs().max() > 10  # unclipped, the seeds make different images
    # pinned, every step heads for the same clean latents and the last one lands there, whatever the seed
    assert (pinned[0].int() - pinned[1].int()).abs().max() <= 1 and (pinned[0].int() - pinned[2].int()).abs().max() <= 1
    loaded = load_generator(tmp_path / "ldm")
    assert loaded.latent_range == LatentRange((0.0,) * 4, (0.0,) * 4)
    assert torch.equal(loaded.sample(labels, 10.0, 4, seeds=seeds), pinned)


def test_sampling_starts_where_the_cosine_schedule_is_still_invertible():
    """At t=999 the cosine schedule's alpha_bar is ~0 and DPM-Solver++'s clean estimate divides by its root:
    the first tiny run's samples exploded into saturated noise until sampling started below it."""
    scheduler = new_noise_scheduler()
    for steps in (5, 20, 50):
        solver = dpm_solver(scheduler.config)
        solver.set_timesteps(steps)
        first = int(solver.timesteps[0])
        assert first < 999 and scheduler.alphas_cumprod[first] > 1e-3


def test_without_a_vae_the_model_diffuses_pixels_and_saves_no_vae(tmp_path):
    torch.manual_seed(0)
    unet = build_unet(UNetConfig((32, 32), 1, (False, True)), 16, 3, 7)
    pixels = LatentDiffusion(None, unet, new_noise_scheduler(), 7, 1.0).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(pixels.encode(images), images) and pixels.image_size == 16
    assert torch.isfinite(pixels.training_loss(images, torch.tensor([0, 6]), min_snr_gamma=5.0))
    pixels.save_pretrained(tmp_path / "ldm")
    assert {p.name for p in (tmp_path / "ldm").iterdir()} == {"unet", "scheduler", "dermae_ldm.json"}
    loaded = load_generator(tmp_path / "ldm")
    assert loaded.vae is None
    a = pixels.sample(torch.tensor([1, 6]), 3.0, 3, seeds=[1, 2])
    assert a.dtype == torch.uint8 and a.shape == (2, 3, 16, 16)
    assert torch.equal(a, loaded.sample(torch.tensor([1, 6]), 3.0, 3, seeds=[1, 2]))


def test_folded_pixels_are_lossless_and_the_fold_survives_saving(tmp_path):
    unet = build_unet(UNetConfig((32, 32), 1, (False, True)), 8, 48, 7)  # 32 px images, 4x4 blocks folded
    model = LatentDiffusion(None, unet, new_noise_scheduler(), 7, 1.0, pixel_patch=4).eval()
    assert model.image_size == 32
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    latents = model.encode(pixels.float() / 127.5 - 1)
    assert latents.shape == (2, 48, 8, 8)
    assert torch.equal(model.decode(latents), pixels)  # no VAE: nothing lost
    model.save_pretrained(tmp_path / "pixels")
    loaded = load_generator(tmp_path / "pixels")
    assert loaded.pixel_patch == 4 and loaded.vae is None
    assert loaded.sample(torch.tensor([3]), 2.0, 2, seeds=[1]).shape == (1, 3, 32, 32)
