"""Joint image/mask augmentation as TensorFlow ops (usable eagerly and inside ``tf.data``).

Random values are drawn once per example from a *stateless* seed and the same deterministic
geometric op is applied to image and mask, so the augmentation of an example is a pure
function of its seed. Images are float32 in 0–255 until :func:`normalize`; masks are uint8
class ids with 255 = ignore.
"""

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

IGNORE_INDEX = 255
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def random_scale(
    image: tf.Tensor, mask: tf.Tensor, scale: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes by ``scale``: bilinear for the image, nearest for the mask (labels stay labels)."""
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    new_size = tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)
    image = tf.image.resize(image, new_size, method="bilinear")
    mask = tf.image.resize(mask[..., None], new_size, method="nearest")[..., 0]
    return image, mask


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


def crop(
    image: tf.Tensor, mask: tf.Tensor, size: Sequence[int], uy: tf.Tensor, ux: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Crops ``size`` at relative offsets ``uy, ux`` in [0, 1) of the free range."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    y0 = tf.cast(tf.floor(uy * tf.cast(h - size[0] + 1, tf.float32)), tf.int32)
    x0 = tf.cast(tf.floor(ux * tf.cast(w - size[1] + 1, tf.float32)), tf.int32)
    image = image[y0 : y0 + size[0], x0 : x0 + size[1]]
    mask = mask[y0 : y0 + size[0], x0 : x0 + size[1]]
    return tf.ensure_shape(image, [size[0], size[1], 3]), tf.ensure_shape(mask, [size[0], size[1]])


def flip(image: tf.Tensor, mask: tf.Tensor, do_flip: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Horizontal flip of both when ``do_flip``."""
    image = tf.cond(do_flip, lambda: image[:, ::-1], lambda: image)
    mask = tf.cond(do_flip, lambda: mask[:, ::-1], lambda: mask)
    return image, mask


def normalize(
    image: tf.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> tf.Tensor:
    """(image − mean) / std with per-channel 0–255 statistics."""
    return (tf.cast(image, tf.float32) - tf.constant(mean)) / tf.constant(std)


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
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale → pad (mean / 255) → random crop → flip → normalise.

    Args:
      image: uint8 or float ``[H, W, 3]``.
      mask: uint8 ``[H, W]``.
      seed: int ``[2]`` stateless seed; the result is a pure function of it.
      crop_size: (height, width) of the output.
      scale_range: (min, max) of the uniform random scale; (1, 1) disables scaling.
      hflip: flip horizontally with probability 1/2.
      mean, std: per-channel normalisation in 0–255 units.

    Returns:
      ``(image float32 [h, w, 3] normalised, mask uint8 [h, w])``.
    """
    u = tf.random.stateless_uniform([4], seed=seed)
    image = tf.cast(image, tf.float32)
    lo, hi = scale_range
    if (lo, hi) != (1.0, 1.0):
        image, mask = random_scale(image, mask, lo + (hi - lo) * u[0])
    image, mask = pad_to_size(image, mask, crop_size, mean)
    image, mask = crop(image, mask, crop_size, u[1], u[2])
    if hflip:
        image, mask = flip(image, mask, u[3] < 0.5)
    return normalize(image, mean, std), mask


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


# --- Photometric distortion and class-balanced cropping (mmsegmentation-style) ---


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


def crop_offsets(
    height: tf.Tensor, width: tf.Tensor, size: Sequence[int], uy: tf.Tensor, ux: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Top-left corner :func:`crop` uses for relative offsets ``uy, ux`` (same formula)."""
    y0 = tf.cast(tf.floor(uy * tf.cast(height - size[0] + 1, tf.float32)), tf.int32)
    x0 = tf.cast(tf.floor(ux * tf.cast(width - size[1] + 1, tf.float32)), tf.int32)
    return y0, x0


def crop_cat_max_ratio(
    image: tf.Tensor,
    mask: tf.Tensor,
    size: Sequence[int],
    seed: tf.Tensor,
    cat_max_ratio: float = 0.75,
    max_tries: int = 10,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random crop that avoids windows dominated by one class (mmsegmentation's ``RandomCrop``
    with ``cat_max_ratio``).

    Tries up to ``max_tries`` random windows and keeps the first in which more than one class
    is present and no class covers more than ``cat_max_ratio`` of the labelled (non-255)
    pixels; if none qualifies, the last window is used. ``cat_max_ratio >= 1`` is a plain
    random crop. ``image`` and ``mask`` must already be at least ``size`` (see
    :func:`pad_to_size`). A pure function of ``seed`` (int ``[2]``).

    Returns:
      ``(image [size[0], size[1], 3], mask [size[0], size[1]])``, cut at the same window.
    """
    u = tf.random.stateless_uniform([max_tries, 2], seed=seed)
    if cat_max_ratio >= 1.0:
        return crop(image, mask, size, u[0, 0], u[0, 1])
    h, w = tf.shape(mask)[0], tf.shape(mask)[1]

    def acceptable(i):
        y0, x0 = crop_offsets(h, w, size, u[i, 0], u[i, 1])
        window = tf.reshape(mask[y0 : y0 + size[0], x0 : x0 + size[1]], [-1])
        counts = tf.math.bincount(
            tf.cast(window, tf.int32), minlength=256, maxlength=256, dtype=tf.int32
        )[:IGNORE_INDEX]
        total = tf.cast(tf.reduce_sum(counts), tf.float32)
        present = tf.math.count_nonzero(counts)
        largest = tf.cast(tf.reduce_max(counts), tf.float32)
        return tf.logical_and(present > 1, largest < cat_max_ratio * total)

    def keep_looking(i):
        return tf.logical_and(i < max_tries - 1, tf.logical_not(acceptable(i)))

    (chosen,) = tf.while_loop(keep_looking, lambda i: (i + 1,), (tf.constant(0),))
    return crop(image, mask, size, u[chosen, 0], u[chosen, 1])


def train_transform_fast(
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
    """:func:`train_transform` with the same random draws and the same output (up to float
    rounding), about twice as fast on CPU.

    The image resize is the same as :func:`random_scale`'s; the rest avoids TensorFlow's slow
    paths: the mask is resampled (nearest, same rule) only inside the crop window, the window
    is cut from the unpadded resized image, normalised with full-size constant arrays
    (per-channel broadcasting is several times slower than an elementwise op), padded with
    zeros (= the normalised mean; mask 255) and flipped with ``tf.reverse`` instead of a
    negative-stride slice.

    Extras: ``photometric`` applies :func:`photometric_distortion` to the crop window (seeded
    from ``seed``) with ``colour_model`` ("yiq": cheap colour matrix; "hsv": exactly
    mmsegmentation, but the HSV round trip costs more than all the rest together);
    ``cat_max_ratio < 1`` re-draws the
    window (up to ``max_tries``, the first draw being the plain one) until no class covers
    more than that fraction of its labelled pixels, as :func:`crop_cat_max_ratio` (the
    fractions are measured on every 4th row and column of the window, 1/16 of the pixels,
    which keeps ten retries cheap).

    Returns:
      ``(image float32 [h, w, 3] normalised, mask uint8 [h, w])``.
    """
    ch, cw = int(crop_size[0]), int(crop_size[1])
    u = tf.random.stateless_uniform([4], seed=seed)
    image = tf.cast(image, tf.float32)
    src_h, src_w = tf.shape(mask)[0], tf.shape(mask)[1]
    lo, hi = scale_range
    if (lo, hi) != (1.0, 1.0):
        # Same size and bilinear resize as random_scale; the mask is resized only inside the
        # crop window below (nearest-neighbour on the full mask costs more than all the rest).
        size = tf.cast(tf.stack([src_h, src_w]), tf.float32)
        new_size = tf.maximum(tf.cast(tf.round(size * (lo + (hi - lo) * u[0])), tf.int32), 1)
        image = tf.image.resize(image, new_size, method="bilinear")
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    # tf.image.resize's nearest rule: source = floor((out + 0.5) * in / out), in float32.
    inverse_h = tf.cast(src_h, tf.float32) / tf.cast(h, tf.float32)
    inverse_w = tf.cast(src_w, tf.float32) / tf.cast(w, tf.float32)
    padded_h, padded_w = tf.maximum(h, ch), tf.maximum(w, cw)
    out_h, out_w = tf.minimum(h, ch), tf.minimum(w, cw)

    def nearest(start, length, inverse, limit):
        pos = tf.cast(tf.range(start, start + length), tf.float32) + 0.5
        return tf.minimum(tf.cast(tf.floor(pos * inverse), tf.int32), limit - 1)

    def mask_window(uy, ux, stride=1):
        y0, x0 = crop_offsets(padded_h, padded_w, (ch, cw), uy, ux)
        rows = nearest(y0, out_h, inverse_h, src_h)[::stride]
        cols = nearest(x0, out_w, inverse_w, src_w)[::stride]
        # Row gathers are contiguous copies; gathering columns directly is 4x slower.
        picked = tf.transpose(tf.gather(mask, rows, axis=0))
        return tf.transpose(tf.gather(picked, cols, axis=0))

    def image_window(uy, ux):
        y0, x0 = crop_offsets(padded_h, padded_w, (ch, cw), uy, ux)
        return image[y0 : y0 + out_h, x0 : x0 + out_w]

    uy, ux = u[1], u[2]
    if cat_max_ratio < 1.0:
        retry_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        tries = tf.random.stateless_uniform([max_tries, 2], seed=retry_seed)
        tries = tf.concat([u[None, 1:3], tries[1:]], axis=0)

        def acceptable(i):
            labels = tf.reshape(mask_window(tries[i, 0], tries[i, 1], stride=4), [-1])
            counts = tf.math.bincount(
                tf.cast(labels, tf.int32), minlength=256, maxlength=256, dtype=tf.int32
            )[:IGNORE_INDEX]
            total = tf.cast(tf.reduce_sum(counts), tf.float32)
            largest = tf.cast(tf.reduce_max(counts), tf.float32)
            return tf.logical_and(
                tf.math.count_nonzero(counts) > 1, largest < cat_max_ratio * total
            )

        (chosen,) = tf.while_loop(
            lambda i: tf.logical_and(i < max_tries - 1, tf.logical_not(acceptable(i))),
            lambda i: (i + 1,),
            (tf.constant(0),),
        )
        uy, ux = tries[chosen, 0], tries[chosen, 1]
    image, mask = image_window(uy, ux), mask_window(uy, ux)
    if photometric:
        image = photometric_distortion(
            image, tf.random.experimental.stateless_fold_in(seed, 2), colour_model=colour_model
        )
    scale = np.broadcast_to(1.0 / np.asarray(std, np.float32), (ch, cw, 3))
    shift = np.broadcast_to(
        -np.asarray(mean, np.float32) / np.asarray(std, np.float32), (ch, cw, 3)
    )
    image = image * tf.constant(scale)[:out_h, :out_w] + tf.constant(shift)[:out_h, :out_w]
    pad = [[0, ch - out_h], [0, cw - out_w]]
    image = tf.pad(image, pad + [[0, 0]])
    mask = tf.pad(mask, pad, constant_values=IGNORE_INDEX)
    if hflip:
        do_flip = u[3] < 0.5
        image = tf.cond(do_flip, lambda: tf.reverse(image, [1]), lambda: image)
        mask = tf.cond(do_flip, lambda: tf.reverse(mask, [1]), lambda: mask)
    return tf.ensure_shape(image, [ch, cw, 3]), tf.ensure_shape(mask, [ch, cw])
