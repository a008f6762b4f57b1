"""Inference strategies: whole image, sliding window, multi-scale + flip, overlap-tile, CRF.

Every strategy takes ``logits_fn: images [N, h, w, 3] → logits [N, h, w, C]`` (a model applied
to fixed variables) and a batch of normalised images ``[B, H, W, 3]``, is pure and jit-able
(all shapes are static), and returns scores at the input size:

* :func:`whole_image` — one forward pass (logits).
* :func:`sliding_window` — ``crop``-sized tiles every ``stride`` pixels, logits of overlapping
  tiles averaged. At most ``tile_batch`` tile positions (``B · tile_batch`` tiles) go through
  the model at once inside a ``lax.scan``, so activation memory is bounded for any image size;
  only the ``[B, H, W, C]`` accumulator grows with the image.
* :func:`overlap_tile` — the original U-Net's overlap-tile with mirror padding (valid-conv
  models), through :func:`segjax.models.unet.overlap_tile_predict`.
* :func:`multi_scale_flip` — test-time augmentation: the image resized by each scale (and
  horizontally flipped, batched with the original), each prediction resized back, softmax
  probabilities averaged.
* :func:`crf_refine` — dense-CRF post-processing of probabilities (:mod:`segjax.evaluation.crf`).

:func:`make_predictor` combines them as configured. Restoring a trained model for inference is
:func:`segjax.checkpoint.load_for_inference` (variables only, via
:func:`segjax.checkpoint.restore_variables`).
"""

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segjax.errors import ConfigError
from segjax.evaluation import crf
from segjax.models import unet

LogitsFn = Callable[[jax.Array], jax.Array]
MODES = ("whole", "slide", "tile")


def whole_image(logits_fn: LogitsFn, images: jax.Array) -> jax.Array:
    """Logits ``[B, H, W, C]`` from one forward pass over the whole images."""
    return logits_fn(images)


def tile_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of tiles of side ``crop`` every ``stride`` pixels covering ``size`` pixels;
    the last tile is aligned with the far edge (so no tile leaves the image)."""
    if crop >= size:
        return [0]
    steps = math.ceil((size - crop) / stride)
    return [min(i * stride, size - crop) for i in range(steps + 1)]


def sliding_window(
    logits_fn: LogitsFn,
    images: jax.Array,
    *,
    crop: Sequence[int],
    stride: Sequence[int],
    tile_batch: int = 4,
) -> jax.Array:
    """Sliding-window logits: tiles of ``crop`` every ``stride``, overlaps averaged.

    A crop larger than the image is shrunk to the image (so a crop covering the image gives
    exactly the whole-image prediction). Tile positions are grouped ``tile_batch`` at a time;
    each group is one model call on ``B · tile_batch`` tiles inside a ``lax.scan``.

    Args:
      logits_fn: images ``[N, ch, cw, 3]`` → logits ``[N, ch, cw, C]``.
      images: ``[B, H, W, 3]``.
      crop: ``(ch, cw)`` tile size.
      stride: ``(sh, sw)`` step between tiles (≤ crop, or pixels are skipped).
      tile_batch: tile positions per model call (bounds memory).

    Returns:
      ``[B, H, W, C]`` float32 logits.

    Raises:
      ValueError: non-positive sizes, or a stride larger than the crop.
    """
    batch, height, width, channels = images.shape
    ch, cw = min(int(crop[0]), height), min(int(crop[1]), width)
    sh, sw = int(stride[0]), int(stride[1])
    if min(ch, cw, sh, sw, tile_batch) < 1:
        raise ConfigError(
            f"sliding_window: crop {tuple(crop)}, stride {tuple(stride)} and tile_batch "
            f"{tile_batch} must be positive"
        )
    if sh > ch or sw > cw:
        raise ConfigError(
            f"sliding_window: stride {(sh, sw)} larger than the crop {(ch, cw)} would leave "
            "pixels unpredicted"
        )
    positions = [(y, x) for y in tile_starts(height, ch, sh) for x in tile_starts(width, cw, sw)]
    counts = np.zeros((height, width), np.float32)
    for y, x in positions:
        counts[y : y + ch, x : x + cw] += 1
    k = min(tile_batch, len(positions))
    steps = -(-len(positions) // k)
    padded = positions + [positions[-1]] * (steps * k - len(positions))
    weights = np.zeros(steps * k, np.float32)
    weights[: len(positions)] = 1.0
    xs = (
        jnp.asarray(np.asarray(padded, np.int32).reshape(steps, k, 2)),
        jnp.asarray(weights.reshape(steps, k)),
    )
    num_classes = jax.eval_shape(
        logits_fn, jax.ShapeDtypeStruct((batch, ch, cw, channels), images.dtype)
    ).shape[-1]

    def body(acc, step):
        pos, w = step
        tiles = [
            jax.lax.dynamic_slice(images, (0, pos[i, 0], pos[i, 1], 0), (batch, ch, cw, channels))
            for i in range(k)
        ]
        logits = logits_fn(jnp.concatenate(tiles, axis=0)).astype(jnp.float32)
        logits = logits.reshape(k, batch, ch, cw, num_classes)
        for i in range(k):
            start = (0, pos[i, 0], pos[i, 1], 0)
            region = jax.lax.dynamic_slice(acc, start, (batch, ch, cw, num_classes))
            acc = jax.lax.dynamic_update_slice(acc, region + w[i] * logits[i], start)
        return acc, None

    acc = jnp.zeros((batch, height, width, num_classes), jnp.float32)
    acc, _ = jax.lax.scan(body, acc, xs)
    return acc / jnp.asarray(counts)[None, :, :, None]


def overlap_tile(
    logits_fn: LogitsFn,
    images: jax.Array,
    *,
    tile_size: int,
    margin: int,
    tile_batch: int | None = None,
) -> jax.Array:
    """The U-Net overlap-tile strategy (mirror-padded context around each output tile).

    ``logits_fn`` must be a valid-convolution model mapping ``tile_size + 2·margin`` inputs to
    ``tile_size`` outputs (e.g. ``UNetOriginal`` with ``mirror_pad=False``); see
    :func:`segjax.models.unet.overlap_tile_predict` and
    :func:`segjax.models.unet.unet_original_tile_geometry`.
    """
    return unet.overlap_tile_predict(
        logits_fn, images, tile_size=tile_size, margin=margin, tiles_per_call=tile_batch
    )


def _resize(x: jax.Array, height: int, width: int) -> jax.Array:
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "bilinear")


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """Image size at ``scale`` (rounded, at least one pixel)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def multi_scale_flip(
    predict: LogitsFn,
    images: jax.Array,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> jax.Array:
    """Mean softmax probabilities over scales and (optionally) horizontal flips.

    For each scale the images are resized (bilinear), the flipped copies are concatenated to
    the batch (one call predicts both), the logits are flipped back, resized to the input size
    and turned into probabilities; the result is their mean.

    Args:
      predict: images → logits at the same size (e.g. a partial of :func:`sliding_window`).
      images: ``[B, H, W, 3]``.
      scales: resize factors.
      flip: also predict the horizontally flipped images.

    Returns:
      ``[B, H, W, C]`` float32 probabilities.
    """
    if not scales:
        raise ConfigError("multi_scale_flip: at least one scale is needed")
    batch, height, width, _ = images.shape
    total = None
    for scale in scales:
        x = _resize(images, *scaled_size(height, width, float(scale)))
        if flip:
            x = jnp.concatenate([x, x[:, :, ::-1]], axis=0)
        logits = predict(x).astype(jnp.float32)
        if flip:
            logits = jnp.concatenate([logits[:batch], logits[batch:, :, ::-1]], axis=0)
        probs = jax.nn.softmax(_resize(logits, height, width), axis=-1)
        if flip:
            probs = probs[:batch] + probs[batch:]
        total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


def crf_refine(
    probs: jax.Array, images: jax.Array, mean: Sequence[float], std: Sequence[float], **crf_kw
) -> jax.Array:
    """Dense-CRF refinement of probabilities for normalised ``images`` (RGB recovered with
    ``mean`` and ``std``); returns refined probabilities."""
    rgb = jnp.clip(images * jnp.asarray(std) + jnp.asarray(mean), 0.0, 255.0)
    return crf.dense_crf(probs, rgb, from_logits=False, **crf_kw)


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """How to predict: see the module docstring.

    Attributes:
      mode: ``whole`` | ``slide`` | ``tile`` (overlap-tile, valid-convolution U-Net).
      crop, stride: sliding-window tile size and step (``slide``).
      tile_batch: tile positions per model call (``slide``, ``tile``).
      tile_size: output tile side (``tile``; rounded up to a valid size of the model).
      scales: test-time scales; ``(1.0,)`` = none.
      flip: add horizontally flipped predictions.
      crf: refine with the dense CRF.
    """

    mode: str = "whole"
    crop: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    tile_batch: int = 4
    tile_size: int = 388
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    crf: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"inference mode {self.mode!r} unknown; expected one of {MODES}")

    @property
    def uses_probabilities(self) -> bool:
        """Whether the predictor returns probabilities (TTA or CRF) rather than logits."""
        return self.crf or self.flip or tuple(self.scales) != (1.0,)


def make_predictor(model, options: InferenceOptions, *, mean=None, std=None):
    """``(variables, images) → scores [B, H, W, C]`` (pure; jit it).

    Scores are logits for plain whole/slide/tile prediction and probabilities when
    ``options.uses_probabilities``; their argmax is the prediction either way.

    Args:
      model: a segjax model (for ``tile``: ``UNetOriginal``, used with ``mirror_pad=False``).
      options: the strategy.
      mean, std: normalisation of the images (needed for ``crf``).
    """
    if options.mode == "tile":
        if not isinstance(model, unet.UNetOriginal):
            raise ConfigError(
                f"inference mode 'tile' (overlap-tile) needs a valid-convolution U-Net "
                f"(unet_original*), not {type(model).__name__}"
            )
        valid_model = model.clone(mirror_pad=False)
        tile_size, margin = unet.unet_original_tile_geometry(options.tile_size, model.depth)
    if options.crf and (mean is None or std is None):
        raise ValueError("make_predictor: crf needs the image mean and std")

    def predictor(variables, images):
        def logits_fn(x):
            return model.apply(variables, x, train=False)["out"]

        if options.mode == "whole":
            predict = logits_fn
        elif options.mode == "slide":
            predict = functools.partial(
                sliding_window,
                logits_fn,
                crop=options.crop,
                stride=options.stride,
                tile_batch=options.tile_batch,
            )
        else:
            predict = functools.partial(
                overlap_tile,
                lambda x: valid_model.apply(variables, x, train=False)["out"],
                tile_size=tile_size,
                margin=margin,
                tile_batch=options.tile_batch,
            )
        if not options.uses_probabilities:
            return predict(images)
        probs = multi_scale_flip(predict, images, scales=options.scales, flip=options.flip)
        if options.crf:
            probs = crf_refine(probs, images, mean, std)
        return probs

    return predictor


def parse_scales(text: str) -> tuple[float, ...]:
    """``"0.5,1.0,1.5"`` → ``(0.5, 1.0, 1.5)``.

    Raises:
      ValueError: empty, non-numeric or non-positive scales.
    """
    try:
        scales = tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--scales {text!r}: expected comma-separated numbers") from None
    if not scales or min(scales) <= 0:
        raise ConfigError(f"--scales {text!r}: expected positive numbers like 0.75,1.0,1.25")
    return scales


def options_for(
    config,
    *,
    mode="whole",
    crop=None,
    stride=None,
    tile_batch=4,
    tile_size=388,
    scales="1.0",
    flip=False,
    crf=False,
):
    """:class:`InferenceOptions` from command-line values (``crop``/``stride`` as lists of
    strings, ``scales`` as text); the crop defaults to ``config.data.crop_size`` and the stride
    to two thirds of the crop."""
    crop = tuple(int(c) for c in crop) if crop else tuple(config.data.crop_size)
    if len(crop) == 1:
        crop = crop * 2
    if stride:
        stride = tuple(int(s) for s in stride)
        stride = stride * 2 if len(stride) == 1 else stride
    else:
        stride = tuple(max(1, (2 * c) // 3) for c in crop)
    return InferenceOptions(
        mode=mode,
        crop=crop,
        stride=stride,
        tile_batch=tile_batch,
        tile_size=tile_size,
        scales=parse_scales(scales),
        flip=flip,
        crf=crf,
    )
