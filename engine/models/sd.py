"""The paper path: fine-tune a local Stable-Diffusion-style pipeline folder into a class-conditioned lesion generator.

A pipeline folder holds ``unet/`` (UNet2DConditionModel), ``vae/`` (AutoencoderKL) and ``scheduler/`` (any diffusers
scheduler config); ``text_encoder/`` and ``tokenizer/`` may be there and are ignored. We condition on the lesion class,
not on a text prompt: there are only seven classes, clinical names ("melanocytic nevi", "actinic keratoses") mean
little to a CLIP text encoder trained on web captions, and a learned embedding per class needs no tokenizer, no text
encoder in memory and no `transformers`. The embedding table has ``num_classes + 1`` rows; row ``num_classes`` is the
null class used for classifier-free guidance (labels are dropped to it with probability ``cond_dropout`` in training).
Its output, (B, num_tokens, cross_attention_dim), goes to the UNet exactly where the text encoder's hidden states did.

    model = ClassConditionedSD.from_pipeline_folder("weights/sd-1.5", num_classes=7, resolution=256)
    finetune(model, images, labels, steps=20_000, batch_size=32, mixed_precision="bf16")
    model.save_pretrained("runs/sd-ham")
    model = ClassConditionedSD.from_pretrained("runs/sd-ham")
    images = model.sample([0, 3, 6], generator=torch.Generator().manual_seed(0))  # uint8 (3, 3, 256, 256)

Everything loads from local disk only (``local_files_only=True``); nothing is fetched from a hub.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import load_file, save_file

CONFIG_NAME = "dermae_sd.json"
CLASS_EMBED_NAME = "class_embed.safetensors"
FORMAT = "dermae-sd"
FORMAT_VERSION = 1


class ClassConditionedSD(torch.nn.Module):
    """Frozen VAE + trainable UNet2DConditionModel + learned class embedding, with a DDPM training noise schedule.

    ``forward`` is the training loss (so that accelerate / DistributedDataParallel wrap the right call); sampling is
    :meth:`sample`. The VAE never trains: its parameters have ``requires_grad=False`` and it stays in eval mode.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        noise_scheduler: DDPMScheduler,
        num_classes: int,
        resolution: int,
        num_tokens: int = 1,
        cond_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _check_unet_conditioning(unet)
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if num_tokens < 1:
            raise ValueError(f"num_tokens must be at least 1, got {num_tokens}")
        if unet.config.in_channels != vae.config.latent_channels:
            raise ValueError(
                f"unet.in_channels={unet.config.in_channels} does not match vae.latent_channels="
                f"{vae.config.latent_channels}: the unet and vae are not from the same pipeline"
            )
        vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if resolution % vae_scale_factor != 0:
            raise ValueError(f"resolution {resolution} is not a multiple of the VAE's downsampling {vae_scale_factor}")

        self.vae = vae.requires_grad_(False).eval()
        self.unet = unet
        self.noise_scheduler = noise_scheduler
        self.num_classes = num_classes
        self.null_class = num_classes  # the extra last row of the embedding table
        self.num_tokens = num_tokens
        self.resolution = resolution
        self.cond_dropout = cond_dropout
        self.vae_scale_factor = vae_scale_factor

        # One row per class plus the null class; each row holds num_tokens context vectors of cross_attention_dim.
        # N(0, 1) matches the scale of the CLIP hidden states the pretrained cross-attention layers were trained on.
        # A fixed seed makes from_pipeline_folder deterministic (and every process of a multi-GPU run identical).
        self.cross_attention_dim = unet.config.cross_attention_dim
        self.class_embed = torch.nn.Embedding(num_classes + 1, num_tokens * self.cross_attention_dim)
        torch.nn.init.normal_(self.class_embed.weight, std=1.0, generator=torch.Generator().manual_seed(0))

    # ---------------------------------------------------------------------------------------------------------------
    # loading and saving

    @classmethod
    def from_pipeline_folder(
        cls, path: str | Path, num_classes: int = 7, *, resolution: int = 256, num_tokens: int = 1
    ) -> ClassConditionedSD:
        """Start from a local SD-style pipeline folder (``unet/``, ``vae/``, ``scheduler/``); text parts are ignored.

        The class embedding is new (seeded init). The DDPM training schedule takes the folder's scheduler config
        (betas, ``prediction_type``, ...) whatever scheduler class it names. Raises FileNotFoundError naming the
        missing part when the folder is not SD-shaped, ValueError when the UNet cannot take class embeddings.
        """
        path = Path(path)
        unet, vae, noise_scheduler = _load_components(path)
        return cls(vae, unet, noise_scheduler, num_classes=num_classes, resolution=resolution, num_tokens=num_tokens)

    def save_pretrained(self, path: str | Path) -> None:
        """Write unet/, vae/, scheduler/ (diffusers format), class_embed.safetensors and dermae_sd.json to ``path``.

        Works on a model that :func:`finetune` trained (it leaves the model unwrapped). Weights are saved in the
        model's current dtype, on CPU.
        """
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        self.vae.save_pretrained(path / "vae")
        self.noise_scheduler.save_pretrained(path / "scheduler")
        save_file({"weight": self.class_embed.weight.detach().cpu().contiguous()}, str(path / CLASS_EMBED_NAME))
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_classes": self.num_classes,
            "null_class": self.null_class,
            "num_tokens": self.num_tokens,
            "resolution": self.resolution,
            "cond_dropout": self.cond_dropout,
            "cross_attention_dim": self.cross_attention_dim,
            "vae_scale_factor": self.vae_scale_factor,
            "vae_scaling_factor": self.vae.config.scaling_factor,
            "vae_shift_factor": self.vae.config.shift_factor,
            "prediction_type": self.noise_scheduler.config.prediction_type,
        }
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ClassConditionedSD:
        """Load a folder written by :meth:`save_pretrained` (offline, on CPU, float32)."""
        path = Path(path)
        config_file = path / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(
                f"{config_file} not found: {path} was not written by ClassConditionedSD.save_pretrained "
                "(use from_pipeline_folder for a Stable Diffusion pipeline folder)"
            )
        config = json.loads(config_file.read_text())
        if config.get("format") != FORMAT:
            raise ValueError(f"{config_file} is not a {FORMAT} config (format={config.get('format')!r})")
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"{config_file} has format_version {config['format_version']}; this code reads 1")
        embed_file = path / CLASS_EMBED_NAME
        if not embed_file.is_file():
            raise FileNotFoundError(f"{embed_file} not found: the class embedding is missing from {path}")

        unet, vae, noise_scheduler = _load_components(path)
        model = cls(
            vae,
            unet,
            noise_scheduler,
            num_classes=config["num_classes"],
            resolution=config["resolution"],
            num_tokens=config["num_tokens"],
            cond_dropout=config["cond_dropout"],
        )
        model.class_embed.load_state_dict(load_file(str(embed_file)))
        return model

    # ---------------------------------------------------------------------------------------------------------------
    # training

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def train(self, mode: bool = True) -> ClassConditionedSD:
        """Like nn.Module.train, but the frozen VAE always stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Class ids (B,) in [0, num_classes] (num_classes = null) -> encoder_hidden_states (B, num_tokens, D)."""
        return self.class_embed(labels).view(labels.shape[0], self.num_tokens, self.cross_attention_dim)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents (B, C, H / f, W / f), sampled from the VAE posterior.

        Runs in float32 even under autocast: some SD VAEs overflow in float16.
        """
        with torch.autocast(device_type=images.device.type, enabled=False):
            posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
            latents = posterior.sample(generator=generator).float()
        shift = self.vae.config.shift_factor or 0.0
        return (latents - shift) * self.vae.config.scaling_factor

    def training_loss(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Denoising MSE for a batch: images (B, 3, H, W) float in [-1, 1], labels (B,) int in [0, num_classes).

        Latents are noised at uniform random timesteps of the DDPM schedule; each label is replaced by the null class
        with probability ``cond_dropout``. The target is the noise, the velocity or the clean latents, following the
        scheduler config's ``prediction_type``. Returns a scalar float32 tensor.
        """
        device = self.device
        images = images.to(device)
        labels = labels.to(device=device, dtype=torch.long)
        batch_size = images.shape[0]
        rand_device = generator.device if generator is not None else device  # torch.rand* want the generator's device

        latents = self.encode_images(images, generator=generator)
        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=latents.dtype)
        num_train_timesteps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=rand_device)
        timesteps = timesteps.to(device)
        noisy_latents = self.noise_scheduler.add_noise(latents, noise, timesteps)

        # Classifier-free guidance: train the unconditional model on the same network via the null class.
        drop = torch.rand(batch_size, generator=generator, device=rand_device).to(device) < self.cond_dropout
        labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        context = self.encode_labels(labels)

        prediction = self.unet(noisy_latents, timesteps, encoder_hidden_states=context).sample
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            target = noise
        elif prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        elif prediction_type == "sample":
            target = latents
        else:
            raise ValueError(f"unsupported prediction_type {prediction_type!r} in the scheduler config")
        return F.mse_loss(prediction.float(), target.float())

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The training loss (see :meth:`training_loss`), so that DDP and mixed-precision wrappers apply to it."""
        return self.training_loss(images, labels, generator=generator)

    # ---------------------------------------------------------------------------------------------------------------
    # sampling

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor | Sequence[int],
        guidance_scale: float = 3.0,
        num_inference_steps: int = 25,
        generator: torch.Generator | None = None,
        seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Generate one image per label with DPM-Solver++ and classifier-free guidance -> uint8 (B, 3, H, W) on CPU.
        With ``seeds``, image i starts from noise seeded by seeds[i] (regenerable alone from its provenance).

        labels: (B,) class ids in [0, num_classes); num_classes (the null class) gives unconditional samples.
        Each step runs ONE UNet forward on the conditional and unconditional halves concatenated (batch 2B), then
        ``pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)``. Deterministic for a given generator.
        """
        device = self.device
        labels = torch.as_tensor(labels, dtype=torch.long).to(device)
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (B,), got shape {tuple(labels.shape)}")
        if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) <= self.null_class):
            raise ValueError(f"labels must be in [0, {self.null_class}] ({self.null_class} = unconditional)")
        batch_size = labels.shape[0]

        # A fresh solver each call: multistep schedulers keep state (previous model outputs, step index).
        scheduler = DPMSolverMultistepScheduler.from_config(
            self.noise_scheduler.config, algorithm_type="dpmsolver++", solver_order=2
        )
        scheduler.set_timesteps(num_inference_steps, device=device)

        latent_size = self.resolution // self.vae_scale_factor
        shape = (batch_size, self.unet.config.in_channels, latent_size, latent_size)
        if seeds is not None:
            latents = torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(seed)))
                                   for seed in seeds]).to(device=device, dtype=self.unet.dtype)
        else:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        latents = latents * scheduler.init_noise_sigma

        context = self.encode_labels(torch.cat([labels, torch.full_like(labels, self.null_class)]))  # (2B, T, D)
        context = context.to(self.unet.dtype)

        was_training = self.training
        self.eval()
        try:
            for t in scheduler.timesteps:
                model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)  # (2B, C, h, w)
                # pred is noise, velocity or clean latents, per prediction_type; the solver converts it.
                pred_cond, pred_uncond = self.unet(model_input, t, encoder_hidden_states=context).sample.chunk(2)
                pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond)
                latents = scheduler.step(pred, t, latents, generator=generator).prev_sample
        finally:
            self.train(was_training)

        shift = self.vae.config.shift_factor or 0.0
        latents = latents / self.vae.config.scaling_factor + shift
        images = self.vae.decode(latents.to(self.vae.dtype)).sample  # (B, 3, H, W) in about [-1, 1]
        return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


# -------------------------------------------------------------------------------------------------------------------
# fine-tuning


def finetune(
    model: ClassConditionedSD,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-5,
    mixed_precision: str = "no",
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    accelerator: Accelerator | None = None,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    end_of_step: Callable[[int, torch.optim.Optimizer], None] | None = None,
) -> None:
    """Fine-tune ``model`` in place: the UNet and the class embedding train, the VAE stays frozen.

    images: uint8 (N, H, W, 3) at ``model.resolution``; labels: int (N,) in [0, num_classes).
    Each process draws its own class-balanced batch of ``batch_size`` (each class present equally often, images
    within a class uniformly) with random horizontal and vertical flips, so under ``accelerate launch`` the
    effective batch is ``batch_size * num_processes``. AdamW, gradient clipping at 1.0, ``steps`` optimizer steps.
    ``on_step(step, loss)`` runs on the main process after each step, step counting from 1, with that process's loss.
    ``accelerator`` (for example one made by a launcher script) overrides ``mixed_precision``. Random draws come from
    generators seeded by ``seed``, the process index and ``start_step``; global RNG state is not touched. Afterwards
    the model is unwrapped (plain module, no autocast hook) and stays on the accelerator's device.
    Resuming: ``start_step`` steps are done already (the model holds their weights), ``optimizer_state`` is the
    optimizer's saved state. ``end_of_step(step, optimizer)`` runs on every process after each step — a job
    checkpoints and stops there (engine.recipes.common.end_of_step), as every recipe's loop does.
    """
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if images.shape[1:3] != (model.resolution, model.resolution):
        raise ValueError(
            f"images are {images.shape[1]}x{images.shape[2]} but the model trains at "
            f"{model.resolution}x{model.resolution}; resize them first"
        )
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be int (N,) with N={images.shape[0]}, got {labels.dtype} {labels.shape}")
    if labels.size == 0 or labels.min() < 0 or labels.max() >= model.num_classes:
        raise ValueError(f"labels must be non-empty and in [0, {model.num_classes})")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 0 and batch_size >= 1, got steps={steps}, batch_size={batch_size}")

    accelerator = accelerator or Accelerator(mixed_precision=mixed_precision)
    device = accelerator.device
    rng = np.random.default_rng((seed, accelerator.process_index, start_step))  # data order and flips
    generator = torch.Generator(device=device).manual_seed(seed + accelerator.process_index + start_step)

    params = [p for p in (*model.unet.parameters(), *model.class_embed.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    wrapped.train()

    indices = _class_balanced_indices(labels, rng)
    for step in range(start_step + 1, steps + 1):
        batch = np.fromiter((next(indices) for _ in range(batch_size)), dtype=np.int64, count=batch_size)
        x = torch.from_numpy(images[batch]).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W)
        y = torch.from_numpy(labels[batch]).to(device=device, dtype=torch.long)
        hflip = torch.from_numpy(rng.random(batch_size) < 0.5).to(device)[:, None, None, None]
        vflip = torch.from_numpy(rng.random(batch_size) < 0.5).to(device)[:, None, None, None]
        x = torch.where(hflip, x.flip(-1), x)
        x = torch.where(vflip, x.flip(-2), x)

        loss = wrapped(x, y, generator=generator)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        if on_step is not None and accelerator.is_main_process:
            on_step(step, loss.item())
        if end_of_step is not None:
            end_of_step(step, optimizer)

    accelerator.wait_for_everyone()
    accelerator.unwrap_model(wrapped, keep_fp32_wrapper=False)  # removes the autocast hook from `model.forward`


def _class_balanced_indices(labels: np.ndarray, rng: np.random.Generator) -> Iterator[int]:
    """Endless dataset indices: each run of C draws (C = classes present) visits every class once, in random order."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    while True:
        for c in rng.permutation(len(by_class)):
            yield int(rng.choice(by_class[c]))


# -------------------------------------------------------------------------------------------------------------------
# folder checks


def _load_components(path: Path) -> tuple[UNet2DConditionModel, AutoencoderKL, DDPMScheduler]:
    """Load unet/, vae/, scheduler/ from a local folder in float32, after checking each is there."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a directory")
    _require(path, "unet", "config.json", weights=True)
    _require(path, "vae", "config.json", weights=True)
    _require(path, "scheduler", "scheduler_config.json", weights=False)

    unet_class = json.loads((path / "unet" / "config.json").read_text()).get("_class_name")
    if unet_class not in (None, "UNet2DConditionModel"):
        raise ValueError(f"{path}/unet is a {unet_class}, not a UNet2DConditionModel: not a Stable Diffusion UNet")
    vae_class = json.loads((path / "vae" / "config.json").read_text()).get("_class_name")
    if vae_class not in (None, "AutoencoderKL"):
        raise ValueError(f"{path}/vae is a {vae_class}, not an AutoencoderKL")

    # float32 master weights for training, also when the folder only has fp16 files (variant="fp16").
    common = {"local_files_only": True, "torch_dtype": torch.float32}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", variant=_variant(path / "unet"), **common)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", variant=_variant(path / "vae"), **common)
    # Training uses the DDPM forward process; the folder's config may name PNDM/DDIM/... but shares its betas.
    noise_scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
    return unet, vae, noise_scheduler


def _require(path: Path, subfolder: str, config_name: str, *, weights: bool) -> None:
    folder = path / subfolder
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is missing: a Stable Diffusion pipeline folder needs unet/, vae/ and scheduler/ subfolders"
        )
    if not (folder / config_name).is_file():
        raise FileNotFoundError(f"{folder / config_name} is missing")
    if weights and not any(folder.glob("diffusion_pytorch_model*")):
        raise FileNotFoundError(f"{folder} has no weights (diffusion_pytorch_model*.safetensors or *.bin)")


def _variant(folder: Path) -> str | None:
    """'fp16' when a folder holds only fp16-variant weights (diffusion_pytorch_model.fp16.safetensors), else None."""
    names = [p.name for p in folder.glob("diffusion_pytorch_model*")]
    return "fp16" if names and all(".fp16." in name for name in names) else None


def _check_unet_conditioning(unet: UNet2DConditionModel) -> None:
    """Reject UNets that need more than encoder_hidden_states (SDXL's added time ids, class labels, ...)."""
    config = unet.config
    extras = {
        "addition_embed_type": config.addition_embed_type,
        "class_embed_type": config.class_embed_type,
        "encoder_hid_dim_type": config.encoder_hid_dim_type,
    }
    extras = {k: v for k, v in extras.items() if v is not None}
    if extras or config.num_class_embeds is not None:
        raise ValueError(
            f"this UNet needs extra conditioning inputs ({extras or 'num_class_embeds'}); only SD 1.x/2.x-style "
            "UNets conditioned on encoder_hidden_states alone are supported"
        )
    if not isinstance(config.cross_attention_dim, int):
        raise ValueError(f"cross_attention_dim must be one int, got {config.cross_attention_dim!r}")
