"""``instance_shapes``: the built-in synthetic instance-segmentation dataset (no download).

The instance variant of :mod:`segjax.data.shapes`, sized so that a tiny Mask R-CNN learns it on
a CPU in minutes. Each example is a 128×128 RGB image holding 1–6 objects of three classes on
a muted, slightly noisy grey gradient:

- 1 ``circle``: warm red/orange, smooth;
- 2 ``square`` (rotated): green, with stripes along a random direction;
- 3 ``triangle`` (equilateral, rotated): blue, speckled.

Objects are large (radius 16–32 pixels), each has a per-instance brightness and a darker
outline, so two touching objects of one class can still be told apart. Later objects occlude
earlier ones; an object's mask is its visible part. An object left with fewer than
:data:`MIN_VISIBLE_PIXELS` visible pixels, or less than :data:`MIN_VISIBLE_FRACTION` of its
in-image area, is removed from the scene before drawing (not just from the labels, so every
visible object is labelled); removing objects only uncovers earlier ones, so what is kept stays
above both limits. Boxes are the masks' pixel extents ``(x1, y1, x2 + 1, y2 + 1)``, as a COCO
``bbox`` of the same mask.

Examples follow the instance contract (``boxes``, ``labels`` 1..3, ``masks``, ``is_crowd``
all False, ``areas`` the mask pixel counts). Everything is a pure function of
``(seed, split, index)``; the ``default`` config (500 train / 100 validation images) prepares
under the TFDS ``data_dir`` in a few seconds, ``tiny`` (24 / 8) is for tests.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

from segjax.data.base import Source
from segjax.data.shapes import ShapesConfig  # split sizes per config, as for shapes
from segjax.errors import ConfigError
from segjax.runtime.lazy_imports import tf

CLASS_NAMES = ("__background__", "circle", "square", "triangle")
CIRCLE, SQUARE, TRIANGLE = 1, 2, 3
IMAGE_SIZE = 128
MAX_OBJECTS = 6
RADIUS_RANGE = (16.0, 32.0)
MIN_VISIBLE_PIXELS = 100
MIN_VISIBLE_FRACTION = 0.3
SPLIT_SIZES = {"train": 500, "validation": 100}  # the "default" config
TINY_SPLIT_SIZES = {"train": 24, "validation": 8}  # the "tiny" config (tests)
FIELDS = ("boxes", "labels", "masks", "is_crowd", "areas")
_SPLIT_IDS = {"train": 0, "validation": 1}
_SEED = 20261616
# Per class: mean RGB colour; instances vary around it (distinct hue families per class).
_CLASS_COLOURS = {CIRCLE: (210, 80, 50), SQUARE: (60, 175, 75), TRIANGLE: (60, 95, 215)}


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A muted grey gradient with weak noise: float ``[S, S, 3]``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    angle = rng.uniform(0, 2 * np.pi)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    level = rng.uniform(100, 150) + rng.uniform(-25, 25) * t
    tint = rng.uniform(-8, 8, 3)
    image = level[..., None] + tint + rng.normal(0, 4, (size, size, 3))
    return image.astype(np.float32)


def _shape_region(kind: int, rng: np.random.Generator, size: int) -> tuple[np.ndarray, float]:
    """A random object of class ``kind``: ``(bool [S, S] region, rotation angle)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = rng.uniform(*RADIUS_RANGE)
    cx, cy = rng.uniform(r * 0.7, size - r * 0.7, 2)
    dx, dy = xx - cx, yy - cy
    theta = rng.uniform(0, 2 * np.pi)
    if kind == CIRCLE:
        return dx**2 + dy**2 <= r**2, theta
    if kind == SQUARE:  # half-side 0.8 r: about the circle's area
        u = np.cos(theta) * dx + np.sin(theta) * dy
        v = -np.sin(theta) * dx + np.cos(theta) * dy
        return np.maximum(np.abs(u), np.abs(v)) <= r * 0.8, theta
    inside = np.ones_like(dx, dtype=bool)  # triangle: inside three half-planes
    for k in range(3):
        a = theta + 2 * np.pi * k / 3
        inside &= np.cos(a) * dx + np.sin(a) * dy <= r * 0.6
    return inside, theta


def _texture(kind: int, rng: np.random.Generator, theta: float, size: int) -> np.ndarray:
    """The class's texture, float ``[S, S, 1]`` around 0: smooth, stripes or speckles."""
    if kind == CIRCLE:
        return rng.normal(0, 3, (size, size, 1))
    if kind == SQUARE:
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        phase = rng.uniform(0, 2 * np.pi)
        stripes = np.sin(2 * np.pi * (np.cos(theta) * xx + np.sin(theta) * yy) / 6.0 + phase)
        return 22.0 * stripes[..., None]
    return rng.normal(0, 22, (size, size, 1))


def _visible_parts(regions: list[np.ndarray]) -> list[np.ndarray]:
    """Each region minus the union of the regions drawn after it (later ones occlude)."""
    covered = np.zeros_like(regions[0]) if regions else None
    visible = [None] * len(regions)
    for i in range(len(regions) - 1, -1, -1):
        visible[i] = regions[i] & ~covered
        covered = covered | regions[i]
    return visible


def boxes_of(masks: np.ndarray) -> np.ndarray:
    """Pixel extents ``(x1, y1, x2 + 1, y2 + 1)`` of non-empty ``masks [N, H, W]``: float32
    ``[N, 4]`` (COCO's ``bbox`` of a mask, as corners)."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def make_example(index: int, split: str = "train", seed: int = _SEED, size: int = IMAGE_SIZE):
    """Generates example ``index`` of ``split`` (see the module docstring).

    Returns:
      ``{"image": uint8 [S, S, 3], "masks": uint8 [N, S, S], "labels": int32 [N],
      "boxes": float32 [N, 4]}`` with ``N >= 1`` and disjoint masks in drawing order.
    """
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    image = _background(rng, size)
    objects = []
    for _ in range(rng.integers(1, MAX_OBJECTS + 1)):
        kind = int(rng.integers(1, 4))
        region, theta = _shape_region(kind, rng, size)
        objects.append((kind, region, theta))
    visible = _visible_parts([region for _, region, _ in objects])
    # Drop heavily occluded objects from the scene; what stays only gains visible pixels.
    objects = [
        obj
        for obj, vis in zip(objects, visible)
        if vis.sum() >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * obj[1].sum())
    ]
    for kind, region, theta in objects:
        colour = np.asarray(_CLASS_COLOURS[kind]) + rng.uniform(-20, 20, 3)
        colour = colour * rng.uniform(0.8, 1.15)
        fill = colour + _texture(kind, rng, theta, size)
        outline = region & ~ndimage.binary_erosion(region, iterations=2)
        fill = np.where(outline[..., None], fill * 0.45, fill)
        image = np.where(region[..., None], fill, image)
    masks = np.stack(_visible_parts([region for _, region, _ in objects])).astype(np.uint8)
    return {
        "image": np.clip(np.round(image), 0, 255).astype(np.uint8),
        "masks": masks,
        "labels": np.array([kind for kind, _, _ in objects], np.int32),
        "boxes": boxes_of(masks),
    }


class InstanceShapes(tfds.core.GeneratorBasedBuilder):
    """Procedural instance-segmentation shapes (see the module docstring).

    Stored per example: the image, ``file_name``, ``instances`` (uint8 ``[S, S]``: instance
    ``i`` of the lists has id ``i + 1``, 0 = background; the visible parts are disjoint, so one
    id map holds every mask at 1/N of the size of the stacked masks), ``labels`` and ``boxes``.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ShapesConfig(name="default", split_sizes=SPLIT_SIZES, description="500 / 100"),
        ShapesConfig(name="tiny", split_sizes=TINY_SPLIT_SIZES, description="24 / 8"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "file_name": tfds.features.Text(),
                    "instances": tfds.features.Tensor(
                        shape=(IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8, encoding="zlib"
                    ),
                    "labels": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                    "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self.builder_config.split_sizes}

    def _generate_examples(self, split):
        for index in range(self.builder_config.split_sizes[split]):
            ex = make_example(index, split)
            ids = np.arange(1, len(ex["masks"]) + 1, dtype=np.uint8)
            instances = (ex["masks"] * ids[:, None, None]).sum(axis=0).astype(np.uint8)
            key = f"{split}_{index:05d}"
            yield (
                key,
                {
                    "image": ex["image"],
                    "file_name": key,
                    "instances": instances,
                    "labels": ex["labels"],
                    "boxes": ex["boxes"],
                },
            )


def instance_example(ex: dict) -> dict:
    """The contract's example (``image``, ``id``, ``boxes``, ``labels``, ``masks``,
    ``is_crowd``, ``areas``) of one stored ``instance_shapes`` example, inside ``tf.data``."""
    labels = ex["labels"]
    ids = tf.range(1, tf.shape(labels)[0] + 1, dtype=tf.int32)
    instances = tf.cast(ex["instances"], tf.int32)
    masks = tf.cast(tf.equal(instances[None], ids[:, None, None]), tf.uint8)
    return {
        "image": ex["image"],
        "id": ex["file_name"],
        "boxes": ex["boxes"],
        "labels": labels,
        "masks": masks,
        "is_crowd": tf.zeros_like(labels, tf.bool),
        "areas": tf.cast(tf.reduce_sum(tf.cast(masks, tf.int32), axis=[1, 2]), tf.float32),
    }


def load(data_config) -> Source:
    """Prepares (first use only) and returns the ``instance_shapes`` source.

    Reads ``data_config.data_dir`` (``""``: the TFDS default) and ``data_config.config_name``
    (``"default"`` or ``""``, or ``"tiny"``).

    Raises:
      ValueError: an unknown ``config_name`` (the message lists the configs).
    """
    config_name = data_config.config_name
    names = [c.name for c in InstanceShapes.BUILDER_CONFIGS]
    if config_name and config_name not in names:
        raise ConfigError(
            f"config.data.config_name={config_name!r}: instance_shapes has no such config; "
            f"configs: {', '.join(names)}"
        )
    builder = InstanceShapes(data_dir=data_config.data_dir or None, config=config_name or "default")
    builder.download_and_prepare()
    return Source.from_builder(
        builder,
        name="instance_shapes",
        class_names=CLASS_NAMES,
        to_example=instance_example,
        fields=FIELDS,
        task="instance",
        category_ids=(),
    )
