"""Instance augmentation: boxes follow the masks under resize, flip and large-scale jitter,
the image follows them too, determinism from the seed, static shapes, padding and overflow,
and instance-id maps as instances."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from segjax import config
from segjax.data import blobs
from segjax.input import augment, augment_instances
from segjax.models.maskrcnn.transform import resized_size as torchvision_resized_size

SEEDS = range(8)


def extents(mask):
    """(x1, y1, x2 + 1, y2 + 1) of a binary mask, from the pixel coordinates."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def ellipses_example(height=57, width=83, n=5, seed=0, *, disjoint=False):
    """A source example of ``n`` random ellipses (overlapping, as COCO masks may; or
    ``disjoint``), each painted in its own flat colour on black; boxes from the masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    masks, taken = [], np.zeros((height, width), bool)
    while len(masks) < n:
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(4, height / 3), rng.uniform(4, width / 3)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        grown = ((yy - cy) / (ry + 2)) ** 2 + ((xx - cx) / (rx + 2)) ** 2 <= 1
        if mask.sum() < 30 or (disjoint and (grown & taken).any()):
            continue  # disjoint: whole ellipses 2 pixels apart (no thin slivers)
        masks.append(mask)
        taken |= mask
    masks = np.stack(masks).astype(np.uint8)
    colours = rng.integers(30, 255, (n, 3))
    image = np.zeros((height, width, 3), np.uint8)
    for mask, colour in zip(masks, colours):
        image[mask.astype(bool)] = colour
    return {
        "image": image,
        "id": f"ellipses_{seed}",
        "boxes": np.stack([extents(m) for m in masks]),
        "labels": rng.integers(1, 4, n).astype(np.int32),
        "masks": masks,
        "is_crowd": np.arange(n) % 4 == 3,
    }, colours


def train(example, seed, **options):
    options = {"min_size": (40, 64, 100), "max_size": 150, "max_instances": 8} | options
    out = augment_instances.train_transform_instances(
        example, tf.constant([7, seed], tf.int64), **options
    )
    return {k: v.numpy() for k, v in out.items()}


def check_boxes_follow_masks(out, tolerance):
    valid = out["instance_valid"]
    for mask, box in zip(out["masks"][valid], out["boxes"][valid]):
        assert mask.any(), "a valid instance with an empty mask"
        np.testing.assert_allclose(box, extents(mask), atol=tolerance)
    assert not out["masks"][~valid].any() and not out["boxes"][~valid].any()
    assert not out["labels"][~valid].any() and not out["is_crowd"][~valid].any()


def check_padding(out):
    h, w = out["image_size"]
    assert not out["image"][h:].any() and not out["image"][:, w:].any()
    assert not out["masks"][:, h:].any() and not out["masks"][:, :, w:].any()


def test_resize_follows_torchvision_and_boxes_follow_masks():
    example, _ = ellipses_example()
    sizes = set()
    for seed in SEEDS:
        out = train(example, seed, hflip=False)
        chosen = {torchvision_resized_size(57, 83, s, 150) for s in (40, 64, 100)}
        assert tuple(out["image_size"]) in chosen
        sizes.add(tuple(out["image_size"]))
        check_boxes_follow_masks(out, tolerance=1.0)
        check_padding(out)
        assert out["instance_valid"].sum() == 5 and out["num_dropped"] == 0
        np.testing.assert_array_equal(out["labels"][:5], example["labels"])
        np.testing.assert_array_equal(out["is_crowd"][:5], example["is_crowd"])
        assert out["image"].shape == (160, 160, 3) and out["masks"].shape == (8, 160, 160)
    assert len(sizes) >= 2, "min_size is not drawn from the tuple"


def test_flip_mirrors_image_masks_and_boxes():
    example, _ = ellipses_example()
    flipped_seeds = 0
    for seed in SEEDS:
        plain, maybe = train(example, seed, hflip=False), train(example, seed)
        h, w = plain["image_size"]
        if np.array_equal(plain["masks"], maybe["masks"]):
            np.testing.assert_array_equal(plain["image"], maybe["image"])
            continue
        flipped_seeds += 1
        np.testing.assert_array_equal(
            maybe["masks"][:, :h, :w], plain["masks"][:, :h, ::-1][:, :, -w:]
        )
        np.testing.assert_array_equal(maybe["image"][:h, :w], plain["image"][:h, w - 1 :: -1])
        mirrored = plain["boxes"][:5][:, [2, 1, 0, 3]] * [-1, 1, -1, 1] + [w, 0, w, 0]
        np.testing.assert_allclose(maybe["boxes"][:5], mirrored, atol=1e-4)
        check_boxes_follow_masks(maybe, tolerance=1.0)
    assert 0 < flipped_seeds < len(SEEDS)


def colour_inside(out, mask):
    """The median de-normalised colour of the image inside ``mask`` at least 2 pixels from
    its border (bilinear resizing blends the border with the background), or None."""
    inner = ndimage.binary_erosion(mask, iterations=2)
    if not inner.any():
        return None
    image = out["image"] * np.array(augment.IMAGENET_STD) + np.array(augment.IMAGENET_MEAN)
    return np.median(image[inner], axis=0)


def test_large_scale_jitter_crops_pads_and_keeps_boxes_and_image_on_the_masks():
    example, colours = ellipses_example(disjoint=True, seed=3)
    crops = pads = cut = checked = 0
    for seed in range(12):
        out = train(example, seed, pad_size=(64, 64), large_scale_jitter=(0.3, 2.5))
        h, w = out["image_size"]
        crops += h == 64 and w == 64
        pads += w < 64
        check_boxes_follow_masks(out, tolerance=1.0)
        check_padding(out)
        assert out["image"].shape == (64, 64, 3) and out["masks"].shape == (8, 64, 64)
        valid = out["instance_valid"]
        assert valid.sum() + out["num_dropped"] <= 5 and out["num_dropped"] == 0
        cut += int((out["boxes"][valid][:, 2] >= w).sum() + (out["boxes"][valid][:, 0] <= 0).sum())
        for mask in out["masks"][valid]:
            # The image inside the mask has the colour of a source instance: they are aligned.
            colour = colour_inside(out, mask)
            if colour is not None:
                checked += 1
                distance = np.abs(colours - colour).max(axis=1).min()
                assert distance < 8, f"seed {seed}: image and mask disagree ({distance})"
    assert crops and pads and cut and checked > 20, (crops, pads, cut, checked)


def test_instances_cropped_away_are_dropped():
    example, _ = ellipses_example(disjoint=True, seed=3)
    counts = [
        train(example, s, pad_size=(32, 32), large_scale_jitter=(1.5, 2.5))["instance_valid"].sum()
        for s in SEEDS
    ]
    assert min(counts) < 5


def test_same_seed_same_output_other_seeds_differ():
    example, _ = ellipses_example()
    for options in ({}, {"pad_size": (64, 64), "large_scale_jitter": (0.1, 2.0)}):
        a, b = train(example, 3, **options), train(example, 3, **options)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        others = [train(example, s, **options) for s in (4, 5, 6)]
        assert any(not np.array_equal(a["image"], o["image"]) for o in others)


def test_static_shapes_inside_tf_data():
    example, _ = ellipses_example()
    ds = tf.data.Dataset.from_tensors(example).repeat(3).enumerate()
    ds = ds.map(
        lambda i, ex: augment_instances.train_transform_instances(
            ex,
            tf.stack([tf.constant(0, tf.int64), i]),
            min_size=(64,),
            max_size=96,
            max_instances=6,
        )
    )
    shapes = {k: tuple(v.shape) for k, v in ds.element_spec.items()}
    assert shapes == {
        "image": (96, 96, 3),
        "image_size": (2,),
        "boxes": (6, 4),
        "labels": (6,),
        "masks": (6, 96, 96),
        "is_crowd": (6,),
        "instance_valid": (6,),
        "num_dropped": (),
    }
    batch = next(ds.batch(3).as_numpy_iterator())
    assert batch["masks"].shape == (3, 6, 96, 96)


def test_eval_transform_is_deterministic_and_keeps_sizes_and_id():
    example, _ = ellipses_example()
    example["areas"] = example["masks"].sum(axis=(1, 2)).astype(np.float32)
    outs = [
        augment_instances.eval_transform_instances(
            example, min_size=100, max_size=150, max_instances=8
        )
        for _ in range(2)
    ]
    a, b = ({k: v.numpy() for k, v in o.items()} for o in outs)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert tuple(a["image_size"]) == torchvision_resized_size(57, 83, 100, 150)
    assert tuple(a["original_size"]) == (57, 83) and a["id"] == b"ellipses_0"
    np.testing.assert_array_equal(a["areas"][:5], example["areas"])
    check_boxes_follow_masks(a, tolerance=1.0)


def padding_input(pixels):
    """Per-instance fields of len(pixels) instances, instance i covering pixels[i] pixels."""
    n = len(pixels)
    masks = np.zeros((n, 8, 8), np.uint8)
    for i, p in enumerate(pixels):
        masks[i].ravel()[:p] = 1
    return {
        "boxes": np.arange(4 * n, dtype=np.float32).reshape(n, 4),
        "labels": np.arange(1, n + 1, dtype=np.int32),
        "masks": masks,
        "is_crowd": np.zeros(n, bool),
    }


def test_pad_instances_pads_with_zeros_and_flags_valid():
    fields = padding_input([5, 9])
    out = augment_instances.pad_instances(fields, 4, image_id="a.jpg")
    np.testing.assert_array_equal(out["instance_valid"], [True, True, False, False])
    np.testing.assert_array_equal(out["labels"], [1, 2, 0, 0])
    np.testing.assert_array_equal(out["boxes"][:2], fields["boxes"])
    assert not out["boxes"].numpy()[2:].any() and not out["masks"].numpy()[2:].any()
    assert out["num_dropped"] == 0


def test_overflow_error_names_the_image_and_the_count():
    with pytest.raises(tf.errors.InvalidArgumentError, match="image img_42.jpg has 5 instances"):
        augment_instances.pad_instances(padding_input([3] * 5), 4, image_id="img_42.jpg")
    example, _ = ellipses_example()
    ds = tf.data.Dataset.from_tensors(example).map(
        lambda ex: augment_instances.train_transform_instances(
            ex, tf.constant([0, 0], tf.int64), min_size=(64,), max_size=96, max_instances=3
        )
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="ellipses_0 has 5 instances.*=3"):
        next(iter(ds))


def test_drop_smallest_keeps_the_largest_in_order_and_counts():
    pixels = [7, 2, 30, 2, 11, 5]
    out = augment_instances.pad_instances(
        padding_input(pixels), 3, overflow="drop_smallest", image_id="x"
    )
    np.testing.assert_array_equal(out["labels"], [1, 3, 5])  # 7, 30 and 11 pixels
    np.testing.assert_array_equal(out["masks"].numpy().sum(axis=(1, 2)), [7, 30, 11])
    assert out["num_dropped"] == 3 and out["instance_valid"].numpy().all()
    example, _ = ellipses_example()
    kept = train(example, 0, max_instances=2, overflow="drop_smallest")
    assert kept["num_dropped"] == 3 and kept["instance_valid"].all()
    full = train(example, 0, max_instances=8)
    largest = np.argsort(-full["masks"][:5].sum(axis=(1, 2)), kind="stable")[:2]
    np.testing.assert_array_equal(kept["masks"], full["masks"][np.sort(largest)])


def test_image_larger_than_pad_size_names_the_image():
    example, _ = ellipses_example()
    with pytest.raises(tf.errors.InvalidArgumentError, match="ellipses_0 resized to 64x93"):
        train(example, 0, min_size=(64,), max_size=150, pad_size=(64, 64))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"overflow": "clip"}, "overflow='clip'"),
        ({"max_instances": 0}, "max_instances=0"),
        ({"min_size": ()}, "min_size=()"),
        ({"pad_size": (64,)}, "pad_size=(64,)"),
        ({"large_scale_jitter": (2.0, 0.5)}, "scale_range=(2.0, 0.5)"),
    ],
)
def test_bad_options(options, message):
    example, _ = ellipses_example()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(example, 0, **options)


def blobs_instances(seed):
    return blobs.touching_blobs(np.random.default_rng(seed), (40, 56), radius_range=(4, 7))


@pytest.mark.parametrize("as_class_map", [True, False])
def test_instances_from_id_map_round_trips_on_blobs(as_class_map):
    _, instances, classes = blobs_instances(0)
    class_map = np.vectorize(lambda i: classes.get(int(i), 0))(instances).astype(np.uint8)
    out = augment_instances.instances_from_id_map(instances, class_map if as_class_map else classes)
    out = {k: v.numpy() for k, v in out.items()}
    ids = sorted(classes)
    assert len(ids) >= 5 and out["masks"].shape == (len(ids), 40, 56)
    rebuilt = (out["masks"].astype(np.int64) * np.array(ids)[:, None, None]).sum(axis=0)
    np.testing.assert_array_equal(rebuilt, instances)
    np.testing.assert_array_equal(out["labels"], [classes[i] for i in ids])
    for mask, box in zip(out["masks"], out["boxes"]):
        np.testing.assert_array_equal(box, extents(mask))
    np.testing.assert_array_equal(out["areas"], out["masks"].sum(axis=(1, 2)))
    assert not out["is_crowd"].any()


def test_id_map_instances_go_through_the_train_transform():
    image, instances, classes = blobs_instances(1)
    example = augment_instances.instances_from_id_map(instances, classes)
    example["image"] = np.repeat(image[..., None], 3, axis=2)
    out = train(example, 0, max_instances=64)
    assert out["instance_valid"].sum() == len(classes)
    check_boxes_follow_masks(out, tolerance=1.0)


def test_instances_from_id_map_refuses_bad_classes():
    _, instances, classes = blobs_instances(0)
    missing = dict(list(classes.items())[1:])
    with pytest.raises(tf.errors.InvalidArgumentError, match="has no class in the table"):
        augment_instances.instances_from_id_map(instances, missing)
    split = np.where(instances > 0, 1, 0).astype(np.uint8)
    split[np.nonzero(instances == sorted(classes)[0])[0][0]] = 2  # one row of one instance
    with pytest.raises(tf.errors.InvalidArgumentError, match="spans several classes"):
        augment_instances.instances_from_id_map(instances, split * (instances > 0))


def test_options_from_the_config():
    data = config.base_config().data
    options = augment_instances.train_options(data)
    assert options["min_size"] == (800,) and options["max_size"] == 1333
    assert options["large_scale_jitter"] is None and options["pad_size"] is None
    assert augment_instances.default_pad_size(1333) == (1344, 1344)
    data = ml_collections.ConfigDict(data.to_dict())
    data.instances.min_size = (480, 512, 544)
    data.instances.large_scale_jitter.enabled = True
    data.instances.pad_size = (512, 512)
    assert augment_instances.train_options(data)["large_scale_jitter"] == (0.1, 2.0)
    evaluation = augment_instances.eval_options(data)
    assert evaluation["min_size"] == 544 and evaluation["pad_size"] == (512, 512)


def test_an_image_without_instances_gives_all_invalid_entries():
    example, _ = ellipses_example()
    empty = {
        "image": example["image"],
        "id": "empty.jpg",
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int32),
        "masks": np.zeros((0, 57, 83), np.uint8),
        "is_crowd": np.zeros(0, bool),
    }
    for options in ({}, {"pad_size": (64, 64), "large_scale_jitter": (0.1, 2.0)}):
        out = train(empty, 1, **options)
        assert not out["instance_valid"].any() and not out["masks"].any()
        assert out["num_dropped"] == 0
    out = augment_instances.eval_transform_instances(empty, min_size=64, max_size=96)
    assert out["masks"].shape == (100, 96, 96) and not out["instance_valid"].numpy().any()
