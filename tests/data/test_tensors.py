"""Training arrays: the centre square of each frame, resized, whatever size and orientation the stored image has."""

import numpy as np
import pytest
from PIL import Image

from engine.data.images import square_resize
from engine.data.tensors import load_array


def framed(width: int, height: int) -> Image.Image:
    """A frame whose centre square is red and whose margins (the rest of the longer side) are blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    side = min(width, height)
    top, left = (height - side) // 2, (width - side) // 2
    pixels[top:top + side, left:left + side] = (255, 0, 0)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(("width", "height"), [(200, 150), (600, 450), (150, 200), (28, 28)])
def test_the_centre_square_is_what_the_model_sees(width, height):
    out = np.asarray(square_resize(framed(width, height), 64)).astype(int)
    assert out.shape == (64, 64, 3)
    assert (np.abs(out - (255, 0, 0)) <= 2).all()  # no margin pixel leaks in, landscape or portrait


def test_training_arrays_crop_and_resize_each_stored_image(tmp_path):
    items = []
    for i, size in enumerate([(200, 150), (600, 450), (150, 200)]):
        path = f"{i:02d}/image{i}.png"
        (tmp_path / "images" / path).parent.mkdir(parents=True)
        framed(*size).save(tmp_path / "images" / path)
        items.append({"id": f"id{i}", "path": path})
    array = load_array(tmp_path, items, 64)
    assert array.shape == (3, 64, 64, 3) and array.dtype == np.uint8
    assert (np.abs(array.astype(int) - (255, 0, 0)) <= 2).all()
    assert list(tmp_path.glob("cache/arrays/*.npy"))  # decoded once, then read from the cache
    assert np.array_equal(load_array(tmp_path, items, 64), array)
    # a model that recorded centre squares reads the same cached array; a whole-frame model gets its own
    assert np.array_equal(load_array(tmp_path, items, 64, {"crop": "centre-square", "via": None}), array)
    assert len(list(tmp_path.glob("cache/arrays/*.npy"))) == 1
    load_array(tmp_path, items, 64, {"crop": "whole-frame", "via": None})
    assert len(list(tmp_path.glob("cache/arrays/*.npy"))) == 2


def test_a_whole_frame_model_sees_the_margins_squashed_through_its_sources_size():
    from engine.data.images import Framing, frame_for_model

    frame = framed(600, 450)  # blue margins of 75 px left and right
    whole = np.asarray(frame_for_model(frame, 32, {"crop": Framing.whole_frame, "via": 28})).astype(int)
    assert whole.shape == (32, 32, 3)
    assert whole[16, 0, 2] > 200 and whole[16, 16, 0] > 200  # margin on the left edge, red in the middle
    assert np.array_equal(np.asarray(frame_for_model(frame, 32, {"crop": Framing.whole_frame, "via": 28})),
                          np.asarray(frame.resize((28, 28), Image.Resampling.LANCZOS)
                                     .resize((32, 32), Image.Resampling.BICUBIC)))
    for framing in (None, {}, {"crop": Framing.centre_square, "via": None}):  # what older models recorded: none
        assert np.array_equal(np.asarray(frame_for_model(frame, 32, framing)), np.asarray(square_resize(frame, 32)))
