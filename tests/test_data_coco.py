"""COCO-format builder on a miniature COCO-format dataset written in the test: polygons, RLE
(compressed and uncompressed), a crowd object, two categories with non-contiguous ids."""

import copy
import json
import os
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from segjax import config as config_lib
from segjax.data import coco
from segjax.data.image_io import DataError

CAT, DOG = 3, 7  # category ids with gaps, listed out of order in the file
SIZES = {"a.png": (24, 32), "b.jpg": (20, 28), "c.png": (16, 18), "empty.png": (12, 12)}


def _blob(height, width, seed):
    """A random 0/1 mask, its RLE encoded by pycocotools."""
    mask = (np.random.default_rng(seed).random((height, width)) < 0.3).astype(np.uint8)
    return mask_utils.encode(np.asfortranarray(mask))


def _uncompressed_rle(mask):
    """COCO's uncompressed RLE (column-major run lengths starting with zeros) of ``mask``."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def _annotations():
    """The train and validation annotation files' content (images, categories, objects)."""
    compressed = _blob(20, 28, seed=1)
    compressed["counts"] = compressed["counts"].decode()
    crowd = np.zeros((24, 32), np.uint8)
    crowd[10:20, 3:30] = 1
    images = [
        {"id": 11, "file_name": "a.png", "width": 32, "height": 24},
        {"id": 5, "file_name": "sub/b.jpg", "width": 28, "height": 20},
    ]
    categories = [{"id": DOG, "name": "dog"}, {"id": CAT, "name": "cat"}]
    train_anns = [
        {"id": 1, "image_id": 11, "category_id": CAT, "iscrowd": 0, "area": 40.5,
         "segmentation": [[2.5, 1.0, 14.0, 2.0, 12.5, 9.5, 3.0, 8.0]], "bbox": [2.5, 1, 11.5, 8.5]},
        # two parts, no area (the mask's pixel count) and no bbox (the mask's box)
        {"id": 2, "image_id": 11, "category_id": DOG, "iscrowd": 0,
         "segmentation": [[20, 2, 31, 2, 31, 9], [16, 14, 24, 14, 20, 22.7]]},
        {"id": 3, "image_id": 11, "category_id": DOG, "iscrowd": 1, "area": float(crowd.sum()),
         "segmentation": _uncompressed_rle(crowd), "bbox": [3, 10, 27, 10]},
        {"id": 4, "image_id": 5, "category_id": CAT, "iscrowd": 0, "area": 77.0,
         "segmentation": compressed, "bbox": [-0.5, 0, 28.4, 20]},
    ]  # fmt: skip
    val_anns = [
        {"id": 9, "image_id": 1, "category_id": DOG, "iscrowd": 0, "area": 30.0,
         "segmentation": [[1, 1, 17.9, 1, 9, 15]], "bbox": [1, 1, 16.9, 14]},
    ]  # fmt: skip
    val_images = [{"id": 1, "file_name": "c.png", "width": 18, "height": 16}]
    train = {"images": images, "annotations": train_anns, "categories": categories}
    val = {"images": val_images, "annotations": val_anns, "categories": copy.deepcopy(categories)}
    return train, val


def _write_images(folder):
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        path = folder / ("sub" if name == "b.jpg" else "") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)


def _write_json(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.fixture
def export(tmp_path):
    """An annotation-tool style export: train.json, val.json and images/ under tmp_path."""
    _write_images(tmp_path / "images")
    train, val = _annotations()
    _write_json(tmp_path / "train.json", train)
    _write_json(tmp_path / "val.json", val)
    return tmp_path


def data_config(root, **coco_overrides):
    """``config.data`` for the export under ``root`` (a TFDS data_dir of its own)."""
    cfg = config_lib.base_config().data
    cfg.name = "coco"
    cfg.data_dir = str(root / "tfds")
    cfg.manual_dir = str(root / "manual")
    cfg.coco.train_json = str(root / "train.json")
    cfg.coco.train_images = str(root / "images")
    cfg.coco.val_json = str(root / "val.json")
    cfg.coco.val_images = str(root / "images")
    cfg.coco.update(coco_overrides)
    return cfg


def _examples(source, split):
    return list(tfds.as_numpy(source.as_dataset(split)))


def _reference(json_path, images_dir, label_of):
    """What each example must hold, from pycocotools' own COCO API, by file name."""
    api = COCO(str(json_path))
    expected = {}
    for image_id in sorted(api.getImgIds()):
        info = api.loadImgs(image_id)[0]
        anns = api.loadAnns(api.getAnnIds(imgIds=image_id))
        boxes = []
        for ann in anns:
            x, y, w, h = ann.get("bbox") or mask_utils.toBbox(api.annToRLE(ann)).tolist()
            box = np.clip([x, y, x + w, y + h], 0, [info["width"], info["height"]] * 2)
            boxes.append(box)
        masks = [api.annToMask(ann) for ann in anns]
        expected[info["file_name"]] = {
            # the stored file's bytes, decoded as tf.data decodes them (PIL's JPEG IDCT differs)
            "image": tf.io.decode_image((images_dir / info["file_name"]).read_bytes()).numpy(),
            "masks": np.stack(masks).astype(np.uint8),
            "boxes": np.asarray(boxes, np.float32),
            "labels": np.asarray([label_of[a["category_id"]] for a in anns], np.int32),
            "is_crowd": np.asarray([bool(a["iscrowd"]) for a in anns]),
            "areas": np.asarray([a.get("area", m.sum()) for a, m in zip(anns, masks)], np.float32),
        }
    return expected


def test_examples_match_pycocotools(export):
    source = coco.load(data_config(export))
    label_of = {CAT: 1, DOG: 2}  # contiguous in id order, whatever the file's order
    for split, name in (("train", "train.json"), ("validation", "val.json")):
        expected = _reference(export / name, export / "images", label_of)
        examples = _examples(source, split)
        assert sorted(ex["id"].decode() for ex in examples) == sorted(expected)
        for ex in examples:
            want = expected[ex["id"].decode()]
            assert set(ex) == {"image", "id", *coco.FIELDS}
            assert ex["masks"].dtype == np.uint8 and ex["boxes"].dtype == np.float32
            assert ex["labels"].dtype == np.int32 and ex["is_crowd"].dtype == bool
            np.testing.assert_array_equal(ex["image"], want["image"])
            np.testing.assert_array_equal(ex["masks"], want["masks"])
            np.testing.assert_allclose(ex["boxes"], want["boxes"], rtol=0, atol=1e-5)
            np.testing.assert_array_equal(ex["labels"], want["labels"])
            np.testing.assert_array_equal(ex["is_crowd"], want["is_crowd"])
            np.testing.assert_allclose(ex["areas"], want["areas"], rtol=0, atol=1e-4)
    crowd_masks = [ex["masks"][ex["is_crowd"]] for ex in _examples(source, "train")]
    assert sum(len(m) for m in crowd_masks) == 1 and all(m.sum() for m in crowd_masks if len(m))


def test_dataset_info_contiguous_labels(export):
    info = coco.load(data_config(export)).info
    assert info.task == "instance" and info.fields == coco.FIELDS
    assert info.class_names == ("__background__", "cat", "dog") and info.num_classes == 3
    assert info.category_ids == (0, CAT, DOG)
    assert info.splits == {"train": 2, "validation": 1}


def test_label_map_category_id_reads_the_same_prepared_data(export):
    contiguous = coco.load(data_config(export))
    by_id = coco.load(data_config(export, label_map="category_id"))
    assert by_id.builder.data_dir == contiguous.builder.data_dir  # read-time mapping only
    names = by_id.info.class_names
    assert by_id.info.num_classes == DOG + 1 and names[CAT] == "cat" and names[DOG] == "dog"
    assert names[0] == "__background__"
    assert [i for i, n in enumerate(names) if n == "N/A"] == [1, 2, 4, 5, 6]
    assert by_id.info.category_ids == ()
    for a, b in zip(_examples(contiguous, "train"), _examples(by_id, "train")):
        np.testing.assert_array_equal(np.asarray((0, CAT, DOG))[a["labels"]], b["labels"])
        np.testing.assert_array_equal(a["masks"], b["masks"])


def test_category_id_labels_need_ids_from_one(export):
    train, val = _annotations()
    for content in (train, val):
        content["categories"].append({"id": 0, "name": "zero"})
    _write_json(export / "train.json", train)
    _write_json(export / "val.json", val)
    assert coco.load(data_config(export)).info.class_names[1] == "zero"
    with pytest.raises(DataError, match=r"train\.json.*category id 0 with .*label_map"):
        coco.load(data_config(export, label_map="category_id"))


def _mutated(index, key, value, *, split=0):
    """The (train, val) annotations with ``key`` of annotation ``index`` set to ``value``."""
    files = list(_annotations())
    files[split]["annotations"][index][key] = value
    return files


BAD_ANNOTATIONS = {
    "unknown image": (_mutated(0, "image_id", 999), r"annotation 1 refers to image_id 999"),
    "unknown category": (
        _mutated(1, "category_id", 5),
        r"annotation 2 \(image a\.png\): category_id 5 is not in 'categories'",
    ),
    "two-point polygon": (
        _mutated(0, "segmentation", [[1, 1, 5, 5]]),
        r"annotation 1 \(image a\.png\): polygon 0 has 2 point\(s\); expected at least 3",
    ),
    "polygon outside": (
        _mutated(0, "segmentation", [[1, 1, 40, 2, 5, 9]]),
        r"annotation 1 \(image a\.png\): polygon 0 point \(40, 2\) is outside the 32x24",
    ),
    "zero-height box": (
        _mutated(0, "bbox", [2, 2, 5, 0.0]),
        r"annotation 1 \(image a\.png\): bbox \[2, 2, 5, 0.0\] has width 5 and height 0",
    ),
    "negative-width box": (
        _mutated(0, "bbox", [2, 2, -1, 3]),
        r"annotation 1 \(image a\.png\): bbox .* width -1 .*expected both > 0",
    ),
    "RLE of another size": (
        _mutated(3, "segmentation", {"size": [21, 28], "counts": [588]}),
        r"annotation 4 \(image sub/b\.jpg\): RLE size \[21, 28\]; expected .*\[20, 28\]",
    ),
    "no segmentation": (
        _mutated(0, "segmentation", None),
        r"annotation 1 \(image a\.png\): no segmentation",
    ),
    "val polygon outside": (
        _mutated(0, "segmentation", [[1, 1, 9, -3, 9, 15]], split=1),
        r"val\.json: annotation 9 \(image c\.png\): polygon 0 point \(9, -3\)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_annotation_is_one_line_naming_file_and_item(export, case):
    (train, val), pattern = BAD_ANNOTATIONS[case]
    _write_json(export / "train.json", train)
    _write_json(export / "val.json", val)
    with pytest.raises(DataError, match=pattern) as info:
        coco.load(data_config(export))
    message = str(info.value)
    assert "\n" not in message
    assert str(export / ("val.json" if case.startswith("val") else "train.json")) in message


BAD_FILES = {
    "empty file": ("", r"train\.json: annotation file is empty"),
    "not JSON": ('{"images": [', r"train\.json: not JSON \(.* line 1"),
    "a list": ("[]", r"train\.json: a JSON list; expected a COCO object"),
    "no annotations key": (
        {"images": [{"id": 1}], "categories": []},
        r"train\.json: no 'annotations' key",
    ),
    "no images": (
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]},
        r"train\.json: annotation file has no images",
    ),
    "image without size": (
        {
            "images": [{"id": 4, "file_name": "a.png"}],
            "annotations": [],
            "categories": [{"id": 1, "name": "x"}],
        },
        r"train\.json: image 4 \(a\.png\) has width=None, height=None",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_annotation_file_is_one_line(export, case):
    content, pattern = BAD_FILES[case]
    _write_json(export / "train.json", content)
    with pytest.raises(DataError, match=pattern) as info:
        coco.load(data_config(export))
    assert "\n" not in str(info.value)


def test_missing_image_file_is_named_or_skipped(export):
    (export / "images" / "sub" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"images/sub/b\.jpg: file of image 5 not found") as info:
        coco.load(data_config(export))
    assert "\n" not in str(info.value) and str(export / "train.json") in str(info.value)
    cfg = data_config(export)
    cfg.skip_bad_examples = True
    assert coco.load(cfg).info.splits == {"train": 1, "validation": 1}


def test_image_size_differing_from_the_file_is_an_error(export):
    train, val = _annotations()
    val["images"][0].update(width=19)
    _write_json(export / "val.json", val)
    with pytest.raises(DataError, match=r"c\.png: image is 18x16 \(WxH\) but .*image 1 as 19x16"):
        coco.load(data_config(export))


def test_splits_must_agree_on_category_names(export):
    train, val = _annotations()
    val["categories"][0]["name"] = "wolf"
    _write_json(export / "val.json", val)
    with pytest.raises(DataError, match=r"val\.json: category 7 is named 'wolf' but 'dog' in"):
        coco.load(data_config(export))


def _with_empty_images(export):
    train, val = _annotations()
    train["images"].append({"id": 40, "file_name": "empty.png", "width": 12, "height": 12})
    val["images"].append({"id": 41, "file_name": "empty.png", "width": 12, "height": 12})
    _write_json(export / "train.json", train)
    _write_json(export / "val.json", val)


def test_empty_images_error_by_default(export):
    _with_empty_images(export)
    with pytest.raises(DataError, match=r"train\.json: image 40 \(empty\.png\) has no annotations"):
        coco.load(data_config(export))


@pytest.mark.parametrize(
    "policy, sizes",
    [("keep", (3, 2)), ("drop", (2, 1)), ("drop_train", (2, 2))],
)
def test_empty_images_policies(export, policy, sizes):
    _with_empty_images(export)
    source = coco.load(data_config(export, empty_images=policy))
    assert source.info.splits == {"train": sizes[0], "validation": sizes[1]}
    empty = [ex for ex in _examples(source, "validation") if ex["id"] == b"empty.png"]
    assert len(empty) == (sizes[1] == 2)
    for ex in empty:  # an all-background example keeps the contract's shapes
        assert ex["masks"].shape == (0, 12, 12) and ex["boxes"].shape == (0, 4)
        assert ex["labels"].shape == ex["is_crowd"].shape == ex["areas"].shape == (0,)


def test_invalid_annotations_can_be_dropped(export):
    (train, val), _ = BAD_ANNOTATIONS["zero-height box"]
    _write_json(export / "train.json", train)
    source = coco.load(data_config(export, invalid_annotations="drop"))
    first = next(ex for ex in _examples(source, "train") if ex["id"] == b"a.png")
    assert first["labels"].tolist() == [2, 2]  # annotation 1 (cat) dropped, both dogs left


def test_options_and_files_key_the_prepared_copy(export):
    cfg = data_config(export)
    first = coco.load(cfg)
    info_file = os.path.join(first.builder.data_dir, "dataset_info.json")
    stamp = os.stat(info_file).st_mtime_ns
    assert coco.load(cfg).builder.data_dir == first.builder.data_dir  # reused as it is
    assert os.stat(info_file).st_mtime_ns == stamp
    _with_empty_images(export)  # the files changed: prepared again, with the new option
    changed = coco.load(data_config(export, empty_images="keep"))
    assert changed.builder.data_dir != first.builder.data_dir
    assert changed.info.splits == {"train": 3, "validation": 2}
    dropped = coco.load(data_config(export, empty_images="drop"))
    assert dropped.builder.data_dir not in (first.builder.data_dir, changed.builder.data_dir)
    assert dropped.info.splits == {"train": 2, "validation": 1}


def test_options_are_checked(export):
    with pytest.raises(ValueError, match=r"label_map='ids'; expected one of 'contiguous'"):
        coco.load(data_config(export, label_map="ids"))
    with pytest.raises(ValueError, match=r"val_json is set but val_images is not"):
        coco.load(data_config(export, val_images=""))
    with pytest.raises(DataError, match=r"train_json: annotation file .*nope\.json not found"):
        coco.load(data_config(export, train_json=str(export / "nope.json")))
    only_train = coco.load(data_config(export, val_json="", val_images=""))
    assert only_train.info.splits == {"train": 2}


def _coco2017_config(root):
    return data_config(root, train_json="", train_images="", val_json="", val_images="")


def test_coco2017_missing_files_give_the_download_instructions(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataError) as info:
        coco.load(_coco2017_config(tmp_path))
    message = str(info.value)
    assert message.startswith("COCO 2017 annotations not found")
    for url in (coco.ANNOTATIONS_URL, coco.TRAIN_URL, coco.VAL_URL):
        assert url in message
    assert "http://images.cocodataset.org/zips/train2017.zip" in message
    assert "http://images.cocodataset.org/annotations/annotations_trainval2017.zip" in message


@pytest.mark.parametrize("as_zips", [True, False], ids=["zips", "extracted"])
def test_coco2017_from_the_manual_dir(export, as_zips):
    """The export rearranged into COCO 2017's layout: the zips as downloaded, or extracted."""
    manual = export / "manual"
    train, val = _annotations()
    members = {
        coco.ANNOTATIONS_ZIP: {
            "annotations/instances_train2017.json": json.dumps(train),
            "annotations/instances_val2017.json": json.dumps(val),
        },
        coco.TRAIN_ZIP: {f"train2017/{f}": f for f in ("a.png", "sub/b.jpg")},
        coco.VAL_ZIP: {"val2017/c.png": "c.png"},
    }
    manual.mkdir()
    for archive, files in members.items():
        for member, content in files.items():
            if archive == coco.ANNOTATIONS_ZIP:
                data = content.encode()
            else:
                data = (export / "images" / content).read_bytes()
            if as_zips:
                with zipfile.ZipFile(manual / archive, "a") as z:
                    z.writestr(member, data)
            else:
                (manual / member).parent.mkdir(parents=True, exist_ok=True)
                (manual / member).write_bytes(data)
    source = coco.load(_coco2017_config(export))
    assert source.info.splits == {"train": 2, "validation": 1}
    assert source.info.class_names == ("__background__", "cat", "dog")
    expected = _reference(export / "train.json", export / "images", {CAT: 1, DOG: 2})
    for ex in _examples(source, "train"):
        np.testing.assert_array_equal(ex["masks"], expected[ex["id"].decode()]["masks"])
