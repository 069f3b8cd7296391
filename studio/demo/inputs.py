"""An uploaded file -> the 8-bit RGB picture the model is shown, or a message a user can act on.

The checks of an import apply unchanged (`engine.data.images.check_image`: empty file, byte size, format, pixel
count before decoding, decompression bombs, corrupt or truncated data). On top comes what an upload needs and an
import does not: the EXIF orientation applied, every image mode converted to 8-bit RGB (with a note where that
changes what the model sees), and all metadata dropped — only decoded pixels go further, so nothing of the
original file (EXIF, GPS, ICC, comments) is ever served back.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from engine.data.images import ImageProblem, check_image
from engine.settings import MAX_IMAGE_BYTES

_GREY_NOTE = ("the model was trained on colour dermoscopy, so an answer on a grey picture is less reliable")


@dataclass(frozen=True)
class PreparedImage:
    image: Image.Image  # 8-bit RGB, upright, no metadata
    notes: tuple[str, ...]  # what was changed on the way, in words for the page


def read_upload(path: Path) -> PreparedImage:
    """Check and decode the file at `path` (size checked before it is read into memory)."""
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise ImageProblem(f"file is {size / 2**20:.0f} MiB; the limit is {MAX_IMAGE_BYTES // 2**20} MiB")
    return prepare_image(path.read_bytes())


def prepare_image(data: bytes) -> PreparedImage:
    """Raises ImageProblem with a message for the page when `data` is not an image we can show the model."""
    try:
        check_image(data)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
        notes = []
        if getattr(img, "n_frames", 1) > 1:
            notes.append(f"the file holds {img.n_frames} frames; the first is used")
        orientation = img.getexif().get(ExifTags.Base.Orientation, 1)
        if orientation != 1:
            img = ImageOps.exif_transpose(img)
            notes.append(f"turned upright as its EXIF orientation tag ({orientation}) says")
        rgb, note = to_rgb(img)
    except ImageProblem:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as e:  # what check_image lets by
        raise ImageProblem(f"cannot read this image: {e}") from None
    if note:
        notes.append(note)
    # A fresh image from the pixels alone: no EXIF, ICC profile, text chunks or anything else of the file.
    return PreparedImage(Image.fromarray(np.asarray(rgb, dtype=np.uint8)), tuple(notes))


def to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    """8-bit RGB and a note when the conversion changes what the model sees (None when it does not)."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        transparent = np.asarray(rgba)[..., 3].min() < 255
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert("RGB")
        note = ("the image has transparent parts: flattened onto white" if transparent
                else "its alpha channel (fully opaque) was dropped")
        if mode in ("LA", "La"):
            note += f"; greyscale: converted to RGB; {_GREY_NOTE}"
        return rgb, note
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale (PNG, TIFF): scale 0..65535 to 0..255 instead of clipping everything above 255 to white.
        values = np.asarray(img).astype(np.float64)
        scale = 257.0 if mode.startswith("I;16") or values.max() > 255 else 1.0
        grey = np.clip(np.round(values / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2)), (
            f"16-bit greyscale: scaled to 8 bits and converted to RGB; {_GREY_NOTE}")
    if mode == "F":
        raise ImageProblem("32-bit floating-point images are not supported: save it as an 8-bit RGB JPEG or PNG")
    if mode in ("L", "1"):
        return img.convert("RGB"), f"greyscale: converted to RGB; {_GREY_NOTE}"
    if mode == "P":
        return img.convert("RGB"), None  # a palette of RGB colours: nothing is lost
    return img.convert("RGB"), f"converted from {mode} to RGB"
