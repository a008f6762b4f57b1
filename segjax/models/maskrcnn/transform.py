"""torchvision's ``GeneralizedRCNNTransform`` on the host, with a bounded set of padded sizes.

Per image (NumPy, before the jit): floats in [0, 1] (uint8 is divided by 255) normalised with
ImageNet's mean/std, then resized so the shorter side is ``min_size`` unless the longer would
exceed ``max_size`` — torchvision's scale ``min(min_size / short, max_size / long)`` (a Python
float in its eager transform),
output size ``floor(side · scale)`` (``recompute_scale_factor=True``), bilinear with half-pixel
centres and no antialiasing (``F.interpolate(mode="bilinear", align_corners=False)``).

Batching: torchvision zero-pads a batch to its largest image rounded up to ``size_divisible``;
a jitted model would then compile once per distinct padded size. Here every batch is padded
to the smallest of a few fixed *buckets* that holds all its images. The default buckets for
``min_size`` s and ``max_size`` m (sizes rounded up to ``size_divisible``) are the square
(s, s), the 4:3 (s, 4s/3) and the longest (s, m) landscape shapes and the two portrait ones —
800×800, 800×1088, 800×1344, 1088×800, 1344×800 by default — and every single resized image fits
one of them; a batch mixing landscape and portrait images falls back to (m, m). So a folder of
any sizes compiles the model at most six times per batch size (five when batches are grouped
by bucket, as :func:`segjax.models.maskrcnn.predict_images` does). For images whose padded size
equals torchvision's (4:3 photos such as COCO's 640×480 → 800×1066 in an 800×1088 bucket) the
results are torchvision's exactly; a larger bucket changes the features near the image border a
little (the convs see more zero padding) and the stride of P6 (padded size // feature size).

Back to the original image: the model scales its boxes by ``original / resized`` per axis when
given ``original_sizes`` (torchvision's ``resize_boxes``), and :func:`paste_masks` pastes the
28×28 masks at the original size (torchvision's ``paste_masks_in_image``); thresholding at 0.5
is the caller's.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from segjax.data.image_io import DataError
from segjax.errors import ConfigError
from segjax.ops import roi_align

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def resized_size(height: int, width: int, min_size: int, max_size: int) -> tuple[int, int]:
    """torchvision's resized ``(height, width)``: ``floor(side · scale)``.

    The scale is a Python (float64) number, as torchvision 0.29's eager transform computes it
    (measured: 480×640 at 800 → 800×1066; 61×83 at 64 → 64×87).
    """
    scale = min(min_size / min(height, width), max_size / max(height, width))
    return int(math.floor(height * scale)), int(math.floor(width * scale))


def _bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's bilinear source taps ``(index0, index1, weight1)`` for one axis.

    ``align_corners=False`` with an output size given: ``src = (dst + 0.5) · in/out − 0.5``
    clamped at 0 (float32, as PyTorch's CPU kernel), lower tap ``floor(src)``, upper tap one
    further unless at the last row.
    """
    ratio = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * ratio - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    index0 = src.astype(np.int64)
    index1 = np.minimum(index0 + 1, n_in - 1)
    return index0, index1, (src - index0.astype(np.float32)).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of ``image [H, W, C]`` to ``size`` (h, w), as PyTorch (no antialias).

    Separable: rows first, then columns, each output a two-tap blend in float32.
    """
    h, w = size
    if image.shape[:2] == (h, w):
        return image.astype(np.float32, copy=False)
    y0, y1, wy = _bilinear_taps(image.shape[0], h)
    x0, x1, wx = _bilinear_taps(image.shape[1], w)
    rows = image[y0] * (1 - wy)[:, None, None] + image[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def check_image(image: np.ndarray, index: int) -> None:
    """Raises a one-line DataError naming image ``index`` unless it is ``[H, W, 3]`` uint8/float."""
    shape, dtype = np.shape(image), np.asarray(image).dtype
    if len(shape) != 3 or shape[-1] != 3 or min(shape[:2]) < 1:
        raise DataError(
            f"maskrcnn transform: image {index} has shape {shape}, expected [H, W, 3] RGB "
            "(convert grayscale / RGBA first)"
        )
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise DataError(
            f"maskrcnn transform: image {index} has dtype {dtype}, expected uint8 or float "
            "in [0, 1]"
        )


def _as_rgb_float(image: np.ndarray, index: int) -> np.ndarray:
    """``image`` as float32 ``[H, W, 3]`` in [0, 1] (uint8 / 255), after :func:`check_image`."""
    check_image(image, index)
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    return image.astype(np.float32, copy=False)


@dataclasses.dataclass(frozen=True)
class ImageTransform:
    """Normalise, resize and pad images for the model, as torchvision's transform does.

    Attributes:
      min_size: target of the shorter side (800).
      max_size: cap of the longer side (1333).
      image_mean: per-channel mean of the [0, 1] images (ImageNet's).
      image_std: per-channel standard deviation (ImageNet's).
      size_divisible: padded sizes are multiples of this (32).
      buckets: the padded ``(height, width)`` sizes to choose from, or ``None`` for the
        defaults (module docstring). Each must be a multiple of ``size_divisible``.
    """

    min_size: int = 800
    max_size: int = 1333
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    size_divisible: int = 32
    buckets: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self):
        if not 0 < self.min_size <= self.max_size:
            raise ConfigError(
                f"maskrcnn transform: need 0 < min_size <= max_size, got min_size="
                f"{self.min_size!r}, max_size={self.max_size!r}"
            )
        for bucket in self.buckets or ():
            if len(bucket) != 2 or any(s <= 0 or s % self.size_divisible for s in bucket):
                raise ConfigError(
                    f"maskrcnn transform: bucket {bucket!r} must be (height, width), positive "
                    f"multiples of size_divisible={self.size_divisible}"
                )

    def bucket_shapes(self) -> tuple[tuple[int, int], ...]:
        """The padded sizes in order of preference (smallest first), the fallback last."""
        d = self.size_divisible
        short, long = _round_up(self.min_size, d), _round_up(self.max_size, d)
        if self.buckets is not None:
            chosen = tuple(tuple(b) for b in self.buckets)
        else:
            four_thirds = min(_round_up(self.min_size * 4 / 3, d), long)
            chosen = (
                (short, short),
                (short, four_thirds),
                (four_thirds, short),
                (short, long),
                (long, short),
            )
        by_area = sorted(dict.fromkeys(chosen), key=lambda b: (b[0] * b[1], b))
        fallback = (long, long)
        return tuple(by_area) + (() if fallback in by_area else (fallback,))

    def bucket_for(self, sizes: Sequence[Sequence[int]]) -> tuple[int, int]:
        """The first bucket holding every resized ``(height, width)`` in ``sizes``."""
        need_h = max(s[0] for s in sizes)
        need_w = max(s[1] for s in sizes)
        for bucket in self.bucket_shapes():
            if bucket[0] >= need_h and bucket[1] >= need_w:
                return bucket
        return _round_up(need_h, self.size_divisible), _round_up(need_w, self.size_divisible)

    def resized_size_of(self, shape: Sequence[int]) -> tuple[int, int]:
        """The resized ``(height, width)`` of an image of ``shape`` ``(H, W, …)``."""
        return resized_size(shape[0], shape[1], self.min_size, self.max_size)

    def resize(self, image: np.ndarray) -> np.ndarray:
        """One image ``[H, W, 3]`` in [0, 1] → normalised and resized float32 (not padded)."""
        mean = np.asarray(self.image_mean, np.float32)
        std = np.asarray(self.image_std, np.float32)
        normalised = (image - mean) / std
        return resize_bilinear(normalised, self.resized_size_of(image.shape))

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """A padded batch for the model from images of any sizes.

        Args:
          images: ``[H, W, 3]`` arrays, uint8 or float in [0, 1].

        Returns:
          ``{"images" float32 [B, Hb, Wb, 3] (normalised, zero-padded), "image_sizes" int32
          [B, 2] (resized height, width), "original_sizes" int32 [B, 2]}``.

        Raises:
          DataError: an image is not ``[H, W, 3]`` uint8/float.
        """
        if not images:
            raise ValueError("maskrcnn transform: no images given")
        resized = [self.resize(_as_rgb_float(im, i)) for i, im in enumerate(images)]
        sizes = [r.shape[:2] for r in resized]
        bucket = self.bucket_for(sizes)
        batch = np.zeros((len(images), *bucket, 3), np.float32)
        for i, r in enumerate(resized):
            batch[i, : r.shape[0], : r.shape[1]] = r
        return {
            "images": batch,
            "image_sizes": np.asarray(sizes, np.int32),
            "original_sizes": np.asarray([np.shape(im)[:2] for im in images], np.int32),
        }


def paste_masks(
    masks: np.ndarray,
    boxes: np.ndarray,
    image_hw: Sequence[int],
) -> np.ndarray:
    """Full-size mask probabilities ``[N, H, W]`` from 28×28 ones, torchvision's pasting.

    Pastes ``masks [N, M, M]`` at ``boxes [N, 4]`` (the *original-image* boxes the model
    returns with ``original_sizes``) into an image of ``image_hw``, torchvision's padding of 1.
    Pass only the valid detections. On the host
    (:func:`segjax.ops.roi_align.paste_masks_in_boxes`): each mask is resized only inside its
    box, so the cost is the boxes' area and no image size compiles anything.
    """
    return roi_align.paste_masks_in_boxes(masks, boxes, image_hw, padding=1)
