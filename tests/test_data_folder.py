"""Folder datasets: images/ + masks/ paired by stem, layouts, mask formats, class names."""

import io

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from segjax import data
from segjax.data import base, folder
from segjax.data.image_io import DataError


def data_config(tmp, root, **overrides):
    cfg = ml_collections.ConfigDict(
        {
            "name": "folder",
            "data_dir": str(tmp / "tfds"),
            "manual_dir": "",
            "download": False,
            "skip_bad_examples": False,
            "root": str(root),
            "config_name": "",
            "value_range": (),
            "num_classes": 0,
            "class_names": (),
            "palette": (),
        }
    )
    cfg.update(overrides)
    return cfg


def save(array, path, mode=None, palette=False, **kwargs):
    """Writes ``array`` as an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array, mode=mode) if mode else Image.fromarray(array)
    if palette:
        img = Image.fromarray(array.astype(np.uint8), mode="P")
        img.putpalette([c for rgb in base.default_palette(256) for c in rgb])
    img.save(path, **kwargs)


def rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def labels(h, w, seed, num_classes=3):
    mask = np.random.default_rng(seed).integers(0, num_classes, (h, w)).astype(np.uint8)
    mask[-1, :] = 255
    return mask


def read_all(source, split, process_index=0, process_count=1):
    ds = source.as_dataset(split, process_index=process_index, process_count=process_count)
    return {ex["id"].decode(): ex for ex in ds.as_numpy_iterator()}


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    """images/{train,val} + masks/{train,val}, several mask formats, a nested subfolder."""
    tmp = tmp_path_factory.mktemp("folder")
    root = tmp / "my data"
    expected = {}
    specs = [
        ("train", "a", ".png", {"palette": True}),  # palette PNG: index = class
        ("train", "b", ".png", {}),  # 8-bit single-channel PNG
        ("train", "sub/c", ".tif", {}),  # TIFF mask, nested folder
        ("train", "d", ".png", {"mode16": True}),  # 16-bit single-channel PNG
        ("val", "e", ".png", {}),
        ("val", "f", ".png", {}),
        ("val", "g", ".png", {}),
    ]
    for i, (split, stem, ext, opts) in enumerate(specs):
        h, w = 6 + i, 9
        mask = labels(h, w, i)
        image = rgb(h, w, 100 + i)
        save(image, root / "images" / split / f"{stem}.png")
        mask_path = root / "masks" / split / f"{stem}{ext}"
        if opts.get("palette"):
            save(mask, mask_path, palette=True)
        elif opts.get("mode16"):
            save(mask.astype(np.uint16), mask_path)
        else:
            save(mask, mask_path)
        expected[stem] = (image, mask)
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    source = data.get_source(data_config(tmp, root))
    return source, expected


def test_splits_names_and_exact_examples(split_folder):
    source, expected = split_folder
    assert source.info.splits == {"train": 4, "val": 3}
    assert source.info.class_names == ("background", "cat", "dog")
    assert source.info.num_classes == 3
    assert source.info.palette == base.default_palette(3)
    examples = read_all(source, "train") | read_all(source, "val")
    assert sorted(examples) == sorted(expected)
    for stem, (image, mask) in expected.items():
        np.testing.assert_array_equal(examples[stem]["image"], image)
        np.testing.assert_array_equal(examples[stem]["mask"], mask)  # 255 kept


@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_process_parts_cover_split_exactly_once(split_folder, process_count):
    source, _ = split_folder
    seen = []
    for index in range(process_count):
        seen += list(read_all(source, "val", index, process_count))
    assert sorted(seen) == ["e", "f", "g"]


def test_flat_layout_is_one_train_split_with_config_names_and_palette(tmp_path):
    root = tmp_path / "flat"
    for i in range(2):
        save(rgb(5, 7, i), root / "images" / f"x{i}.jpg", quality=95)
        save(labels(5, 7, i, num_classes=2), root / "masks" / f"x{i}.png")
    cfg = data_config(
        tmp_path,
        root,
        class_names=("bg", "fg"),
        palette=((0, 0, 0), (255, 0, 0)),
    )
    source = data.get_source(cfg)
    assert source.info.splits == {"train": 2}
    assert source.info.class_names == ("bg", "fg")
    assert source.info.palette == ((0, 0, 0), (255, 0, 0))
    ex = read_all(source, "train")["x1"]
    # JPEG bytes are stored as they are (no re-encoding): TF's decode of the file matches.
    raw = (root / "images" / "x1.jpg").read_bytes()
    np.testing.assert_array_equal(ex["image"], tf.io.decode_jpeg(raw, channels=3).numpy())


def test_num_classes_gives_generic_names(tmp_path):
    root = tmp_path / "n"
    save(rgb(4, 4, 0), root / "images" / "a.png")
    save(labels(4, 4, 0, num_classes=4), root / "masks" / "a.png")
    source = data.get_source(data_config(tmp_path, root, num_classes=5))
    assert source.info.class_names == ("class_0", "class_1", "class_2", "class_3", "class_4")


def test_unknown_number_of_classes_is_an_error(tmp_path):
    root = tmp_path / "n"
    save(rgb(4, 4, 0), root / "images" / "a.png")
    save(labels(4, 4, 0), root / "masks" / "a.png")
    with pytest.raises(DataError, match=r"number of classes unknown; set config.data.num_classes"):
        data.get_source(data_config(tmp_path, root))


def test_num_classes_disagreeing_with_names_is_an_error(tmp_path):
    root = tmp_path / "n"
    save(rgb(4, 4, 0), root / "images" / "a.png")
    save(labels(4, 4, 0), root / "masks" / "a.png")
    with pytest.raises(DataError, match=r"num_classes=4 but 2 class names"):
        data.get_source(data_config(tmp_path, root, num_classes=4, class_names=("a", "b")))


def test_duplicate_stems_are_an_error(tmp_path):
    root = tmp_path / "d"
    save(rgb(4, 4, 0), root / "images" / "a.png")
    save(rgb(4, 4, 0), root / "images" / "a.jpg")
    save(labels(4, 4, 0), root / "masks" / "a.png")
    with pytest.raises(DataError, match=r"two files share the stem 'a'"):
        data.get_source(data_config(tmp_path, root, num_classes=3))


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(DataError, match=r"config.data.root=.*nowhere.*not found"):
        data.get_source(data_config(tmp_path, tmp_path / "nowhere", num_classes=3))


def test_changed_folder_is_prepared_again(tmp_path):
    root = tmp_path / "c"
    save(rgb(4, 4, 0), root / "images" / "a.png")
    save(labels(4, 4, 0), root / "masks" / "a.png")
    cfg = data_config(tmp_path, root, num_classes=3)
    assert data.get_source(cfg).info.splits == {"train": 1}
    save(rgb(4, 4, 1), root / "images" / "b.png")
    save(labels(4, 4, 1), root / "masks" / "b.png")
    assert data.get_source(cfg).info.splits == {"train": 2}


def test_pair_files_reports_unpaired(tmp_path):
    save(rgb(4, 4, 0), tmp_path / "images" / "a.png")
    save(labels(4, 4, 0), tmp_path / "masks" / "b.png")
    pairs = folder.pair_files(str(tmp_path / "images"), str(tmp_path / "masks"))
    assert [(k, i is not None, m is not None) for k, i, m in pairs] == [
        ("a", True, False),
        ("b", False, True),
    ]


def test_image_feature_keeps_rgb_jpeg_bytes():
    from segjax.data import image_io

    buf = io.BytesIO()
    Image.fromarray(rgb(4, 4, 0)).save(buf, format="JPEG")
    data_bytes = buf.getvalue()
    image = image_io.decode_image(data_bytes, path="x.jpg")
    assert image_io.image_feature_value(data_bytes, image) is data_bytes
    buf = io.BytesIO()
    Image.fromarray(rgb(4, 4, 0)).convert("CMYK").save(buf, format="JPEG")
    cmyk = buf.getvalue()
    image = image_io.decode_image(cmyk, path="x.jpg")
    assert image_io.image_feature_value(cmyk, image) is image
