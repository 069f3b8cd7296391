import io

import numpy as np
import pytest
from PIL import Image

from engine.data.images import ImageProblem, ImageStore, check_image, encode_png
from tests import factories


def test_a_valid_image_keeps_its_bytes_and_gets_a_thumbnail():
    data = factories.image_bytes(0, size=(600, 450))
    checked = check_image(data)
    assert checked.data == data and checked.ext == "jpg" and (checked.width, checked.height) == (600, 450)
    thumb = Image.open(io.BytesIO(checked.thumbnail))
    assert max(thumb.size) == 128 and thumb.mode == "RGB"


def test_small_images_keep_a_lossless_thumbnail():
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    checked = check_image(encode_png(pixels))
    assert checked.thumbnail_ext == "png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(checked.thumbnail))), pixels)


def test_content_id_depends_on_pixels_not_on_container():
    pixels = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    as_bmp = io.BytesIO()
    Image.fromarray(pixels).save(as_bmp, "BMP")
    assert check_image(encode_png(pixels)).content_id == check_image(as_bmp.getvalue()).content_id
    other = pixels.copy()
    other[0, 0, 0] ^= 1
    assert check_image(encode_png(other)).content_id != check_image(encode_png(pixels)).content_id


@pytest.mark.parametrize(("data", "message"), [
    (factories.corrupt_jpeg(), "corrupt or truncated"),
    (factories.truncated_png(), "corrupt or truncated"),
    (factories.huge_png(), "too large"),
    (factories.text_as_jpg(), "not an image"),
    (b"", "empty file"),
    (factories.image_bytes(0, size=(4, 4)), "at least"),
    (factories.image_bytes(0, fmt="GIF"), "unsupported image format GIF"),
])
def test_bad_images_are_refused_with_a_reason(data, message):
    with pytest.raises(ImageProblem, match=message):
        check_image(data)


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(ImageProblem, match=r"too large: 8000x6000 \(48 MP\)"):
        check_image(factories.huge_png_sized(8000, 6000))


def test_store_writes_once_and_refuses_paths_outside(tmp_path):
    store = ImageStore(tmp_path)
    rel, created = store.put("ab" * 32, "png", b"x")
    assert created and (tmp_path / rel).read_bytes() == b"x"
    assert store.put("ab" * 32, "png", b"y") == (rel, False)
    assert (tmp_path / rel).read_bytes() == b"x"
    with pytest.raises(ValueError, match="escapes"):
        store.absolute("../../etc/passwd")
