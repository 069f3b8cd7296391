"""Image validation, content hashing, thumbnails and the content-addressed image store.

An image's content id is the SHA-256 of its decoded pixels (mode, size and bytes), so the same picture saved
twice, or as PNG and as BMP, is stored once. Original file bytes are kept unchanged: real images are never
modified.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.files import atomic_write_bytes
from engine.settings import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, THUMBNAIL_SIDE

_FORMAT_EXT = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "TIFF": "tif", "WEBP": "webp"}


class ImageProblem(ValueError):
    """The bytes are not an image we accept; the message says why in words a user can act on."""


@dataclass(frozen=True)
class CheckedImage:
    content_id: str
    data: bytes
    ext: str
    width: int
    height: int
    format: str
    thumbnail: bytes
    thumbnail_ext: str


def check_image(data: bytes) -> CheckedImage:
    """Decode `data` fully, enforce size limits before decoding, and make its thumbnail."""
    if len(data) == 0:
        raise ImageProblem("empty file")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageProblem(f"file is {len(data) / 2**20:.0f} MiB; the limit is {MAX_IMAGE_BYTES // 2**20} MiB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or ""
            if fmt not in _FORMAT_EXT:
                raise ImageProblem(f"unsupported image format {fmt or 'unknown'}; use JPEG, PNG, BMP, TIFF or WebP")
            w, h = img.size
            # Checked before decoding: a 20000x20000 PNG is a few KiB on disk and 1.2 GB in memory.
            if w * h > MAX_IMAGE_PIXELS:
                raise ImageProblem(f"image is too large: {w}x{h} ({w * h / 1e6:.0f} MP); the limit is "
                                   f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP")
            if min(w, h) < MIN_IMAGE_SIDE:
                raise ImageProblem(f"image is {w}x{h}; each side must be at least {MIN_IMAGE_SIDE} px")
            img.load()
    except ImageProblem:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageProblem(f"image is too large to decode safely: {e}") from None
    except UnidentifiedImageError:
        raise ImageProblem("not an image (the content is not a known image format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageProblem(f"corrupt or truncated image: {e}") from None
    digest = hashlib.sha256(f"{img.mode}:{w}x{h}:".encode())
    digest.update(img.tobytes())
    thumb, thumb_ext = make_thumbnail(img)
    return CheckedImage(digest.hexdigest(), data, _FORMAT_EXT[fmt], w, h, fmt, thumb, thumb_ext)


def make_thumbnail(img: Image.Image) -> tuple[bytes, str]:
    """A small RGB preview: PNG when the image is already small (28px DermaMNIST stays lossless), else JPEG."""
    rgb = img.convert("RGB")
    out = io.BytesIO()
    if max(rgb.size) <= THUMBNAIL_SIDE:
        rgb.save(out, "PNG")
        return out.getvalue(), "png"
    rgb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    rgb.save(out, "JPEG", quality=90)
    return out.getvalue(), "jpg"


def square_resize(img: Image.Image, size: int) -> Image.Image:
    """The centre square of a frame (the lesion is centred in HAM10000's 600x450 frames), resized: bicubic up,
    Lanczos down. What models are trained on, so the margins of a frame never reach one."""
    img = img.convert("RGB")
    w, h = img.size
    if w != h:
        side = min(w, h)
        img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
    return _resize(img, size)


class Framing(StrEnum):
    """How a frame became a model's square input. Recorded with every trained model (`framing` in its
    classifier.json) and applied to what it is served, so a model never sees pictures made another way."""
    centre_square = "centre-square"  # the middle square of the frame, resized (square_resize)
    whole_frame = "whole-frame"  # the whole frame squashed to a square first, as MedMNIST made DermaMNIST


def frame_for_model(img: Image.Image, size: int, framing: dict[str, Any] | None = None) -> Image.Image:
    """A picture as a model trained with `framing` ({"crop": Framing, "via": side or None}) saw its training
    images: whole-frame models get the frame squashed (through the source's own side `via` first, as the source
    made its images); centre-square models and models that recorded nothing get the centre square."""
    framing = framing or {}
    if framing.get("crop") != Framing.whole_frame:
        return square_resize(img, size)
    img = img.convert("RGB")
    if framing.get("via"):
        img = _resize(img, int(framing["via"]))
    return _resize(img, size)


def _resize(img: Image.Image, size: int) -> Image.Image:
    """To size x size (squashing a non-square image): bicubic up, Lanczos down."""
    if img.size == (size, size):
        return img
    method = Image.Resampling.BICUBIC if max(img.size) < size else Image.Resampling.LANCZOS
    return img.resize((size, size), method)


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes. Deterministic for a given Pillow, so re-imports hash alike."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


class ImageStore:
    """Files under `root/ab/<content_id>.<ext>`; writes are atomic (temp file + rename)."""

    def __init__(self, root: Path):
        self.root = root

    def relative_path(self, content_id: str, ext: str) -> str:
        return f"{content_id[:2]}/{content_id}.{ext}"

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"path {relative!r} escapes the image store")
        return path

    def put(self, content_id: str, ext: str, data: bytes) -> tuple[str, bool]:
        """Store `data`; return (relative path, created) where created is False if it was already there."""
        rel = self.relative_path(content_id, ext)
        path = self.root / rel
        if path.exists():
            return rel, False
        atomic_write_bytes(path, data)
        return rel, True

    def remove(self, relative: str) -> None:
        self.absolute(relative).unlink(missing_ok=True)
