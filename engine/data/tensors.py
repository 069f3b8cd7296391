"""Training arrays: images of a manifest decoded once, resized to a square resolution, cached as uint8 .npy.

Decoding 10,000 PNGs costs seconds; every later epoch, job or resume reads a memory-mapped array instead.
The cache key is the list of image ids and the size, so a different selection never reuses a stale file.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.data.images import Framing, frame_for_model
from engine.files import atomic_write_bytes
from engine.labels import CLASSES


def cached_array(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The array saved at `path` (memory-mapped), or `compute()` saved there first: written whole, then renamed,
    so a reader never sees half a file and concurrent writers of the same key do no harm."""
    if path.exists():
        return np.load(path, mmap_mode="r")
    out = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, out)
    os.replace(tmp, path)
    return out


def load_array(workspace: Path, items: Sequence[dict], size: int, framing: dict | None = None) -> np.ndarray:
    """uint8 (N, size, size, 3) for manifest items (dicts with id and path), cached under workspace/cache. Each
    stored image framed as a model trained with `framing` saw its images (`frame_for_model`; None: the centre
    square, as every training array is made)."""
    # Centre squares are what every training array holds: one cache entry for them, framing recorded or not.
    framed = f"\n{framing['crop']}/{framing.get('via')}" if framing and framing.get("crop") == Framing.whole_frame \
        else ""
    key = hashlib.sha256(("\n".join(it["id"] for it in items) + f"\n{size}{framed}").encode()).hexdigest()[:24]

    def decode() -> np.ndarray:
        out = np.empty((len(items), size, size, 3), dtype=np.uint8)
        for i, item in enumerate(items):
            with Image.open(workspace / "images" / item["path"]) as img:
                out[i] = np.asarray(frame_for_model(img, size, framing))
        return out

    return cached_array(workspace / "cache" / "arrays" / f"{key}.npy", decode)


def labels_of(items: Sequence[dict]) -> np.ndarray:
    index = {c: i for i, c in enumerate(CLASSES)}
    return np.array([index[it["label"]] for it in items], dtype=np.int64)


def to_model_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images))  # copy: may be mmap
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1)


def to_png_bytes(image_chw: torch.Tensor) -> bytes:
    """uint8 (3, H, W) -> PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(image_chw.permute(1, 2, 0).cpu().numpy()).save(out, "PNG")
    return out.getvalue()


def grid_png(images: torch.Tensor, rows: int, path: Path, scale: int = 4) -> Path:
    """uint8 (N, 3, H, W) as a grid of `rows` rows, upscaled (nearest) so 32px lesions are legible."""
    n, _, h, w = images.shape
    cols = (n + rows - 1) // rows
    canvas = torch.full((3, rows * (h + 2), cols * (w + 2)), 255, dtype=torch.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[:, r * (h + 2) + 1: r * (h + 2) + 1 + h, c * (w + 2) + 1: c * (w + 2) + 1 + w] = images[i]
    img = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
