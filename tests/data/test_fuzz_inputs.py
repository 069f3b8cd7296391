"""Fuzzed files through the image check and the importers: whatever the bytes, the answer is the project's own clear
error (ImageProblem for one image, SourceError for a source) or a clean import, never another exception, and a
refused import leaves nothing behind.

test_images.py and test_sources.py hold one example of each known bad input; these generate many."""

from __future__ import annotations

import csv
import io
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine.data.images import CheckedImage, ImageProblem, ImageStore, check_image
from engine.data.ingest import ingest
from engine.data.sources import SourceError, SourceRecord, read_ham10000, read_isic, read_medmnist
from engine.labels import CLASSES
from engine.settings import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE
from tests import factories

# derandomize: the same examples on every run, so that a failure in CI reproduces anywhere.
FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FEW = settings(FUZZ, max_examples=25)


def checked_or_refused(data: bytes) -> CheckedImage | None:
    """check_image's answer: a clean image, or None when it refused with an ImageProblem (anything else fails)."""
    try:
        checked = check_image(data)
    except ImageProblem as e:
        assert str(e), "an ImageProblem must say what is wrong"
        return None
    assert min(checked.width, checked.height) >= MIN_IMAGE_SIDE
    assert checked.width * checked.height <= MAX_IMAGE_PIXELS
    assert checked.data == data and len(checked.content_id) == 64 and checked.thumbnail
    return checked


# images ------------------------------------------------------------------------------------------------------------
FORMATS = ["JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF"]
VALID = {fmt: factories.image_bytes(7, fmt, (24, 20)) for fmt in FORMATS}


@FUZZ
@given(st.binary(max_size=2048))
@example(b"\x89PNG\r\n\x1a\n")
@example(b"\xff\xd8\xff")
@example(b"BM" + b"\x00" * 60)
@example(b"II*\x00" + b"\xff" * 12)
@example(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
def test_random_bytes_are_refused_or_read(data: bytes) -> None:
    checked_or_refused(data)


@FUZZ
@given(fmt=st.sampled_from(FORMATS), data=st.data())
def test_damaged_files_of_every_format_are_refused_or_read(fmt: str, data: st.DataObject) -> None:
    """A valid file cut short, with bytes overwritten, or with garbage spliced in: valid headers, broken bodies."""
    raw = bytearray(VALID[fmt])
    damage = data.draw(st.sampled_from(["truncate", "overwrite", "splice"]))
    if damage == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif damage == "overwrite":
        for _ in range(data.draw(st.integers(1, 8))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    else:
        at = data.draw(st.integers(0, len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=64))
    checked_or_refused(bytes(raw))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int, color_type: int = 2) -> bytes:
    """A PNG whose header declares width x height, with a few bytes of real (tiny) image data."""
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info)) + info + b"\x00" * 64


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG whose frame header is rewritten to declare width x height (at most 65535 each)."""
    data = bytearray(VALID["JPEG"])
    frame = data.index(b"\xff\xc0")  # baseline SOF0: marker, length, precision, height, width
    data[frame + 5:frame + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _too_many_pixels(limit: int = 2**31 - 1) -> st.SearchStrategy[tuple[int, int]]:
    """(width, height) with more pixels than MAX_IMAGE_PIXELS, each side at most `limit`."""
    return st.integers(1, limit).flatmap(
        lambda w: st.tuples(st.just(w), st.integers(min(limit, MAX_IMAGE_PIXELS // w + 1), limit))).filter(
        lambda wh: wh[0] * wh[1] > MAX_IMAGE_PIXELS)


@FUZZ
@given(st.one_of(_too_many_pixels().map(lambda wh: png_declaring(*wh)),
                 _too_many_pixels(2**31 - 1).map(lambda wh: bmp_declaring(*wh)),
                 _too_many_pixels(65535).map(lambda wh: jpeg_declaring(*wh))))
def test_decompression_bombs_are_refused_before_decoding(data: bytes) -> None:
    """A few hundred bytes that declare more pixels than the limit: refused as too large, never decoded (decoding
    one of these would take gigabytes)."""
    with pytest.raises(ImageProblem, match="too large"):
        check_image(data)


@FEW
@given(st.integers(1, 4096), st.integers(1, 4096), st.sampled_from([0, 2, 3, 4, 6]))
def test_headers_within_the_limits_with_too_little_data_are_refused(width: int, height: int, color_type: int) -> None:
    """Any size and PNG colour type the limits allow, but only a few bytes of pixels."""
    data = png_declaring(width, height, color_type)
    if color_type == 3:  # a palette image needs its palette before the data
        data = data[:33] + _chunk(b"PLTE", bytes(range(48))) + data[33:]
    checked_or_refused(data)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_images_of_every_mode_are_refused_or_read(mode: str) -> None:
    """Valid files in the pixel modes PNG and TIFF can hold (16-bit, float, CMYK …): the thumbnail copes or the
    image is refused with a reason."""
    for fmt in ("PNG", "TIFF"):
        out = io.BytesIO()
        image = Image.new(mode, (32, 24))
        try:
            image.save(out, fmt)
        except OSError:
            continue  # Pillow cannot write this mode in this format: nothing to read back
        checked_or_refused(out.getvalue())


# sources -------------------------------------------------------------------------------------------------------------
def imported_or_refused(read: Callable[[Path], list[SourceRecord]], root: Path) -> list[dict] | None:
    """Read the source at `root` and ingest it into fresh stores: the rows committed, or None when it was refused
    with a SourceError, in which case nothing was committed and no file was left in the stores."""
    images, thumbs = ImageStore(root / "_store" / "images"), ImageStore(root / "_store" / "thumbs")
    committed: list[dict] = []
    try:
        records = read(root)
        for record in records:
            assert record.label in CLASSES and record.name
        result = ingest(records, batch_id="imp-fuzz", images=images, thumbs=thumbs,
                        existing_counts=lambda ids: {}, commit=committed.extend)
    except SourceError as e:
        assert e.summary, "a SourceError must say what is wrong"
        assert committed == []
        assert [p for p in (root / "_store").rglob("*") if p.is_file()] == []
        return None
    assert len(committed) == result.n_records == len({r["original_name"] for r in committed})
    return committed


HAM_IDS = ["ISIC_0", "ISIC_1", "ISIC_2", "ISIC_junk"]
CELLS = st.one_of(
    st.sampled_from([*HAM_IDS, "", "../ISIC_0", "/etc/passwd", "ISIC_0.jpg", "HAM_1", "a b"]),
    st.sampled_from([*CLASSES, "NV", " Melanoma ", "psoriasis", "nan", "1", "0", "1.0", "inf", "-0", "1e999"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
    st.sampled_from(['"', '""', ",", "\t", "\n", "\r\n", "\x00", "\ufeff", "x" * 200_000]),  # breaks and huge fields
)
HAM_COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


@st.composite
def tables(draw: st.DrawFn, columns: list[str]) -> bytes:
    """A metadata table as bytes: the right columns or not, rows of any width, written as proper CSV or joined
    naively (so quotes and commas break it), in any encoding, with or without a BOM; or plain binary junk."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=512))
    header = draw(st.one_of(st.just(columns), st.permutations(columns),
                            st.lists(st.sampled_from([*columns, "diagnosis", "", "dx "]), max_size=9)))
    rows = draw(st.lists(st.one_of(
        st.fixed_dictionaries({c: CELLS for c in columns}).map(lambda r: [r[c] for c in columns]),
        st.lists(CELLS, max_size=len(columns) + 3)), max_size=6))
    if draw(st.booleans()):
        out = io.StringIO()
        csv.writer(out).writerows([header, *rows])
        text = out.getvalue()
    else:
        text = "\n".join(",".join(row) for row in [header, *rows]) + "\n"
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1", "cp1252"]))
    return text.encode(encoding, errors="replace")


def _image_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(HAM_IDS[:3]):
        (folder / f"{name}.jpg").write_bytes(factories.image_bytes(300 + i))
    (folder / "ISIC_junk.jpg").write_bytes(factories.text_as_jpg())


@FEW
@given(tables(HAM_COLUMNS))
@example(("\n".join([",".join(HAM_COLUMNS), "HAM_1,ISIC_0,nv,histo,50,male,back", "HAM_1,ISIC_1,mel,,,,"])
          + "\n").encode())
def test_fuzzed_ham10000_metadata_imports_cleanly_or_not_at_all(table: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image_files(root / "HAM10000_images_part_1")
        (root / "HAM10000_metadata.csv").write_bytes(table)
        imported_or_refused(read_ham10000, root)


ISIC_COLUMNS = ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]


@FEW
@given(tables(ISIC_COLUMNS), st.one_of(st.none(), tables(["image", "lesion_id"])))
def test_fuzzed_isic_ground_truth_imports_cleanly_or_not_at_all(table: bytes, groupings: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _image_files(root / "ISIC2018_Task3_Training_Input")
        (root / "ISIC2018_Task3_Training_GroundTruth.csv").write_bytes(table)
        if groupings is not None:
            (root / "ISIC2018_Task3_Training_LesionGroupings.csv").write_bytes(groupings)
        imported_or_refused(read_isic, root)


@st.composite
def medmnist_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Per split: images of any small shape and a few dtypes, labels in or out of range, arrays left out."""
    arrays = {}
    for split in ("train", "val", "test"):
        n = draw(st.integers(0, 3))
        shape = draw(st.sampled_from([(28, 28, 3), (28, 28), (28, 28, 1), (28, 28, 4), (28, 28, 2), (0, 28, 3),
                                      (4, 4, 3), (28,), (28, 28, 3, 1)]))
        dtype = draw(st.sampled_from([np.uint8, np.uint8, np.float32, np.int64, np.bool_]))
        arrays[f"{split}_images"] = np.zeros((n, *shape), dtype=dtype) + np.asarray(7).astype(dtype)
        dtype = draw(st.sampled_from([np.uint8, np.int64, np.float64]))
        low = 0 if dtype == np.uint8 else -2
        label = st.integers(0, len(CLASSES) - 1) | st.integers(low, 9)
        arrays[f"{split}_labels"] = np.asarray(draw(st.lists(label, min_size=n, max_size=n + 1)), dtype)
    for key in draw(st.lists(st.sampled_from(sorted(arrays)), max_size=2, unique=True)):
        del arrays[key]
    return arrays


def _archive(image_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {f"{s}_{k}": np.zeros((1, *image_shape) if k == "images" else (1,), np.uint8)
            for s in ("train", "val", "test") for k in ("images", "labels")}


@FEW
@given(medmnist_arrays())
@example(_archive((28, 28, 3)))
@example(_archive((28, 28, 1)))
@example(_archive((28, 28, 2)))
@example(_archive((0, 28, 3)))
def test_fuzzed_medmnist_archives_import_cleanly_or_not_at_all(arrays: dict[str, np.ndarray]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dermamnist.npz"
        np.savez(path, **arrays)
        imported_or_refused(lambda _: read_medmnist(path), Path(tmp))


def test_a_row_with_more_fields_than_the_header_is_named(tmp_path: Path) -> None:
    """Found by the fuzzing above: csv.DictReader files the extra fields of such a row under the key None, which
    used to crash the reader (a 500 through the API)."""
    factories.ham_tree(tmp_path, rows=["HAM_1,ISIC_1,nv,histo,50,male,back,extra,fields"],
                       files={"ISIC_1": factories.image_bytes(1)})
    with pytest.raises(SourceError, match="more fields than the header") as info:
        read_ham10000(tmp_path)
    assert info.value.problems == ["line 2: 9 fields, but the header has 7 columns"]


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 28, 28, 2), (2, 0, 28, 3), (2, 28, 0)])
def test_medmnist_pixels_that_make_no_png_are_refused_by_name(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """Found by the fuzzing above: these shapes used to pass the reader and crash the PNG encoder at import."""
    arrays = {f"{s}_{k}": np.zeros(shape if k == "images" else (2,), np.uint8)
              for s in ("train", "val", "test") for k in ("images", "labels")}
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(SourceError, match=r"train: expected uint8 images \(N,H,W\[,3\]\)"):
        read_medmnist(tmp_path / "d.npz")
