"""``shapes``: the built-in procedural dataset, so segjax trains anywhere with no download.

Each example is a 64×64 RGB image: a textured background (smooth colour gradient, stripes and
noise) with 1–3 overlapping shapes (circle, square, triangle; random size, rotation, colour
and texture; later shapes occlude earlier ones). The mask holds class ids
(0 background, 1 circle, 2 square, 3 triangle) and, like VOC, 255 on a thin band along every
object boundary. Everything is a pure function of ``(seed, split, index)``, so the dataset is
identical on every machine; it prepares itself under the TFDS ``data_dir`` in a few seconds.
"""

import numpy as np
import tensorflow_datasets as tfds

from segjax.data import builders
from segjax.data.base import Source
from segjax.errors import ConfigError
from segjax.evaluation.metrics import IGNORE_INDEX

CLASS_NAMES = ("background", "circle", "square", "triangle")
IMAGE_SIZE = 64
SPLIT_SIZES = {"train": 2000, "validation": 200}  # the "default" config
TINY_SPLIT_SIZES = {"train": 96, "validation": 40}  # the "tiny" config (tests)
_SPLIT_IDS = {"train": 0, "validation": 1}
_SEED = 20261122


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    freq = rng.uniform(2, 10)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin(2 * np.pi * freq * (np.sin(angle) * xx - np.cos(angle) * yy) + phase)
    img += rng.uniform(0, 40) * stripes[..., None]
    img += rng.normal(0, rng.uniform(2, 15), img.shape)
    return img


def _shape_mask(kind: int, rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = rng.uniform(8, 16)
    cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
    dx, dy = xx - cx, yy - cy
    theta = rng.uniform(0, 2 * np.pi)
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = -np.sin(theta) * dx + np.cos(theta) * dy
    if kind == 1:  # circle
        return dx**2 + dy**2 <= r**2
    if kind == 2:  # square with half-side r * 0.85
        return np.maximum(np.abs(u), np.abs(v)) <= r * 0.85
    # equilateral triangle with circumradius r * 1.2: inside three half-planes
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = theta + 2 * np.pi * k / 3
        inside &= np.cos(a) * dx + np.sin(a) * dy <= r * 0.6
    return inside


def make_example(index: int, split: str = "train", seed: int = _SEED, size: int = IMAGE_SIZE):
    """Generates example ``index`` of ``split``: ``(image uint8 [S,S,3], mask uint8 [S,S])``."""
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    image = _background(rng, size)
    labels = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):
        kind = int(rng.integers(1, 4))
        region = _shape_mask(kind, rng, size)
        colour = rng.uniform(0, 255, 3)
        texture = rng.normal(0, rng.uniform(0, 20), (size, size, 1))
        image = np.where(region[..., None], colour + texture, image)
        labels[region] = kind
    # VOC-style ignore band: pixels whose 4-neighbourhood holds another label.
    padded = np.pad(labels, 1, mode="edge")
    boundary = np.zeros_like(labels, dtype=bool)
    for sy, sx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        boundary |= padded[sy : sy + size, sx : sx + size] != labels
    mask = np.where(boundary, IGNORE_INDEX, labels).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8), mask


class ShapesConfig(tfds.core.BuilderConfig):
    """Split sizes of a ``shapes`` variant."""

    def __init__(self, *, split_sizes: dict[str, int], **kwargs):
        super().__init__(**kwargs)
        self.split_sizes = split_sizes


class Shapes(tfds.core.GeneratorBasedBuilder):
    """Procedural shapes segmentation dataset (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        ShapesConfig(name="default", split_sizes=SPLIT_SIZES, description="2,000 / 200"),
        ShapesConfig(name="tiny", split_sizes=TINY_SPLIT_SIZES, description="96 / 40, tests"),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return builders.segmentation_info(self, __doc__, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in self.builder_config.split_sizes}

    def _generate_examples(self, split):
        for index in range(self.builder_config.split_sizes[split]):
            image, mask = make_example(index, split)
            key = f"{split}_{index:05d}"
            yield key, {"image": image, "segmentation_mask": mask[..., None], "file_name": key}


def load(data_dir: str | None, config_name: str = "") -> Source:
    """Prepares (first use only) and returns the ``shapes`` source.

    Args:
      data_dir: TFDS data_dir (None: the TFDS default).
      config_name: "default" (or "") or "tiny".
    """
    names = [c.name for c in Shapes.BUILDER_CONFIGS]
    if config_name and config_name not in names:
        raise ConfigError(f"shapes has no config {config_name!r}; configs: {', '.join(names)}")
    builder = Shapes(data_dir=data_dir, config=config_name or "default")
    builder.download_and_prepare()
    return Source.from_builder(builder, name="shapes", class_names=CLASS_NAMES)
