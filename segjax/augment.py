"""Joint image/mask augmentation as TensorFlow ops (usable eagerly and inside ``tf.data``).

Random values are drawn once per example from a *stateless* seed and the same deterministic
geometric op is applied to image and mask, so the augmentation of an example is a pure
function of its seed. Images are float32 in 0–255 until they are normalised; masks are uint8
class ids with 255 = ignore.

- :func:`train_transform`: random scale → random crop (optionally class-balanced) →
  (photometric distortion) → normalise → pad → horizontal flip.
- :func:`eval_transform`: normalise the full-resolution image and pad it to a fixed size.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from segjax.metrics import IGNORE_INDEX

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def pad_to_size(
    image: tf.Tensor,
    mask: tf.Tensor,
    size: Sequence[int],
    image_fill: Sequence[float] = IMAGENET_MEAN,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Pads bottom/right to at least ``size``.

    The image is filled with ``image_fill`` (per channel), the mask with 255.
    """
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    ph, pw = tf.maximum(size[0] - h, 0), tf.maximum(size[1] - w, 0)
    fill = tf.constant(image_fill, tf.float32)
    image = tf.pad(image - fill, [[0, ph], [0, pw], [0, 0]]) + fill
    mask = tf.pad(mask, [[0, ph], [0, pw]], constant_values=IGNORE_INDEX)
    return image, mask


def normalize(
    image: tf.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> tf.Tensor:
    """(image − mean) / std with per-channel 0–255 statistics."""
    return (tf.cast(image, tf.float32) - tf.constant(mean)) / tf.constant(std)


def eval_transform(
    image: tf.Tensor,
    mask: tf.Tensor,
    *,
    pad_size: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Normalise the full-resolution image and pad it to ``pad_size`` (image 0 after
    normalisation, i.e. the mean; mask 255), so every pixel of the original is evaluated once.

    Raises (at run time):
      InvalidArgumentError naming both sizes when the image is larger than ``pad_size``.
    """
    shape = tf.shape(image)
    tf.debugging.assert_less_equal(
        shape[:2],
        tf.constant(pad_size, tf.int32),
        message=f"evaluation image larger than config.data.eval_pad_size={tuple(pad_size)}; "
        "raise config.data.eval_pad_size (or use sliding-window evaluation)",
    )
    image, mask = pad_to_size(tf.cast(image, tf.float32), mask, pad_size, mean)
    return normalize(image, mean, std), mask


# --- Photometric distortion (mmsegmentation-style) ---


_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)


def _yiq_colour_matrix(saturation: tf.Tensor, hue: tf.Tensor) -> tf.Tensor:
    """``[3, 3]`` matrix M with ``rgb @ M`` = saturation × and hue rotation (OpenCV units, 180 a
    full turn) of the chroma (I, Q) around the luma axis."""
    theta = hue * (2.0 * np.pi / 180.0)
    c, s = saturation * tf.cos(theta), saturation * tf.sin(theta)
    one, zero = tf.ones_like(c), tf.zeros_like(c)
    chroma = tf.stack(
        [tf.stack([one, zero, zero]), tf.stack([zero, c, -s]), tf.stack([zero, s, c])]
    )
    to_yiq = tf.constant(_RGB_TO_YIQ)
    from_yiq = tf.constant(np.linalg.inv(_RGB_TO_YIQ).astype(np.float32))
    # Column-vector form: rgb' = from_yiq @ chroma @ to_yiq @ rgb; transpose for row pixels.
    return tf.transpose(from_yiq @ chroma @ to_yiq)


def adjust_photometric(
    image: tf.Tensor,
    *,
    brightness: tf.Tensor | float = 0.0,
    contrast: tf.Tensor | float = 1.0,
    saturation: tf.Tensor | float = 1.0,
    hue: tf.Tensor | float = 0.0,
    contrast_first: tf.Tensor | bool = True,
    colour_model: str = "hsv",
) -> tf.Tensor:
    """Deterministic photometric change of a 0–255 image (the mask is never touched).

    In order: add ``brightness``; multiply by ``contrast`` if ``contrast_first``; multiply the
    saturation by ``saturation`` and rotate the hue by ``hue`` (OpenCV units: a full turn is
    180); multiply by ``contrast`` if not ``contrast_first``. Values are clipped to [0, 255]
    after every step, as the uint8 reference implementation does implicitly.

    ``colour_model="hsv"`` changes saturation and hue in HSV, exactly as mmsegmentation;
    ``"yiq"`` does both as one 3×3 colour matrix in YIQ space (chroma scaled and rotated around
    the luma axis, as NVIDIA DALI's ``hsv`` operator), about 15× cheaper on CPU; saturation 0
    then gives the luma gray instead of HSV's value gray.

    Returns:
      float32 ``[H, W, 3]`` in [0, 255].
    """
    image = tf.cast(image, tf.float32)
    brightness = tf.cast(brightness, tf.float32)
    contrast = tf.cast(contrast, tf.float32)
    contrast_first = tf.convert_to_tensor(contrast_first, tf.bool)
    image = tf.clip_by_value(image + brightness, 0.0, 255.0)
    image = tf.clip_by_value(image * tf.where(contrast_first, contrast, 1.0), 0.0, 255.0)
    saturation = tf.cast(saturation, tf.float32)
    hue = tf.cast(hue, tf.float32)

    if colour_model not in ("hsv", "yiq"):
        raise ValueError(f"colour_model={colour_model!r}; expected 'hsv' or 'yiq'")

    def colour(image):
        if colour_model == "yiq":
            return tf.clip_by_value(
                tf.einsum("hwc,cd->hwd", image, _yiq_colour_matrix(saturation, hue)), 0.0, 255.0
            )
        hsv = tf.image.rgb_to_hsv(image / 255.0)
        h = tf.math.floormod(hsv[..., 0] + hue / 180.0, 1.0)
        s = tf.clip_by_value(hsv[..., 1] * saturation, 0.0, 1.0)
        image = tf.image.hsv_to_rgb(tf.stack([h, s, hsv[..., 2]], axis=-1)) * 255.0
        return tf.clip_by_value(image, 0.0, 255.0)

    # The colour change is the expensive part: skip it when it would change nothing.
    image = tf.cond(
        tf.logical_or(tf.not_equal(saturation, 1.0), tf.not_equal(hue, 0.0)),
        lambda: colour(image),
        lambda: image,
    )
    return tf.clip_by_value(image * tf.where(contrast_first, 1.0, contrast), 0.0, 255.0)


def photometric_distortion(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    brightness_delta: float = 32.0,
    contrast_range: Sequence[float] = (0.5, 1.5),
    saturation_range: Sequence[float] = (0.5, 1.5),
    hue_delta: float = 18.0,
    colour_model: str = "hsv",
) -> tf.Tensor:
    """Random photometric distortion (as mmsegmentation's ``PhotoMetricDistortion``).

    Each of brightness (± ``brightness_delta``), contrast (× U(``contrast_range``)),
    saturation (× U(``saturation_range``)) and hue (± ``hue_delta`` of 180) is applied with
    probability 1/2; contrast goes before or after the colour changes with probability 1/2.
    A pure function of ``seed`` (int ``[2]``); apply it to the image only. ``colour_model``:
    see :func:`adjust_photometric`.

    Returns:
      float32 ``[H, W, 3]`` in [0, 255].
    """
    u = tf.random.stateless_uniform([9], seed=seed)

    def maybe(p, value, identity):
        return tf.where(p < 0.5, value, identity)

    return adjust_photometric(
        image,
        brightness=maybe(u[0], brightness_delta * (2.0 * u[1] - 1.0), 0.0),
        contrast=maybe(
            u[2], contrast_range[0] + (contrast_range[1] - contrast_range[0]) * u[3], 1.0
        ),
        saturation=maybe(
            u[4], saturation_range[0] + (saturation_range[1] - saturation_range[0]) * u[5], 1.0
        ),
        hue=maybe(u[6], hue_delta * (2.0 * u[7] - 1.0), 0.0),
        contrast_first=u[8] < 0.5,
        colour_model=colour_model,
    )


# --- Training transform ---


def crop_offsets(
    height: tf.Tensor, width: tf.Tensor, size: Sequence[int], uy: tf.Tensor, ux: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Top-left corner of a ``size`` crop of a ``height × width`` image at relative offsets
    ``uy, ux`` in [0, 1) of the free range (every corner equally likely for uniform draws)."""
    y0 = tf.cast(tf.floor(uy * tf.cast(height - size[0] + 1, tf.float32)), tf.int32)
    x0 = tf.cast(tf.floor(ux * tf.cast(width - size[1] + 1, tf.float32)), tf.int32)
    return y0, x0


@dataclasses.dataclass(frozen=True)
class _CropWindow:
    """A ``size`` crop of the image resized to ``scaled_hw`` from ``source_hw`` pixels, as if
    the resized image had been padded bottom/right to at least ``size`` first.

    Only the part inside the resized image is cut (``out_hw``, at most ``size``); the padding
    is added after normalisation. The mask is never resized whole: the window's rows and
    columns are mapped back to the source mask with ``tf.image.resize``'s nearest rule, because
    a nearest-neighbour resize of the full mask costs more than the rest of the transform.
    """

    size: tuple[int, int]
    source_hw: tuple[tf.Tensor, tf.Tensor]
    scaled_hw: tuple[tf.Tensor, tf.Tensor]

    @property
    def out_hw(self) -> tuple[tf.Tensor, tf.Tensor]:
        """Height and width of the window's part inside the resized image."""
        return tf.minimum(self.scaled_hw[0], self.size[0]), tf.minimum(
            self.scaled_hw[1], self.size[1]
        )

    def corner(self, uy: tf.Tensor, ux: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Top-left corner (in resized pixels) for relative offsets ``uy, ux``."""
        padded_h = tf.maximum(self.scaled_hw[0], self.size[0])
        padded_w = tf.maximum(self.scaled_hw[1], self.size[1])
        return crop_offsets(padded_h, padded_w, self.size, uy, ux)

    def cut_image(self, image: tf.Tensor, uy: tf.Tensor, ux: tf.Tensor) -> tf.Tensor:
        """The window of the resized ``image``: float ``[out_h, out_w, 3]``."""
        (y0, x0), (out_h, out_w) = self.corner(uy, ux), self.out_hw
        return image[y0 : y0 + out_h, x0 : x0 + out_w]

    def cut_mask(self, mask: tf.Tensor, uy: tf.Tensor, ux: tf.Tensor, stride: int = 1) -> tf.Tensor:
        """The window of the source ``mask`` resized (nearest) like the image, every
        ``stride``-th row and column: uint8 ``[out_h / stride, out_w / stride]``."""
        (y0, x0), (out_h, out_w) = self.corner(uy, ux), self.out_hw
        rows = _nearest_sources(y0, out_h, self.source_hw[0], self.scaled_hw[0])[::stride]
        cols = _nearest_sources(x0, out_w, self.source_hw[1], self.scaled_hw[1])[::stride]
        # Row gathers are contiguous copies; gathering columns directly is 4x slower.
        picked = tf.transpose(tf.gather(mask, rows, axis=0))
        return tf.transpose(tf.gather(picked, cols, axis=0))


def _nearest_sources(
    start: tf.Tensor, length: tf.Tensor, source: tf.Tensor, scaled: tf.Tensor
) -> tf.Tensor:
    """Source indices of resized positions ``start .. start+length-1`` under
    ``tf.image.resize``'s nearest rule: ``floor((out + 0.5) · source / scaled)``, in float32."""
    inverse = tf.cast(source, tf.float32) / tf.cast(scaled, tf.float32)
    pos = tf.cast(tf.range(start, start + length), tf.float32) + 0.5
    return tf.minimum(tf.cast(tf.floor(pos * inverse), tf.int32), source - 1)


def _random_resize(
    image: tf.Tensor, source_hw: tuple[tf.Tensor, tf.Tensor], scale_range, u: tf.Tensor
) -> tf.Tensor:
    """Bilinear resize of ``image`` by a scale uniform in ``scale_range`` (``u`` in [0, 1));
    sides are rounded and at least 1. ``(1, 1)`` returns the image untouched."""
    lo, hi = scale_range
    if (lo, hi) == (1.0, 1.0):
        return image
    size = tf.cast(tf.stack(source_hw), tf.float32)
    new_size = tf.maximum(tf.cast(tf.round(size * (lo + (hi - lo) * u)), tf.int32), 1)
    return tf.image.resize(image, new_size, method="bilinear")


def _is_class_balanced(labels: tf.Tensor, cat_max_ratio: float) -> tf.Tensor:
    """True when ``labels`` hold more than one class and none covers ``cat_max_ratio`` or more
    of the labelled (non-ignore) pixels."""
    counts = tf.math.bincount(
        tf.cast(tf.reshape(labels, [-1]), tf.int32), minlength=256, maxlength=256, dtype=tf.int32
    )[:IGNORE_INDEX]
    total = tf.cast(tf.reduce_sum(counts), tf.float32)
    largest = tf.cast(tf.reduce_max(counts), tf.float32)
    return tf.logical_and(tf.math.count_nonzero(counts) > 1, largest < cat_max_ratio * total)


def _class_balanced_offsets(
    window: _CropWindow,
    mask: tf.Tensor,
    seed: tf.Tensor,
    first: tf.Tensor,
    cat_max_ratio: float,
    max_tries: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Relative crop offsets: ``first`` (the plain draw, ``[2]``) or, while the window is not
    class-balanced, up to ``max_tries - 1`` re-draws; the last one if none qualifies.

    Balance is measured on every 4th row and column of the window (1/16 of the pixels), which
    keeps ten retries cheap.
    """
    retries = tf.random.stateless_uniform(
        [max_tries, 2], seed=tf.random.experimental.stateless_fold_in(seed, 1)
    )
    tries = tf.concat([first[None], retries[1:]], axis=0)

    def rejected(i):
        labels = window.cut_mask(mask, tries[i, 0], tries[i, 1], stride=4)
        return tf.logical_not(_is_class_balanced(labels, cat_max_ratio))

    (chosen,) = tf.while_loop(
        lambda i: tf.logical_and(i < max_tries - 1, rejected(i)),
        lambda i: (i + 1,),
        (tf.constant(0),),
    )
    return tries[chosen, 0], tries[chosen, 1]


def _normalize_and_pad(
    image: tf.Tensor,
    mask: tf.Tensor,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[tf.Tensor, tf.Tensor]:
    """Normalises a crop window of at most ``size`` and pads it bottom/right to ``size``:
    the image with zeros (= the normalised mean), the mask with the ignore label."""
    ch, cw = size
    out_h, out_w = tf.shape(image)[0], tf.shape(image)[1]
    # Full-size constant arrays: per-channel broadcasting is several times slower than an
    # elementwise op on CPU.
    scale = np.broadcast_to(1.0 / np.asarray(std, np.float32), (ch, cw, 3))
    shift = np.broadcast_to(
        -np.asarray(mean, np.float32) / np.asarray(std, np.float32), (ch, cw, 3)
    )
    image = image * tf.constant(scale)[:out_h, :out_w] + tf.constant(shift)[:out_h, :out_w]
    pad = [[0, ch - out_h], [0, cw - out_w]]
    image = tf.pad(image, pad + [[0, 0]])
    mask = tf.pad(mask, pad, constant_values=IGNORE_INDEX)
    return image, mask


def _flip(image: tf.Tensor, mask: tf.Tensor, do_flip: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Horizontal flip of both when ``do_flip`` (``tf.reverse``: a negative-stride slice is
    slower)."""
    image = tf.cond(do_flip, lambda: tf.reverse(image, [1]), lambda: image)
    mask = tf.cond(do_flip, lambda: tf.reverse(mask, [1]), lambda: mask)
    return image, mask


def train_transform(
    image: tf.Tensor,
    mask: tf.Tensor,
    seed: tf.Tensor,
    *,
    crop_size: Sequence[int],
    scale_range: Sequence[float] = (0.5, 2.0),
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    photometric: bool = False,
    colour_model: str = "yiq",
    cat_max_ratio: float = 1.0,
    max_tries: int = 10,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The training augmentation of one example; a pure function of ``seed``.

    Equivalent to: resize by a random scale (image bilinear, mask nearest) → pad bottom/right
    to ``crop_size`` (image with ``mean``, mask with 255) → random ``crop_size`` crop (every
    position equally likely) → flip horizontally with probability 1/2 → normalise. It is
    computed crop-first, about twice as fast on CPU: the window is cut from the unpadded
    resized image, the mask is resampled only inside it, and padding comes after
    normalisation.

    Args:
      image: uint8 or float ``[H, W, 3]``.
      mask: uint8 ``[H, W]``.
      seed: int ``[2]`` stateless seed.
      crop_size: (height, width) of the output.
      scale_range: (min, max) of the uniform random scale; (1, 1) disables scaling.
      hflip: flip horizontally with probability 1/2.
      mean, std: per-channel normalisation in 0–255 units.
      photometric: apply :func:`photometric_distortion` (seeded from ``seed``) to the crop.
      colour_model: its colour model: "yiq" (a cheap colour matrix) or "hsv" (exactly
        mmsegmentation, but the HSV round trip costs more than all the rest together).
      cat_max_ratio: < 1 re-draws the crop (up to ``max_tries`` windows, the first being the
        plain draw) until no class covers that fraction of its labelled pixels, as
        mmsegmentation's ``RandomCrop(cat_max_ratio=…)``.
      max_tries: windows tried for ``cat_max_ratio``.

    Returns:
      ``(image float32 [h, w, 3] normalised, mask uint8 [h, w])``.
    """
    size = (int(crop_size[0]), int(crop_size[1]))
    u = tf.random.stateless_uniform([4], seed=seed)
    source_hw = (tf.shape(mask)[0], tf.shape(mask)[1])
    image = _random_resize(tf.cast(image, tf.float32), source_hw, scale_range, u[0])
    window = _CropWindow(size, source_hw, (tf.shape(image)[0], tf.shape(image)[1]))
    uy, ux = u[1], u[2]
    if cat_max_ratio < 1.0:
        uy, ux = _class_balanced_offsets(window, mask, seed, u[1:3], cat_max_ratio, max_tries)
    image, mask = window.cut_image(image, uy, ux), window.cut_mask(mask, uy, ux)
    if photometric:
        image = photometric_distortion(
            image, tf.random.experimental.stateless_fold_in(seed, 2), colour_model=colour_model
        )
    image, mask = _normalize_and_pad(image, mask, size, mean, std)
    if hflip:
        image, mask = _flip(image, mask, u[3] < 0.5)
    return tf.ensure_shape(image, [*size, 3]), tf.ensure_shape(mask, list(size))
