"""Small datasets in each supported layout, made on the fly, the broken files the importers must refuse, and rows
for store tests."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from engine.labels import CLASSES


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def corrupt_jpeg() -> bytes:
    """A JPEG whose download broke off half-way."""
    data = image_bytes(1, size=(300, 200))
    return data[: len(data) // 2]


def truncated_png() -> bytes:
    data = image_bytes(2, "PNG")
    return data[: len(data) // 2]


def huge_png(side: int = 20000) -> bytes:
    """A 20000x20000 PNG: small on disk, 1.2 GB once decoded to RGB — a decompression bomb."""
    return huge_png_sized(side, side)


def huge_png_sized(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, "PNG")
    return out.getvalue()


def text_as_jpg() -> bytes:
    return b"lesion_id,image_id\nthis is a text file renamed .jpg\n"


HAM_HEADER = "lesion_id,image_id,dx,dx_type,age,sex,localization"


def ham_tree(root: Path, n_per_class: int = 3, rows: list[str] | None = None,
             files: dict[str, bytes] | None = None, header: str = HAM_HEADER) -> Path:
    """HAM10000 as distributed: metadata CSV and images over part_1 / part_2."""
    (root / "HAM10000_images_part_1").mkdir(parents=True, exist_ok=True)
    (root / "HAM10000_images_part_2").mkdir(parents=True, exist_ok=True)
    if rows is None:
        rows, files = [], {}
        for c, cls in enumerate(CLASSES):
            for k in range(n_per_class):
                image_id = f"ISIC_{c:02d}{k:05d}"
                rows.append(f"HAM_{c:02d}{k // 2:05d},{image_id},{cls},histo,50,female,back")
                files[image_id] = image_bytes(c * 100 + k)
    for i, (image_id, data) in enumerate((files or {}).items()):
        (root / f"HAM10000_images_part_{1 + i % 2}" / f"{image_id}.jpg").write_bytes(data)
    (root / "HAM10000_metadata.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def isic_tree(root: Path, n_per_class: int = 2) -> Path:
    """ISIC 2018 Task 3: one-hot ground truth CSV + input folder."""
    columns = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    images = root / "ISIC2018_Task3_Training_Input"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["image," + ",".join(columns)]
    for c, col in enumerate(columns):
        for k in range(n_per_class):
            name = f"ISIC_9{c:02d}{k:04d}"
            (images / f"{name}.jpg").write_bytes(image_bytes(1000 + c * 10 + k))
            lines.append(name + "," + ",".join("1.0" if col == other else "0.0" for other in columns))
    (root / "ISIC2018_Task3_Training_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    return root


def class_folders(root: Path, n_per_class: int = 2, splits: bool = False) -> Path:
    for split in ("train", "val") if splits else (None,):
        for c, cls in enumerate(CLASSES):
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n_per_class):
                (folder / f"img{k}.png").write_bytes(image_bytes(5000 + c * 10 + k + (7 if split == "val" else 0),
                                                                 "PNG"))
    return root


def medmnist_npz(path: Path, n: tuple[int, int, int] = (14, 7, 7), side: int = 28) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 7).astype(np.uint8).reshape(-1, 1)
    np.savez(path, **arrays)
    return path


SD_SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def tiny_sd_pipeline(root: Path, resolution: int = 32) -> Path:
    """A tiny Stable-Diffusion-shaped folder (unet/, vae/, scheduler/, an ignored text_encoder/), random weights:
    the paper path is tested with what the test itself saves, never with downloaded weights."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=resolution // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        block_out_channels=(32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8, sample_size=resolution,
    ).save_pretrained(root / "vae")
    DDPMScheduler(**SD_SCHEDULER, clip_sample=False).save_pretrained(root / "scheduler")
    (root / "text_encoder").mkdir()
    (root / "text_encoder" / "config.json").write_text('{"architectures": ["CLIPTextModel"]}')
    return root


def image_row(i: int, label: str, source: str, split: str | None, job: int | None = None) -> dict:
    """An `images` row for store tests: id i as 64 hex digits; synthetic rows (job given) carry provenance."""
    image_id = f"{i:064x}"
    return {"id": image_id, "content_id": image_id, "path": f"{image_id[:2]}/{image_id}.png", "thumb_path": "t",
            "label": label, "source": source, "split": split, "lesion_id": None, "width": 28, "height": 28,
            "format": "PNG", "size_bytes": 1, "import_batch": None, "original_name": str(i), "metadata": "{}",
            "duplicate_of": None, "created_at": datetime(2026, 1, 1) + timedelta(seconds=i), "generation_job": job,
            "seed": i if job else None, "guidance": 3.0 if job else None, "steps": 20 if job else None,
            "checkpoint": "ckpt/ldm" if job else None}
