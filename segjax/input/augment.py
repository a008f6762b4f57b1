"""Joint image/mask augmentation as TensorFlow ops (usable eagerly and inside ``tf.data``).

Random values are drawn once per example from a *stateless* seed and the same deterministic
geometric op is applied to image and mask, so the augmentation of an example is a pure
function of its seed. Images are float32 in 0–255 until they are normalised; masks are uint8
class ids with 255 = ignore.

- :func:`train_transform`: random scale → random crop (optionally class-balanced) →
  (elastic deformation) → (photometric distortion) → normalise → pad → horizontal flip.
- :func:`eval_transform`: normalise the full-resolution image and pad it to a fixed size.
- :func:`train_transform_fields` and :func:`eval_transform_fields`: the same on a dict of
  per-pixel fields: besides ``"image"`` and ``"mask"``, the U-Net border ``"weights"`` (float32)
  and ``"instances"`` ids (int32) follow the mask's nearest-neighbour sampling pixel for pixel
  and are padded with their own fill value (:data:`FIELD_FILL`).
- :class:`ElasticParams`, :func:`elastic_displacement`: the U-Net paper's elastic deformation
  (random displacements on a coarse grid, bicubically interpolated).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from segjax.errors import ConfigError
from segjax.evaluation.metrics import IGNORE_INDEX
from segjax.runtime.lazy_imports import tf

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)

# Fill value of every mask-like field where it has no source pixel (padding): "mask" is
# ignored there, and the border weights and instance ids (0 = background) add nothing.
FIELD_FILL = {"mask": IGNORE_INDEX, "weights": 0, "instances": 0}


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


def _mask_like_fields(fields: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """The mask-like entries of ``fields`` (``"mask"`` first), after checking the names: an
    ``"image"`` and a ``"mask"`` are required, other names must be in :data:`FIELD_FILL`, and
    every mask-like field must have the mask's height and width (checked at run time)."""
    unknown = sorted(set(fields) - {"image", *FIELD_FILL})
    if unknown or "image" not in fields or "mask" not in fields:
        raise ValueError(
            f"augmentation fields {sorted(fields)}; expected 'image', 'mask' and optionally "
            f"{', '.join(repr(k) for k in FIELD_FILL if k != 'mask')}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    mask = fields["mask"]
    extras = {}
    for name in FIELD_FILL:
        if name == "mask" or name not in fields:
            continue
        field = tf.convert_to_tensor(fields[name])
        with tf.control_dependencies(
            [
                tf.debugging.assert_equal(
                    tf.shape(field),
                    tf.shape(mask),
                    message=f"augmentation field {name!r} must have the mask's [H, W] shape",
                )
            ]
        ):
            extras[name] = tf.identity(field)
    return {"mask": mask, **extras}


def _pad_field(field: tf.Tensor, name: str, size: Sequence[int]) -> tf.Tensor:
    """Pads a mask-like ``field`` of at most ``size`` bottom/right to ``size`` with its
    :data:`FIELD_FILL` value."""
    pad = [[0, size[0] - tf.shape(field)[0]], [0, size[1] - tf.shape(field)[1]]]
    return tf.pad(field, pad, constant_values=tf.cast(FIELD_FILL[name], field.dtype))


def eval_transform_fields(
    fields: dict[str, tf.Tensor],
    *,
    pad_size: Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> dict[str, tf.Tensor]:
    """:func:`eval_transform` of a dict of fields: ``"image"`` and ``"mask"`` exactly as there,
    the optional ``"weights"`` and ``"instances"`` padded with :data:`FIELD_FILL` (0).

    Returns:
      the same keys, static shapes: image float32 ``[*pad_size, 3]``, the others ``pad_size``.

    Raises:
      ValueError: an unknown or missing field name.
      InvalidArgumentError (at run time): as :func:`eval_transform`, or a field whose shape is
        not the mask's.
    """
    labels = _mask_like_fields(fields)
    size = [int(pad_size[0]), int(pad_size[1])]
    image, mask = eval_transform(
        fields["image"], labels.pop("mask"), pad_size=pad_size, mean=mean, std=std
    )
    out = {"image": tf.ensure_shape(image, [*size, 3]), "mask": tf.ensure_shape(mask, size)}
    for name, field in labels.items():
        out[name] = tf.ensure_shape(_pad_field(field, name, size), size)
    return out


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
        raise ConfigError(f"colour_model={colour_model!r}; expected 'hsv' or 'yiq'")

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


# --- Scale, crop, pad and flip ---


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
        """The window of the source ``mask`` (or any other ``[H, W]`` field, of any dtype)
        resized (nearest) like the image, every ``stride``-th row and column:
        ``[out_h / stride, out_w / stride]``."""
        (y0, x0), (out_h, out_w) = self.corner(uy, ux), self.out_hw
        rows = nearest_sources(y0, out_h, self.source_hw[0], self.scaled_hw[0])[::stride]
        cols = nearest_sources(x0, out_w, self.source_hw[1], self.scaled_hw[1])[::stride]
        # Row gathers are contiguous copies; gathering columns directly is 4x slower.
        picked = tf.transpose(tf.gather(mask, rows, axis=0))
        return tf.transpose(tf.gather(picked, cols, axis=0))


def nearest_sources(
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
    image: tf.Tensor, size: tuple[int, int], mean: Sequence[float], std: Sequence[float]
) -> tf.Tensor:
    """Normalises a crop window of at most ``size`` and pads it bottom/right to ``size`` with
    zeros (= the normalised mean)."""
    ch, cw = size
    out_h, out_w = tf.shape(image)[0], tf.shape(image)[1]
    # Full-size constant arrays: per-channel broadcasting is several times slower than an
    # elementwise op on CPU.
    scale = np.broadcast_to(1.0 / np.asarray(std, np.float32), (ch, cw, 3))
    shift = np.broadcast_to(
        -np.asarray(mean, np.float32) / np.asarray(std, np.float32), (ch, cw, 3)
    )
    image = image * tf.constant(scale)[:out_h, :out_w] + tf.constant(shift)[:out_h, :out_w]
    return tf.pad(image, [[0, ch - out_h], [0, cw - out_w], [0, 0]])


def _flip(
    image: tf.Tensor, labels: dict[str, tf.Tensor], do_flip: tf.Tensor
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Horizontal flip of the image and every mask-like field when ``do_flip``
    (``tf.reverse``: a negative-stride slice is slower)."""

    def flip(x):
        return tf.cond(do_flip, lambda: tf.reverse(x, [1]), lambda: x)

    return flip(image), {name: flip(field) for name, field in labels.items()}


# --- Elastic deformation (the U-Net paper's) ---


@dataclasses.dataclass(frozen=True)
class ElasticParams:
    """The U-Net paper's elastic deformation of a training crop (see
    :func:`elastic_displacement`).

    Attributes:
      grid: nodes per side of the coarse grid of random displacement vectors (paper: 3); the
        grid spans the crop, corner nodes on the corner pixels.
      sigma: standard deviation of each displacement component, in pixels of the crop (the
        paper's 10 was for 572-pixel tiles: scale it with the crop size).

    Raises:
      ValueError: ``grid`` not an integer ≥ 2 or ``sigma`` not a finite number ≥ 0.
    """

    grid: int = 3
    sigma: float = 10.0

    def __post_init__(self):
        grid_ok = isinstance(self.grid, int | np.integer) and not isinstance(self.grid, bool)
        if not grid_ok or self.grid < 2:
            raise ConfigError(
                f"config.data.elastic.grid={self.grid!r}; expected an integer >= 2 "
                "(the coarse grid's corner nodes sit on the crop's corners)"
            )
        sigma_ok = isinstance(self.sigma, int | float | np.number) and not isinstance(
            self.sigma, bool
        )
        if not sigma_ok or not (np.isfinite(self.sigma) and self.sigma >= 0):
            raise ConfigError(
                f"config.data.elastic.sigma={self.sigma!r}; expected a finite number >= 0 "
                "(pixels of the crop)"
            )


def elastic_from_config(elastic) -> ElasticParams | None:
    """``config.data.elastic`` (``enabled``, ``grid``, ``sigma``) as :class:`ElasticParams`, or
    None when it is not enabled."""
    if not elastic.enabled:
        return None
    return ElasticParams(grid=elastic.grid, sigma=elastic.sigma)


def elastic_displacement(
    seed: tf.Tensor, height: tf.Tensor | int, width: tf.Tensor | int, params: ElasticParams
) -> tf.Tensor:
    """The dense displacement field of the elastic deformation; a pure function of ``seed``.

    ``grid × grid`` random vectors (dy, dx), each component ~ N(0, ``sigma``), are interpolated
    to every pixel by TensorFlow's bicubic resize in its ``align_corners`` mode: node (i, j)
    sits on pixel (i·(height−1)/(grid−1), j·(width−1)/(grid−1)), so the grid spans the crop
    corner to corner and the field equals the drawn vectors at the nodes. In between it is
    cubic convolution with a = −0.75 (as OpenCV's ``INTER_CUBIC``; TensorFlow tabulates the
    kernel at 1/1024 of a cell), continuously differentiable, the edge nodes repeated outside.

    Args:
      seed: int ``[2]`` stateless seed.
      height, width: size of the field.
      params: grid size and sigma (pixels).

    Returns:
      float32 ``[height, width, 2]``: (dy, dx) in pixels.
    """
    coarse = tf.random.stateless_normal([params.grid, params.grid, 2], seed=seed)
    dense = tf.raw_ops.ResizeBicubic(
        images=coarse[None] * float(params.sigma),
        size=tf.cast(tf.stack([height, width]), tf.int32),
        align_corners=True,
        half_pixel_centers=False,
    )
    return dense[0]


def _mirror(coords: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Continuous pixel coordinates reflected into [0, size − 1] about the edge pixels'
    centres (``np.pad(mode="reflect")``, the mirroring of the U-Net overlap-tile); exact up to
    one crop size outside, farther out (displacements larger than the crop) they go to 0."""
    last = tf.cast(size - 1, tf.float32)
    # |c| reflects about 0 and last − |last − ·| about last; cheaper than floormod on CPU.
    return tf.maximum(last - tf.abs(last - tf.abs(coords)), 0.0)


def _bilinear_at(image: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor) -> tf.Tensor:
    """``image`` ``[h, w, c]`` sampled bilinearly at positions ``rows, cols`` (float ``[h', w']``,
    inside the image; pixel centres at integers): ``[h', w', c]``."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    flat = tf.reshape(image, [h * w, -1])
    r0, c0 = tf.floor(rows), tf.floor(cols)
    wr, wc = (rows - r0)[..., None], (cols - c0)[..., None]
    r0, c0 = tf.cast(r0, tf.int32), tf.cast(c0, tf.int32)
    top, bottom = r0 * w, tf.minimum(r0 + 1, h - 1) * w
    c1 = tf.minimum(c0 + 1, w - 1)

    def row(start):
        left = tf.gather(flat, start + c0)
        return left + wc * (tf.gather(flat, start + c1) - left)

    upper = row(top)
    return upper + wr * (row(bottom) - upper)


def _elastic_deform(
    image: tf.Tensor, labels: dict[str, tf.Tensor], seed: tf.Tensor, params: ElasticParams
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Elastic deformation of a crop: output pixel p takes its value from p + displacement(p)
    (:func:`elastic_displacement`), mirrored back into the crop where it falls outside; the
    image bilinearly, every mask-like field from the same nearest source pixel."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    shift = elastic_displacement(seed, h, w, params)
    rows = _mirror(tf.cast(tf.range(h), tf.float32)[:, None] + shift[..., 0], h)
    cols = _mirror(tf.cast(tf.range(w), tf.float32)[None, :] + shift[..., 1], w)
    nearest = tf.cast(tf.round(rows), tf.int32) * w + tf.cast(tf.round(cols), tf.int32)
    labels = {name: tf.gather(tf.reshape(f, [-1]), nearest) for name, f in labels.items()}
    return _bilinear_at(image, rows, cols), labels


# --- Training transform ---


def train_transform_fields(
    fields: dict[str, tf.Tensor],
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
    elastic: ElasticParams | None = None,
) -> dict[str, tf.Tensor]:
    """The training augmentation of one example's per-pixel fields; a pure function of ``seed``.

    Equivalent to: resize by a random scale (image bilinear, mask-like fields nearest) → pad
    bottom/right to ``crop_size`` → random ``crop_size`` crop (every position equally likely) →
    (elastic deformation of the part inside the image) → flip horizontally with probability
    1/2 → normalise. It is computed crop-first, about twice as fast on CPU: the window is cut
    from the unpadded resized image, mask-like fields are resampled only inside it, and
    padding (image: ``mean``; others: :data:`FIELD_FILL`) comes after normalisation.

    Args:
      fields: ``"image"`` uint8 or float ``[H, W, 3]``, ``"mask"`` uint8 ``[H, W]`` and
        optionally ``"weights"`` float32 and ``"instances"`` int32 ``[H, W]``, which take
        exactly the mask's source pixel everywhere.
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
      elastic: the U-Net paper's elastic deformation (seeded from ``seed``) of the crop's
        part inside the image: pixel p takes the value at p + displacement(p)
        (:func:`elastic_displacement`), the image bilinearly, mask-like fields from the
        nearest pixel (never blended); sources outside the crop are mirrored back in
        (``np.pad`` "reflect" about the edge pixels). None for none.

    Returns:
      the same keys: image float32 ``[h, w, 3]`` normalised, the others ``[h, w]``.

    Raises:
      ValueError: an unknown or missing field name.
    """
    labels = _mask_like_fields(fields)
    size = (int(crop_size[0]), int(crop_size[1]))
    u = tf.random.stateless_uniform([4], seed=seed)
    source_hw = (tf.shape(labels["mask"])[0], tf.shape(labels["mask"])[1])
    image = _random_resize(tf.cast(fields["image"], tf.float32), source_hw, scale_range, u[0])
    window = _CropWindow(size, source_hw, (tf.shape(image)[0], tf.shape(image)[1]))
    uy, ux = u[1], u[2]
    if cat_max_ratio < 1.0:
        uy, ux = _class_balanced_offsets(
            window, labels["mask"], seed, u[1:3], cat_max_ratio, max_tries
        )
    image = window.cut_image(image, uy, ux)
    labels = {name: window.cut_mask(field, uy, ux) for name, field in labels.items()}
    if elastic is not None:
        elastic_seed = tf.random.experimental.stateless_fold_in(seed, 3)
        image, labels = _elastic_deform(image, labels, elastic_seed, elastic)
    if photometric:
        image = photometric_distortion(
            image, tf.random.experimental.stateless_fold_in(seed, 2), colour_model=colour_model
        )
    image = _normalize_and_pad(image, size, mean, std)
    labels = {name: _pad_field(field, name, size) for name, field in labels.items()}
    if hflip:
        image, labels = _flip(image, labels, u[3] < 0.5)
    out = {"image": tf.ensure_shape(image, [*size, 3])}
    out.update({name: tf.ensure_shape(field, list(size)) for name, field in labels.items()})
    return out


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
    elastic: ElasticParams | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`train_transform_fields` of an image (uint8 or float ``[H, W, 3]``) and its mask
    (uint8 ``[H, W]``) with the same keyword arguments; a pure function of ``seed``.

    Returns:
      ``(image float32 [h, w, 3] normalised, mask uint8 [h, w])``.
    """
    out = train_transform_fields(
        {"image": image, "mask": mask},
        seed,
        crop_size=crop_size,
        scale_range=scale_range,
        hflip=hflip,
        mean=mean,
        std=std,
        photometric=photometric,
        colour_model=colour_model,
        cat_max_ratio=cat_max_ratio,
        max_tries=max_tries,
        elastic=elastic,
    )
    return out["image"], out["mask"]
