"""The built-in ``instance_shapes`` dataset: preparation, the instance contract, occlusion,
the drop rule, separable classes and determinism."""

import time

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from segjax.data import instance_shapes


def load(data_dir, config_name="tiny"):
    return instance_shapes.load(
        ml_collections.ConfigDict({"data_dir": str(data_dir), "config_name": config_name})
    )


def read_split(source, split):
    return list(source.as_dataset(split).as_numpy_iterator())


def extents(mask):
    """(x1, y1, x2 + 1, y2 + 1) of a binary mask, from the pixel coordinates."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The tiny config prepared once, with its preparation time."""
    start = time.perf_counter()
    source = load(tmp_path_factory.mktemp("tfds"))
    return source, time.perf_counter() - start


def test_prepares_in_seconds_with_the_instance_info(prepared):
    source, seconds = prepared
    assert seconds < 30, f"preparing the tiny config took {seconds:.1f} s"
    info = source.info
    assert info.task == "instance"
    assert info.class_names == ("__background__", "circle", "square", "triangle")
    assert info.num_classes == 4
    assert info.fields == ("boxes", "labels", "masks", "is_crowd", "areas")
    assert info.category_ids == ()
    assert info.splits == instance_shapes.TINY_SPLIT_SIZES


def test_examples_follow_the_contract(prepared):
    source, _ = prepared
    size = instance_shapes.IMAGE_SIZE
    ids = set()
    for split in ("train", "validation"):
        for ex in read_split(source, split):
            n = len(ex["labels"])
            assert 1 <= n <= instance_shapes.MAX_OBJECTS
            assert ex["image"].shape == (size, size, 3) and ex["image"].dtype == np.uint8
            assert ex["masks"].shape == (n, size, size) and ex["masks"].dtype == np.uint8
            assert ex["boxes"].shape == (n, 4) and ex["boxes"].dtype == np.float32
            assert ex["labels"].dtype == np.int32 and set(ex["labels"]) <= {1, 2, 3}
            assert ex["is_crowd"].dtype == bool and not ex["is_crowd"].any()
            assert set(np.unique(ex["masks"])) <= {0, 1}
            assert ex["masks"].sum(axis=0).max() == 1, "visible parts overlap"
            pixels = ex["masks"].sum(axis=(1, 2))
            np.testing.assert_array_equal(ex["areas"], pixels.astype(np.float32))
            assert pixels.min() >= instance_shapes.MIN_VISIBLE_PIXELS
            for mask, box in zip(ex["masks"], ex["boxes"]):
                np.testing.assert_array_equal(box, extents(mask))
            ids.add(ex["id"])
    assert len(ids) == sum(instance_shapes.TINY_SPLIT_SIZES.values())


def test_objects_occlude_each_other():
    """Later objects cover parts of earlier ones: visible parts of different objects touch
    (a drawn object's outline cuts into the one below), in a good share of the images."""
    touching = 0
    for index in range(40):
        masks = instance_shapes.make_example(index)["masks"].astype(bool)
        grown = [ndimage.binary_dilation(m) for m in masks]
        pairs = [(i, j) for i in range(len(masks)) for j in range(i)]
        touching += any((grown[i] & masks[j]).any() for i, j in pairs)
    assert touching >= 10, f"only {touching} of 40 images have touching objects"


def test_heavily_occluded_objects_are_removed_from_the_scene():
    """No unlabelled object remains visible: every non-background pixel of the image away
    from the labelled objects looks like the background (grey, not a class colour)."""
    for index in range(40):
        ex = instance_shapes.make_example(index)
        labelled = ndimage.binary_dilation(ex["masks"].any(axis=0), iterations=2)
        rest = ex["image"][~labelled].astype(np.float32)
        chroma = rest.max(axis=1) - rest.min(axis=1)  # grey background: channels close
        coloured = int((chroma > 60).sum())
        assert coloured < 10, f"example {index}: {coloured} coloured unlabelled pixels"


def test_classes_are_separable_by_colour():
    """Each instance's mean colour is nearest to its own class's mean colour (what makes the
    dataset learnable in minutes)."""
    colours, labels = [], []
    for index in range(60):
        ex = instance_shapes.make_example(index)
        for mask, label in zip(ex["masks"].astype(bool), ex["labels"]):
            colours.append(ex["image"][mask].mean(axis=0))
            labels.append(label)
    colours, labels = np.array(colours), np.array(labels)
    centres = np.stack([colours[labels == k].mean(axis=0) for k in (1, 2, 3)])
    nearest = np.argmin(((colours[:, None] - centres[None]) ** 2).sum(-1), axis=1) + 1
    assert (nearest == labels).mean() > 0.97


def test_two_prepares_give_identical_data(prepared, tmp_path):
    source, _ = prepared
    again = load(tmp_path)
    for split in ("train", "validation"):
        for a, b in zip(read_split(source, split), read_split(again, split), strict=True):
            assert a.keys() == b.keys()
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_examples_differ_across_indices_splits_and_seeds():
    reference = instance_shapes.make_example(0)["image"]
    others = [
        instance_shapes.make_example(1)["image"],
        instance_shapes.make_example(0, "validation")["image"],
        instance_shapes.make_example(0, seed=1)["image"],
    ]
    for other in others:
        assert not np.array_equal(reference, other)
    np.testing.assert_array_equal(reference, instance_shapes.make_example(0)["image"])


def test_unknown_config_name(tmp_path):
    with pytest.raises(ValueError, match="config_name='huge'.*configs: default, tiny"):
        load(tmp_path, "huge")


def test_source_examples_go_through_the_instance_transforms(prepared):
    from segjax.input import augment_instances

    source, _ = prepared
    options = {"max_size": 128, "max_instances": instance_shapes.MAX_OBJECTS}
    train = (
        source.as_dataset("train")
        .enumerate()
        .map(
            lambda i, ex: augment_instances.train_transform_instances(
                ex, tf.stack([tf.constant(0, tf.int64), i]), min_size=(96, 128), **options
            )
        )
    )
    batch = next(train.batch(4).as_numpy_iterator())
    assert batch["image"].shape == (4, 128, 128, 3)
    assert batch["masks"].shape == (4, instance_shapes.MAX_OBJECTS, 128, 128)
    evaluation = source.as_dataset("validation").map(
        lambda ex: augment_instances.eval_transform_instances(ex, min_size=128, **options)
    )
    for ex, out in zip(read_split(source, "validation"), evaluation.as_numpy_iterator()):
        n = len(ex["labels"])
        assert out["id"] == ex["id"] and out["instance_valid"].sum() == n
        np.testing.assert_array_equal(out["masks"][:n], ex["masks"])  # 128 → 128: unchanged
        np.testing.assert_array_equal(out["boxes"][:n], ex["boxes"])
        np.testing.assert_array_equal(out["areas"][:n], ex["areas"])
