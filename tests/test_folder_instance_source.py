"""Folder datasets with instance-id masks as instance (Mask R-CNN) data
(``config.data.folder_task = "instance"``): the examples against the mask files, a few training
steps with COCO evaluation, and the option's errors."""

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from segjax import config as config_lib
from segjax import data as data_lib
from segjax import trainer
from segjax.data import folder
from segjax.data.image_io import DataError
from segjax.models.maskrcnn import losses as maskrcnn_losses
from tests.helpers import load_config

CLASS_NAMES = ("background", "odd", "even")


def parity_class(instance_id: int) -> int:
    """The class the test's table gives an instance: 1 for odd ids, 2 for even ones."""
    return 2 if instance_id % 2 == 0 else 1


@pytest.fixture(scope="module")
def classes_root(blobs_root, tmp_path_factory):
    """A copy of the session's blobs folder with a class table (two classes, by id parity)
    written from the mask files; and a TFDS data_dir for it."""
    tmp = tmp_path_factory.mktemp("folder_instances")
    root = tmp / "blobs"
    shutil.copytree(blobs_root, root, ignore=shutil.ignore_patterns("tfds"))
    table = {}
    for path in sorted((root / "masks").glob("*/*.png")):
        ids = np.unique(np.asarray(Image.open(path)))
        table[f"{path.parent.name}/{path.stem}"] = {str(i): parity_class(i) for i in ids if i}
    (root / "instance_classes.json").write_text(json.dumps(table))
    (root / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    return root, str(tmp / "tfds")


def folder_data(root, data_dir, cfg=None, **overrides):
    """``cfg`` (default: the schema's ``config.data``) set to read the instance-mask folder
    ``root`` as instance data."""
    cfg = config_lib.base_config().data if cfg is None else cfg
    cfg.update(
        {
            "name": "folder",
            "root": str(root),
            "data_dir": data_dir,
            "mask_type": "instance",
            "instance_classes": "instance_classes.json",
            "folder_task": "instance",
            **overrides,
        }
    )
    return cfg


def expected_objects(mask_path):
    """The objects of one instance-id PNG, computed with NumPy alone: ids in increasing order,
    their masks, boxes ``(x1, y1, x2 + 1, y2 + 1)`` and labels."""
    id_map = np.asarray(Image.open(mask_path)).astype(np.int64)
    ids = [int(i) for i in np.unique(id_map) if i]
    masks = np.stack([id_map == i for i in ids]).astype(np.uint8)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))
    labels = [parity_class(i) for i in ids]
    return masks, np.asarray(boxes, np.float32), np.asarray(labels, np.int32)


def test_instance_examples_match_the_id_masks(classes_root):
    root, data_dir = classes_root
    source = data_lib.get_source(folder_data(root, data_dir))
    info = source.info
    assert (info.task, info.fields, info.category_ids) == (
        "instance",
        ("boxes", "labels", "masks", "is_crowd", "areas"),
        (),
    )
    assert info.class_names == ("__background__", "odd", "even") and info.num_classes == 3
    assert info.splits == {"train": 8, "val": 4}
    seen_labels = set()
    for split, count in info.splits.items():
        examples = list(source.as_dataset(split).as_numpy_iterator())
        assert len(examples) == count
        for ex in examples:
            stem = ex["id"].decode()
            assert set(ex) == {"image", "id", *info.fields}, stem
            masks, boxes, labels = expected_objects(root / "masks" / split / f"{stem}.png")
            grey = np.asarray(Image.open(root / "images" / split / f"{stem}.png"))
            np.testing.assert_array_equal(ex["image"], np.repeat(grey[..., None], 3, axis=-1))
            assert ex["masks"].dtype == np.uint8 and ex["boxes"].dtype == np.float32
            np.testing.assert_array_equal(ex["masks"], masks, err_msg=stem)
            np.testing.assert_array_equal(ex["boxes"], boxes, err_msg=stem)
            np.testing.assert_array_equal(ex["labels"], labels, err_msg=stem)
            np.testing.assert_array_equal(ex["areas"], masks.sum(axis=(1, 2)), err_msg=stem)
            assert ex["is_crowd"].dtype == bool and not ex["is_crowd"].any()
            seen_labels.update(labels.tolist())
    assert seen_labels == {1, 2}
    # The semantic reading is the same prepared dataset (same fingerprint, nothing re-read).
    semantic = data_lib.get_source(folder_data(root, data_dir, folder_task="semantic"))
    assert semantic.info.task == "semantic" and semantic.info.fields == ("instances",)
    assert semantic.info.class_names == CLASS_NAMES
    assert semantic.builder.builder_config.name == source.builder.builder_config.name


def test_without_a_class_table_every_instance_is_class_1(blobs_root, tmp_path):
    cfg = folder_data(blobs_root, str(tmp_path / "tfds"), instance_classes="")
    source = data_lib.get_source(cfg)
    assert source.info.class_names == ("__background__", "cell")  # from its classes.txt
    ex = next(source.as_dataset("val").as_numpy_iterator())
    assert len(ex["labels"]) > 1 and (ex["labels"] == 1).all()


def test_mask_rcnn_trains_on_a_folder_and_reports_coco_ap(classes_root, tmp_path):
    root, data_dir = classes_root
    config = load_config("maskrcnn_quickstart.py")
    config.runtime.conv_impl = "xla"  # compile time; the matmul forms: test_ops_conv
    folder_data(root, data_dir, config.data, train_split="train", eval_split="val")
    config.model.num_classes = 3
    inst = config.data.instances
    inst.min_size, inst.max_size, inst.pad_size = (32,), 32, (32, 32)  # the images' own size
    inst.max_instances = 32  # overflow stays "error": a crowded image would fail loudly
    summary = trainer.run(config, str(tmp_path / "run"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train_rows = [r for r in rows if "split" not in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    for row in train_rows:
        assert all(math.isfinite(row[k]) for k in ("loss", *maskrcnn_losses.LOSS_NAMES)), row
    for key in ("bbox/AP", "segm/AP", "segm/AP50"):
        assert -1 <= summary[key] <= 1, key
    assert summary["step"] == 4


def assert_one_line_value_error(excinfo, *parts):
    """The error is a plain ValueError (a config problem, not a file's) of one line holding
    every one of ``parts``."""
    message = str(excinfo.value)
    assert not isinstance(excinfo.value, DataError), message
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message


@pytest.mark.parametrize(
    "overrides, words",
    [
        (
            {"mask_type": "class", "instance_classes": ""},
            ["config.data.folder_task='instance'", "mask_type='instance'", "'class'"],
        ),
        (
            {"weight_map": {"enabled": True}},
            ["config.data.weight_map.enabled=True", "folder_task='instance'", "expected False"],
        ),
        (
            {"folder_task": "detection"},
            ["config.data.folder_task='detection'", "'semantic' or 'instance'"],
        ),
        (
            {"name": "instance_shapes", "mask_type": "class", "instance_classes": ""},
            ["config.data.folder_task='instance'", "config.data.name='folder'", "'semantic'"],
        ),
    ],
)
def test_bad_combinations_name_the_key_and_the_expected_value(
    classes_root, tmp_path, overrides, words
):
    root, _ = classes_root
    cfg = folder_data(root, str(tmp_path / "tfds"))
    cfg.update(overrides)
    with pytest.raises(ValueError) as excinfo:
        data_lib.get_source(cfg)
    assert_one_line_value_error(excinfo, *words)
    assert not (tmp_path / "tfds").exists()  # refused before anything was prepared
    if overrides.get("name", "folder") == "folder":  # folder.load itself checks, too
        with pytest.raises(ValueError, match="folder_task"):
            folder.load(cfg)
