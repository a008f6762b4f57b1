"""Bad input gives an error naming the file and the value; odd pixel formats become RGB."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

from segjax import data
from segjax.data import image_io
from segjax.data.image_io import DataError
from tests.test_data_folder import data_config, labels, read_all, rgb, save


def encode(array, fmt="PNG", mode=None, **kwargs):
    buf = io.BytesIO()
    img = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def good_folder(root, n=3, num_classes=3):
    for i in range(n):
        save(rgb(5, 6, i), root / "images" / f"ok{i}.png")
        save(labels(5, 6, i, num_classes), root / "masks" / f"ok{i}.png")


# --- errors through the folder builder (eager, naming the file) ---


def test_corrupt_image(tmp_path):
    root = tmp_path / "d"
    good_folder(root)
    (root / "images" / "bad.jpg").write_bytes(b"this is not a jpeg")
    save(labels(5, 6, 0), root / "masks" / "bad.png")
    with pytest.raises(DataError, match=r"bad\.jpg: cannot read image"):
        data.get_source(data_config(tmp_path, root, num_classes=3))


def test_truncated_image(tmp_path):
    root = tmp_path / "d"
    good_folder(root)
    full = encode(rgb(40, 40, 0), "JPEG")
    (root / "images" / "cut.jpg").write_bytes(full[: len(full) // 2])
    save(labels(40, 40, 0), root / "masks" / "cut.png")
    with pytest.raises(DataError, match=r"cut\.jpg: cannot read image .*truncated"):
        data.get_source(data_config(tmp_path, root, num_classes=3))


def test_mask_size_differs_from_image(tmp_path):
    root = tmp_path / "d"
    good_folder(root)
    save(rgb(5, 6, 0), root / "images" / "size.png")
    save(labels(5, 8, 0), root / "masks" / "size.png")
    with pytest.raises(
        DataError, match=r"masks/size\.png: mask size 8x5 \(WxH\) differs from image .*size 6x5"
    ):
        data.get_source(data_config(tmp_path, root, num_classes=3))


def test_label_outside_range(tmp_path):
    root = tmp_path / "d"
    good_folder(root)
    mask = labels(5, 6, 0)
    mask[2, 2] = 7
    save(rgb(5, 6, 0), root / "images" / "lab.png")
    save(mask, root / "masks" / "lab.png")
    with pytest.raises(DataError, match=r"lab\.png: label 7 outside \[0, 3\) and not 255"):
        data.get_source(data_config(tmp_path, root, num_classes=3))


def test_image_without_mask(tmp_path):
    root = tmp_path / "d"
    good_folder(root)
    save(rgb(5, 6, 0), root / "images" / "lonely.jpg")
    with pytest.raises(DataError, match=r"images/lonely\.jpg: image without mask"):
        data.get_source(data_config(tmp_path, root, num_classes=3))


def test_mask_without_image(tmp_path):
    root = tmp_path / "d"
    good_folder(root)
    save(labels(5, 6, 0), root / "masks" / "orphan.png")
    with pytest.raises(DataError, match=r"masks/orphan\.png: mask without image"):
        data.get_source(data_config(tmp_path, root, num_classes=3))


def test_empty_split(tmp_path):
    root = tmp_path / "d"
    save(rgb(5, 6, 0), root / "images" / "train" / "a.png")
    save(labels(5, 6, 0), root / "masks" / "train" / "a.png")
    (root / "images" / "val").mkdir()
    with pytest.raises(DataError, match=r"images/val: split 'val' is empty"):
        data.get_source(data_config(tmp_path, root, num_classes=3))


def test_colour_mask(tmp_path):
    root = tmp_path / "d"
    good_folder(root)
    save(rgb(5, 6, 0), root / "images" / "col.png")
    save(rgb(5, 6, 1), root / "masks" / "col.png")
    with pytest.raises(DataError, match=r"col\.png: colour mask \(mode RGB\)"):
        data.get_source(data_config(tmp_path, root, num_classes=3))


def test_skip_bad_examples_counts_and_logs(tmp_path, caplog):
    root = tmp_path / "d"
    good_folder(root, n=3)
    (root / "images" / "bad.jpg").write_bytes(b"garbage")
    save(labels(5, 6, 0), root / "masks" / "bad.png")
    save(rgb(5, 6, 0), root / "images" / "lonely.png")
    with caplog.at_level(logging.WARNING):
        source = data.get_source(data_config(tmp_path, root, num_classes=3, skip_bad_examples=True))
    assert source.info.splits == {"train": 3}
    assert sorted(read_all(source, "train")) == ["ok0", "ok1", "ok2"]
    text = caplog.text
    assert "skipped 2 bad example(s)" in text
    assert "bad.jpg: cannot read image" in text and "lonely.png: image without mask" in text


def test_skipping_everything_leaves_an_empty_split_error(tmp_path):
    root = tmp_path / "d"
    save(rgb(5, 6, 0), root / "images" / "lonely.png")
    (root / "masks").mkdir()
    expected = r"split 'train': split is empty after preparation; all 1 example"
    with pytest.raises(DataError, match=expected):
        data.get_source(data_config(tmp_path, root, num_classes=3, skip_bad_examples=True))


# --- pixel formats (decode helpers) ---


def test_grayscale_8bit_becomes_rgb():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = image_io.decode_image(encode(gray), path="g.png")
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_grayscale_16bit_scaled_by_actual_range(fmt):
    values = np.array([[1000, 2000], [3000, 1500]], np.uint16)
    out = image_io.decode_image(encode(values, fmt), path="g16")
    expected = np.round((values.astype(float) - 1000) * 255 / 2000).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)


def test_grayscale_16bit_scaled_by_configured_range():
    values = np.array([[0, 1024], [4095, 5000]], np.uint16)
    out = image_io.decode_image(encode(values), path="g16.png", value_range=(0, 4095))
    expected = np.clip(np.round(values.astype(float) * 255 / 4095), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 1], expected)
    assert out[1, 1, 0] == 255  # above the range: clipped


def test_constant_16bit_image_is_black():
    out = image_io.decode_image(encode(np.full((2, 2), 700, np.uint16)), path="c.png")
    assert not out.any()


def test_bad_value_range_is_an_error():
    with pytest.raises(DataError, match=r"g\.png: value_range \(5, 5\) must have low < high"):
        image_io.decode_image(encode(np.ones((2, 2), np.uint16)), path="g.png", value_range=(5, 5))


def test_rgba_drops_alpha():
    rgba = np.concatenate([rgb(3, 3, 0), np.full((3, 3, 1), 7, np.uint8)], axis=-1)
    out = image_io.decode_image(encode(rgba), path="a.png")
    np.testing.assert_array_equal(out, rgba[..., :3])


def test_cmyk_becomes_rgb():
    cmyk = Image.fromarray(rgb(4, 4, 0)).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="TIFF")  # lossless, so the expected RGB is exact
    out = image_io.decode_image(buf.getvalue(), path="c.tif")
    np.testing.assert_array_equal(out, np.asarray(cmyk.convert("RGB")))
    assert out.shape == (4, 4, 3)


def test_16bit_image_through_the_folder_builder(tmp_path):
    root = tmp_path / "d"
    values = np.array([[100, 200, 300], [400, 500, 600]], np.uint16)
    save(values, root / "images" / "x.png")
    save(np.zeros((2, 3), np.uint8), root / "masks" / "x.png")
    source = data.get_source(data_config(tmp_path, root, num_classes=2))
    image = read_all(source, "train")["x"]["image"]
    expected = np.round((values.astype(float) - 100) * 255 / 500).astype(np.uint8)
    np.testing.assert_array_equal(image, np.repeat(expected[..., None], 3, axis=-1))


def test_16bit_mask_value_above_255_is_an_error():
    mask = np.array([[0, 1], [300, 2]], np.uint16)
    with pytest.raises(DataError, match=r"m\.tif: mask value 300 does not fit a class id"):
        image_io.decode_mask(encode(mask, "TIFF"), path="m.tif")


def test_palette_mask_gives_indices():
    mask = np.array([[0, 5], [255, 20]], np.uint8)
    img = Image.fromarray(mask, mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    np.testing.assert_array_equal(image_io.decode_mask(buf.getvalue(), path="p.png"), mask)


def test_corrupt_mask_names_file():
    with pytest.raises(DataError, match=r"m\.png: cannot read mask"):
        image_io.decode_mask(b"\x89PNG broken", path="m.png")


def test_check_example_lists_labels():
    with pytest.raises(DataError, match=r"labels in file: \[0, 1, 9, 255\]"):
        image_io.check_example(
            np.zeros((2, 2, 3), np.uint8),
            np.array([[0, 1], [9, 255]], np.uint8),
            num_classes=4,
            image_path="i.png",
            mask_path="m.png",
        )
