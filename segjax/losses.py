"""Segmentation losses. Label 255 means "ignore" everywhere.

Every term takes logits ``[..., H, W, C]`` (any float dtype; computed in float32) and integer
labels ``[..., H, W]``. Ignored pixels are removed with ``jnp.where`` (never by multiplying a
possibly non-finite value by zero): their logits are replaced by zeros before anything is
computed, so they get an exact zero gradient, and a batch with no valid pixel gives a loss of 0
with a zero gradient. :func:`build_loss` turns ``config.train.loss`` (a weight per named term)
into one loss function.
"""

import functools
import math
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage

from segjax.errors import ConfigError
from segjax.evaluation.metrics import IGNORE_INDEX


def cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    weights: jax.Array | None = None,
    class_weights: jax.Array | None = None,
    ignore_index: int = IGNORE_INDEX,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Pixel-wise softmax cross-entropy with an ignore label.

    Args:
      logits: ``[..., H, W, C]`` logits (any float dtype; computed in float32).
      labels: ``[..., H, W]`` integer class ids, ``ignore_index`` for ignored pixels.
      weights: optional per-pixel weights ``[..., H, W]`` (e.g. the U-Net border weight map).
      class_weights: optional ``[C]`` weight per class (PyTorch's ``weight=``; the mean is
        normalised by the summed weights of valid pixels, as PyTorch does).
      ignore_index: label to ignore.
      label_smoothing: uniform label smoothing in ``[0, 1)``.

    Returns:
      ``(loss, num_valid)``: the weighted mean loss over valid pixels (0 when there are none)
      and the number of valid pixels.
    """
    logits, safe_labels, valid = _masked_inputs(logits, labels, ignore_index)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    w = _pixel_class_weights(class_weights, safe_labels, logits.shape[-1])
    if weights is not None:
        w = w * weights.astype(jnp.float32)
    w = jnp.where(valid, w, 0.0)
    total = jnp.sum(jnp.where(valid, nll * w, 0.0))
    return _safe_divide(total, jnp.sum(w)), jnp.sum(valid)


def unet_weight_map(
    instance_mask,
    class_mask=None,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights=None,
    background: int = 0,
    ignore_index: int = IGNORE_INDEX,
    border_on_background_only: bool = True,
):
    """The U-Net border weight map (Ronneberger et al. 2015, eq. 2), computed on the host.

    ``w(x) = w_c(x) + w0 · exp(−(d1(x) + d2(x))² / (2σ²))`` where ``d1``/``d2`` are the
    distances to the nearest and second-nearest instance and ``w_c`` balances the class
    frequencies. Use the result as ``cross_entropy(..., weights=w)``. The border term is exact
    to within 1e-6·w0 (each instance's distances are computed only within ≈ 5.3σ of its
    bounding box; see ``_border_weight_map``): about 0.4 s for a 512² image of 400 cells.

    Args:
      instance_mask: ``[H, W]`` (or ``[B, H, W]``) integer instance ids; ``background`` marks
        pixels outside every instance.
      class_mask: optional class ids of the same shape (``ignore_index`` = ignored). Default:
        1 inside instances, 0 on the background.
      w0: border weight (10 in the paper).
      sigma: border width in pixels (≈ 5 in the paper).
      class_weights: optional weight per class id (``w_c`` directly). Default: frequency
        balancing on this mask, ``w_c = N / (K · N_c)`` over the ``K`` classes present among the
        ``N`` non-ignored pixels (every present class gets the same total weight, mean 1).
      background: instance id of the background.
      ignore_index: class id whose pixels get weight 0.
      border_on_background_only: apply the border term only to background pixels (the gaps
        between touching cells, as the paper's figure shows); ``False`` applies it everywhere.

    Returns:
      float32 NumPy array of the input's shape.

    Raises:
      ValueError: shapes differ, or a class id has no entry in ``class_weights``.
    """
    instance_mask = np.asarray(instance_mask)
    if class_mask is None:
        class_mask = (instance_mask != background).astype(np.int64)
    class_mask = np.asarray(class_mask)
    if class_mask.shape != instance_mask.shape or instance_mask.ndim not in (2, 3):
        raise ValueError(
            "unet_weight_map: instance_mask and class_mask need the same [H, W] or [B, H, W] "
            f"shape, got {instance_mask.shape} and {class_mask.shape}"
        )
    if instance_mask.ndim == 3:
        per_image = functools.partial(
            unet_weight_map,
            w0=w0,
            sigma=sigma,
            class_weights=class_weights,
            background=background,
            ignore_index=ignore_index,
            border_on_background_only=border_on_background_only,
        )
        return np.stack([per_image(i, c) for i, c in zip(instance_mask, class_mask)])

    valid = class_mask != ignore_index
    weights = _class_weight_map(class_mask, valid, class_weights)
    ids = np.unique(instance_mask)
    ids = ids[ids != background]
    if ids.size >= 2 and w0:
        border = _border_weight_map(instance_mask, ids, w0, sigma)
        if border_on_background_only:
            border = np.where(instance_mask == background, border, 0.0)
        weights = weights + np.where(valid, border, 0.0)
    return weights.astype(np.float32)


def _class_weight_map(class_mask: np.ndarray, valid: np.ndarray, class_weights) -> np.ndarray:
    """``w_c`` of :func:`unet_weight_map` per pixel (float64; 0 on ignored pixels)."""
    weights = np.zeros(class_mask.shape, np.float64)
    present, counts = np.unique(class_mask[valid], return_counts=True)
    if class_weights is not None:
        table = np.asarray(class_weights, np.float64)
        if present.size and (present.min() < 0 or present.max() >= table.size):
            raise ConfigError(
                f"unet_weight_map: class ids {present.tolist()} need entries in class_weights "
                f"of length {table.size}"
            )
        weights[valid] = table[class_mask[valid]]
    elif present.size:
        per_class = valid.sum() / (present.size * counts)
        lookup = dict(zip(present.tolist(), per_class.tolist()))
        weights[valid] = np.vectorize(lookup.__getitem__, otypes=[np.float64])(class_mask[valid])
    return weights


def _border_weight_map(
    instance_mask: np.ndarray, ids: np.ndarray, w0: float, sigma: float
) -> np.ndarray:
    """The border term ``w0 · exp(−(d1 + d2)² / (2σ²))`` of :func:`unet_weight_map` for the
    instances ``ids`` (at least two), float64.

    Each instance's distance transform is computed only inside its bounding box grown by the
    margin ``M`` of :func:`_negligible_border_margin`; outside it the instance counts as
    infinitely far. A pixel outside instance k's grown box is farther than ``M`` from k, so k can
    only be its nearest or second-nearest instance when ``d1 + d2 > M``, where the term is below
    ``w0 · exp(−M² / (2σ²)) ≤ 1e-6 · w0``. Dropping k there only makes ``d1``/``d2`` larger,
    so the map is never above the exact one and at most ``1e-6 · w0`` below it. Inside the grown
    box the distances are exact: the crop holds all of k, so each crop pixel's nearest pixel of
    k is in the crop. The cost is one small transform per instance instead of one of the whole
    image (a 512² image with 400 cells: well under a second instead of ~10 s).
    """
    # Consecutive labels 1..K so that find_objects returns K boxes, not one per possible id
    # (ids are sparse, up to 65535).
    ids = np.sort(ids)
    labels = np.searchsorted(ids, instance_mask) + 1
    labels[~np.isin(instance_mask, ids)] = 0
    margin = _negligible_border_margin(sigma, max(instance_mask.shape))
    d1 = np.full(instance_mask.shape, np.inf)
    d2 = np.full(instance_mask.shape, np.inf)
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        grown = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n))
            for s, n in zip(box, labels.shape)
        )
        # Euclidean distance of every crop pixel to the nearest pixel of this instance.
        d = ndimage.distance_transform_edt(labels[grown] != label)
        d2[grown] = np.minimum(d2[grown], np.maximum(d1[grown], d))
        d1[grown] = np.minimum(d1[grown], d)
    return w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))


def _negligible_border_margin(sigma: float, limit: int) -> int:
    """The distance ``M`` in pixels with ``exp(−M² / (2σ²)) ≤ 1e-6``, i.e.
    ``M = ceil(σ · sqrt(2 · ln 1e6)) ≈ 5.3σ``, capped at ``limit`` (the image size, beyond which
    a larger margin changes nothing)."""
    margin = abs(sigma) * math.sqrt(2.0 * math.log(1e6))
    return int(math.ceil(margin)) if margin < limit else limit


# ----------------------------------------------------------------------------------------------
# The loss family: region terms (Dice, Jaccard, Tversky), focal, Lovász-softmax, OHEM, and
# build_loss, which sums the terms config.train.loss names.


def _masked_inputs(
    logits: jax.Array, labels: jax.Array, ignore_index: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(logits, labels, valid)`` with ignored pixels neutralised: float32 logits that are 0
    at ignored pixels (so a NaN there can reach neither the value nor the gradient), int32
    labels that are 0 there, and the boolean ``valid`` mask ``[..., H, W]``."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"loss: logits {logits.shape} need labels of shape {logits.shape[:-1]}, "
            f"got {labels.shape}"
        )
    valid = labels != ignore_index
    logits = jnp.where(valid[..., None], logits.astype(jnp.float32), 0.0)
    return logits, jnp.where(valid, labels, 0).astype(jnp.int32), valid


def _safe_divide(total: jax.Array, count: jax.Array) -> jax.Array:
    """``total / count``, or 0 when ``count`` is 0, with a finite (zero) gradient there."""
    positive = count > 0
    return jnp.where(positive, total / jnp.where(positive, count, 1.0), 0.0)


def _pixel_class_weights(class_weights, labels: jax.Array, num_classes: int) -> jax.Array:
    """The weight of each pixel's class, float32 ``labels.shape`` (ones without weights).

    Raises:
      ValueError: ``class_weights`` is not one weight per class.
    """
    if class_weights is None:
        return jnp.ones(labels.shape, jnp.float32)
    table = jnp.asarray(class_weights, jnp.float32)
    if table.shape != (num_classes,):
        raise ConfigError(
            f"loss: class_weights has shape {table.shape}, expected one weight per class "
            f"({num_classes},)"
        )
    return table[labels]


def _soft_overlap_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float,
    beta: float,
    smooth: float,
    ignore_index: int,
) -> jax.Array:
    """``1 − mean over classes of (TP + smooth) / (TP + α·FP + β·FN + smooth)``, the soft
    Tversky family that Dice and Jaccard belong to, through ``optax.losses.dice_loss``.

    TP, FP and FN are soft counts summed over every valid pixel of the batch. Classes with
    no valid pixel of their own contribute 0 but still count in the mean, as
    segmentation_models.pytorch's multiclass losses do.

    ``optax.losses.dice_loss`` has exactly this formula, but it cannot take the masked
    inputs directly: with ``apply_softmax=False`` it checks, in Python, that every pixel's
    probabilities sum to 1, which fails under ``jit`` and rejects the zeroed ignored pixels.
    So it gets logits with one extra class that takes the ignored pixels: there the real
    classes get logit −∞ (probability exactly 0) and the extra class is the target, and the
    extra class's score is dropped. The real classes' counts are then those of the valid
    pixels alone, as if ignored pixels had probability and target zeroed.
    """
    logits, labels, valid = _masked_inputs(logits, labels, ignore_index)
    num_classes = logits.shape[-1]
    # On an all-ignored batch every logit is replaced by a constant here, so the gradient
    # is exactly 0 even where the ratio is 0/0 (smooth = 0); the value is set to 0 below.
    extended = jnp.concatenate(
        [
            jnp.where(valid[..., None], logits, -jnp.inf),
            jnp.where(valid, -jnp.inf, 0.0)[..., None],
        ],
        axis=-1,
    )
    targets = jax.nn.one_hot(jnp.where(valid, labels, num_classes), num_classes + 1)
    every_pixel = tuple(range(extended.ndim - 1))
    per_class = optax.losses.dice_loss(
        extended,
        targets,
        smooth=smooth,
        alpha=alpha,
        beta=beta,
        reduction="none",
        axis=every_pixel,
    )[:num_classes]
    present = jnp.sum(targets[..., :num_classes], axis=every_pixel) > 0
    loss = jnp.mean(jnp.where(present, per_class, 0.0))
    return jnp.where(jnp.any(valid), loss, 0.0)


def dice_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    smooth: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Multi-class soft Dice loss over the valid pixels of the whole batch.

    ``1 − mean_c (2·Σ p_c t_c + smooth) / (Σ p_c + Σ t_c + smooth)`` with softmax
    probabilities ``p`` and one-hot targets ``t`` summed over the batch's valid pixels.
    Convention of segmentation_models.pytorch's ``DiceLoss("multiclass")``: a class absent
    from the batch's valid labels contributes 0 to the mean (whatever is predicted for it)
    and still counts in it; ``smooth`` is smp's ``smooth``. Computed with
    ``optax.losses.dice_loss`` (α = β = ½ and half the smoothing is the same ratio); see
    :func:`_soft_overlap_loss` for how ignored pixels are kept out of it.

    Args:
      logits: ``[..., H, W, C]`` logits (any float dtype; computed in float32).
      labels: ``[..., H, W]`` integer class ids, ``ignore_index`` for ignored pixels.
      smooth: added to numerator and denominator; > 0 keeps the gradient finite for a class
        that gets no probability mass at all.
      ignore_index: label to ignore.

    Returns:
      Scalar float32 loss (0 when no pixel is valid).
    """
    return _soft_overlap_loss(
        logits, labels, alpha=0.5, beta=0.5, smooth=smooth / 2, ignore_index=ignore_index
    )


def jaccard_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    smooth: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Multi-class soft Jaccard (IoU) loss over the valid pixels of the whole batch.

    ``1 − mean_c (Σ p_c t_c + smooth) / (Σ p_c + Σ t_c − Σ p_c t_c + smooth)``, with the same
    conventions as :func:`dice_loss` (smp's ``JaccardLoss("multiclass")``: classes absent
    from the valid labels contribute 0 and count in the mean). Computed with
    ``optax.losses.dice_loss`` at α = β = 1, which is this ratio exactly.

    Args:
      logits: ``[..., H, W, C]`` logits (any float dtype; computed in float32).
      labels: ``[..., H, W]`` integer class ids, ``ignore_index`` for ignored pixels.
      smooth: added to numerator and denominator (> 0, as for :func:`dice_loss`).
      ignore_index: label to ignore.

    Returns:
      Scalar float32 loss (0 when no pixel is valid).
    """
    return _soft_overlap_loss(
        logits, labels, alpha=1.0, beta=1.0, smooth=smooth, ignore_index=ignore_index
    )


def tversky_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Multi-class Tversky loss (Salehi et al. 2017) over the valid pixels of the batch.

    ``1 − mean_c (TP_c + smooth) / (TP_c + α·FP_c + β·FN_c + smooth)`` with soft counts
    ``TP_c = Σ p_c t_c``, ``FP_c = Σ p_c (1 − t_c)``, ``FN_c = Σ (1 − p_c) t_c``; α = β = ½
    is :func:`dice_loss`. Conventions of smp's ``TverskyLoss("multiclass")`` with its
    default ``gamma=1`` (classes absent from the valid labels contribute 0 and count in the
    mean). Computed with ``optax.losses.dice_loss``, whose α/β are the same weights.

    Args:
      logits: ``[..., H, W, C]`` logits (any float dtype; computed in float32).
      labels: ``[..., H, W]`` integer class ids, ``ignore_index`` for ignored pixels.
      alpha: weight of false positives (>= 0).
      beta: weight of false negatives (>= 0).
      smooth: added to numerator and denominator (> 0, as for :func:`dice_loss`).
      ignore_index: label to ignore.

    Returns:
      Scalar float32 loss (0 when no pixel is valid).
    """
    return _soft_overlap_loss(
        logits, labels, alpha=alpha, beta=beta, smooth=smooth, ignore_index=ignore_index
    )


def focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    gamma: float = 2.0,
    class_weights: jax.Array | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Softmax focal loss (Lin et al. 2017): the mean over valid pixels of
    ``−(1 − p_t)^γ · log p_t``, ``p_t`` the softmax probability of the true class.

    With ``class_weights`` each pixel is weighted by its class's weight and the sum is
    normalised by the summed weights, as :func:`cross_entropy` does, so γ = 0 is exactly the
    class-weighted cross-entropy. (optax's ``sigmoid_focal_loss`` is the binary, sigmoid
    form, not this one.)

    Args:
      logits: ``[..., H, W, C]`` logits (any float dtype; computed in float32).
      labels: ``[..., H, W]`` integer class ids, ``ignore_index`` for ignored pixels.
      gamma: focusing exponent γ >= 0.
      class_weights: optional ``[C]`` weight per class.
      ignore_index: label to ignore.

    Returns:
      Scalar float32 loss (0 when no pixel is valid).
    """
    logits, labels, valid = _masked_inputs(logits, labels, ignore_index)
    log_pt = jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1)[..., 0]
    # expm1 keeps 1 − p_t accurate when p_t is near 1. The floor keeps (1 − p_t)^γ
    # differentiable where p_t rounds to 1: d/dq q^γ is 0·∞ = NaN at q = 0 for γ < 1.
    tiny = jnp.finfo(jnp.float32).tiny
    one_minus_pt = -jnp.expm1(log_pt)
    one_minus_pt = jnp.where(one_minus_pt > tiny, one_minus_pt, tiny)
    per_pixel = -(one_minus_pt**gamma) * log_pt
    w = jnp.where(valid, _pixel_class_weights(class_weights, labels, logits.shape[-1]), 0.0)
    return _safe_divide(jnp.sum(jnp.where(valid, per_pixel * w, 0.0)), jnp.sum(w))


def lovasz_softmax_loss(
    logits: jax.Array, labels: jax.Array, *, ignore_index: int = IGNORE_INDEX
) -> jax.Array:
    """Lovász-softmax loss (Berman et al. 2018) over the valid pixels of the whole batch.

    For each class ``c`` the pixel errors ``|t_c − p_c|`` are sorted in decreasing order and
    dotted with the gradient of the Lovász extension of the Jaccard loss (the reference
    implementation's ``lovasz_grad``); the loss is the mean over the classes present among
    the valid labels (its ``classes="present"``, ``per_image=False``), 0 when none is.

    Static shapes: ignored pixels are sorted last with zero error, where they leave every
    valid pixel's Lovász gradient unchanged, instead of being removed.

    Args:
      logits: ``[..., H, W, C]`` logits (any float dtype; computed in float32).
      labels: ``[..., H, W]`` integer class ids, ``ignore_index`` for ignored pixels.
      ignore_index: label to ignore.

    Returns:
      Scalar float32 loss (0 when no pixel is valid).
    """
    logits, labels, valid = _masked_inputs(logits, labels, ignore_index)
    num_classes = logits.shape[-1]
    probs = jax.nn.softmax(logits).reshape(-1, num_classes)
    valid = valid.reshape(-1, 1)
    foreground = jax.nn.one_hot(labels.reshape(-1), num_classes) * valid
    errors = jnp.where(valid, jnp.abs(foreground - probs), 0.0)
    # Errors lie in [0, 1], so a key of −1 puts ignored pixels after every valid one.
    sort_keys = jax.lax.stop_gradient(jnp.where(valid, errors, -1.0))
    order = jnp.argsort(sort_keys, axis=0, descending=True)
    errors_sorted = jnp.take_along_axis(errors, order, axis=0)
    foreground_sorted = jnp.take_along_axis(foreground, order, axis=0)
    per_class = jnp.sum(errors_sorted * _lovasz_jaccard_grad(foreground_sorted), axis=0)
    present = jnp.sum(foreground, axis=0) > 0
    return _safe_divide(jnp.sum(jnp.where(present, per_class, 0.0)), jnp.sum(present))


def _lovasz_jaccard_grad(foreground_sorted: jax.Array) -> jax.Array:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in
    decreasing order (Berman et al. 2018, Alg. 1), per column of ``[N, C]`` 0/1 targets.

    The union is at least 1 at every position (a class with pixels has union >= its count;
    one without has a background pixel first), so the division is always defined.
    """
    total = jnp.sum(foreground_sorted, axis=0)
    intersection = total - jnp.cumsum(foreground_sorted, axis=0)
    union = total + jnp.cumsum(1.0 - foreground_sorted, axis=0)
    jaccard = 1.0 - intersection / union
    return jnp.concatenate([jaccard[:1], jnp.diff(jaccard, axis=0)], axis=0)


def ohem_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    *,
    thresh: float = 0.7,
    min_kept: int = 100_000,
    class_weights: jax.Array | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Cross-entropy over the hard pixels only (online hard example mining).

    Pixel selection of mmsegmentation's ``OHEMPixelSampler`` with a threshold: with
    ``p`` the softmax probability of the true class of each valid pixel, sorted increasingly,
    and ``k = min_kept × number of images`` (mmseg's ``min_kept`` is per image), the
    threshold is ``max(thresh, p_sorted[min(k, n_valid − 1)])`` and the pixels with
    ``p < threshold`` are kept (ties included or excluded together, as in mmseg). The
    selection carries no gradient.

    The loss is the mean cross-entropy over the kept pixels, normalised by their summed class
    weights as :func:`cross_entropy` is. (mmseg's ``CrossEntropyLoss`` instead divides the
    kept pixels' summed loss by the number of all pixels, or of all valid pixels with
    ``avg_non_ignore=True``.)

    Args:
      logits: ``[..., H, W, C]`` logits (any float dtype; computed in float32).
      labels: ``[..., H, W]`` integer class ids, ``ignore_index`` for ignored pixels.
      thresh: probability threshold in ``(0, 1]``.
      min_kept: pixels to keep at least per image (>= 1), when there are that many.
      class_weights: optional ``[C]`` weight per class.
      ignore_index: label to ignore.

    Returns:
      Scalar float32 loss (0 when no pixel is valid).
    """
    logits, safe_labels, valid = _masked_inputs(logits, labels, ignore_index)
    log_probs = jax.nn.log_softmax(jax.lax.stop_gradient(logits))
    prob_true = jnp.exp(jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0])
    # Ignored pixels sort after every valid one, so the first n_valid entries are mmseg's.
    sorted_probs = jnp.sort(jnp.where(valid, prob_true, jnp.inf).reshape(-1))
    num_valid = jnp.sum(valid)
    num_images = math.prod(labels.shape[:-2])
    budget = min(min_kept * num_images, sorted_probs.size - 1)
    index = jnp.clip(jnp.minimum(budget, num_valid - 1), 0, None)
    floor = jnp.where(num_valid > 0, sorted_probs[index], 0.0)
    kept = valid & (prob_true < jnp.maximum(floor, thresh))
    loss, _ = cross_entropy(
        logits,
        labels,
        weights=kept.astype(jnp.float32),
        class_weights=class_weights,
        ignore_index=ignore_index,
    )
    return loss


# The names config.train.loss may give a weight to (the one table of loss terms).
LOSS_TERMS = ("ce", "dice", "jaccard", "tversky", "focal", "lovasz", "ohem")

LossFn = Callable[[jax.Array, jax.Array, jax.Array | None], tuple[jax.Array, dict[str, jax.Array]]]


def build_loss(train_config) -> LossFn:
    """The training loss ``config.train`` asks for: the weighted sum of its named terms.

    ``train_config.loss`` gives each term of :data:`LOSS_TERMS` a weight (0 leaves it out):
    ``ce`` :func:`cross_entropy`, ``dice`` :func:`dice_loss`, ``jaccard``
    :func:`jaccard_loss`, ``tversky`` :func:`tversky_loss`, ``focal`` :func:`focal_loss`,
    ``lovasz`` :func:`lovasz_softmax_loss`, ``ohem`` :func:`ohem_cross_entropy`, with their
    parameters from ``train_config.loss_params``. ``train_config.class_weights`` apply to
    ``ce``, ``focal`` and ``ohem``; ``label_smoothing`` and the per-pixel weights (the U-Net
    border weight map) to ``ce`` only.

    Args:
      train_config: ``config.train`` (``loss``, ``loss_params``, ``class_weights``,
        ``label_smoothing``).

    Returns:
      ``loss_fn(logits, labels, pixel_weights=None) -> (total, terms)``: ``total`` is the
      float32 scalar ``Σ weight · term``, ``terms`` maps each used term's name to its
      (unweighted) value. Pure and jit-able.

    Raises:
      ValueError: (one line, naming the key) an unknown term or parameter, a negative or
        non-finite weight, all weights 0, or a parameter out of its range.
    """
    weights = _term_weights(train_config.loss)
    params = _loss_params(train_config.loss_params)
    class_weights = _config_class_weights(train_config.class_weights)
    label_smoothing = train_config.label_smoothing
    if not (_is_finite_number(label_smoothing) and 0 <= label_smoothing < 1):
        raise ConfigError(
            f"config.train.label_smoothing={label_smoothing!r}: must be a number in [0, 1)"
        )
    terms = _term_functions(params, class_weights, float(label_smoothing))
    used = {name: terms[name] for name in weights}

    def loss_fn(logits, labels, pixel_weights=None):
        """``(Σ weight · term, {name: term})`` of the configured loss terms."""
        values = {name: term(logits, labels, pixel_weights) for name, term in used.items()}
        total = sum(weights[name] * value for name, value in values.items())
        return jnp.asarray(total, jnp.float32), values

    return loss_fn


def _term_functions(params: dict, class_weights, label_smoothing: float) -> dict[str, Callable]:
    """``name → fn(logits, labels, pixel_weights) -> scalar`` for every term in
    :data:`LOSS_TERMS`, with the validated parameters bound."""
    return {
        "ce": lambda x, y, w: cross_entropy(
            x, y, weights=w, class_weights=class_weights, label_smoothing=label_smoothing
        )[0],
        "dice": lambda x, y, w: dice_loss(x, y, smooth=params["dice_smooth"]),
        "jaccard": lambda x, y, w: jaccard_loss(x, y, smooth=params["jaccard_smooth"]),
        "tversky": lambda x, y, w: tversky_loss(
            x,
            y,
            alpha=params["tversky_alpha"],
            beta=params["tversky_beta"],
            smooth=params["tversky_smooth"],
        ),
        "focal": lambda x, y, w: focal_loss(
            x, y, gamma=params["focal_gamma"], class_weights=class_weights
        ),
        "lovasz": lambda x, y, w: lovasz_softmax_loss(x, y),
        "ohem": lambda x, y, w: ohem_cross_entropy(
            x,
            y,
            thresh=params["ohem_thresh"],
            min_kept=params["ohem_min_kept"],
            class_weights=class_weights,
        ),
    }


def _is_finite_number(value) -> bool:
    """True for a finite real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _term_weights(loss_config) -> dict[str, float]:
    """The non-zero weights of ``config.train.loss``, validated.

    Raises:
      ValueError: an unknown term, a weight that is not a finite number >= 0, or all 0.
    """
    weights = {}
    for name, value in loss_config.items():
        if name not in LOSS_TERMS:
            raise ConfigError(
                f"config.train.loss.{name}: unknown loss term {name!r}; "
                f"known: {', '.join(LOSS_TERMS)}"
            )
        if not (_is_finite_number(value) and value >= 0):
            raise ConfigError(
                f"config.train.loss.{name}={value!r}: a loss weight must be a finite number >= 0"
            )
        if value > 0:
            weights[name] = float(value)
    if not weights:
        raise ConfigError(
            "config.train.loss: every term has weight 0; give at least one of "
            f"{', '.join(LOSS_TERMS)} a weight > 0"
        )
    return weights


def _positive(v) -> bool:
    """A finite number > 0."""
    return _is_finite_number(v) and v > 0


def _non_negative(v) -> bool:
    """A finite number >= 0."""
    return _is_finite_number(v) and v >= 0


# config.train.loss_params: name → (accepts the value, what is expected).
_LOSS_PARAM_RULES = {
    "dice_smooth": (_positive, "a finite number > 0"),
    "jaccard_smooth": (_positive, "a finite number > 0"),
    "tversky_alpha": (_non_negative, "a finite number >= 0"),
    "tversky_beta": (_non_negative, "a finite number >= 0"),
    "tversky_smooth": (_positive, "a finite number > 0"),
    "focal_gamma": (_non_negative, "a finite number >= 0"),
    "ohem_thresh": (lambda v: _is_finite_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "ohem_min_kept": (
        lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1,
        "an integer >= 1",
    ),
}


def _loss_params(params_config) -> dict:
    """``config.train.loss_params`` as a dict, every parameter validated.

    Raises:
      ValueError: an unknown or missing parameter, or a value out of its range.
    """
    given = dict(params_config.items())
    for name in given:
        if name not in _LOSS_PARAM_RULES:
            raise ConfigError(
                f"config.train.loss_params.{name}: unknown loss parameter; "
                f"known: {', '.join(_LOSS_PARAM_RULES)}"
            )
    for name, (accepts, expected) in _LOSS_PARAM_RULES.items():
        if name not in given:
            raise ConfigError(f"config.train.loss_params.{name}: missing; expected {expected}")
        if not accepts(given[name]):
            raise ConfigError(
                f"config.train.loss_params.{name}={given[name]!r}: must be {expected}"
            )
    return given


def _config_class_weights(class_weights) -> np.ndarray | None:
    """``config.train.class_weights`` as a float32 array, or None for ``()``.

    Raises:
      ValueError: not a sequence of finite numbers >= 0 with at least one > 0.
    """
    values = list(np.asarray(class_weights, dtype=object).reshape(-1))
    if not values:
        return None
    if not all(_non_negative(v) for v in values) or not any(v > 0 for v in values):
        raise ConfigError(
            f"config.train.class_weights={tuple(class_weights)!r}: must be () or one finite "
            "weight >= 0 per class, at least one > 0"
        )
    return np.asarray(values, np.float32)
