"""Segmentation losses. Label 255 means "ignore" everywhere.

Ignored pixels are removed with ``jnp.where`` (never by multiplying a possibly non-finite
value by zero), and means are taken over valid pixels only.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from segjax.metrics import IGNORE_INDEX


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
    logits = logits.astype(jnp.float32)
    valid = labels != ignore_index
    safe_labels = jnp.where(valid, labels, 0).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    w = jnp.ones_like(nll)
    if class_weights is not None:
        w = w * jnp.asarray(class_weights, jnp.float32)[safe_labels]
    if weights is not None:
        w = w * weights.astype(jnp.float32)
    w = jnp.where(valid, w, 0.0)
    total = jnp.sum(jnp.where(valid, nll * w, 0.0))
    norm = jnp.sum(w)
    loss = jnp.where(norm > 0, total / jnp.where(norm > 0, norm, 1.0), 0.0)
    return loss, jnp.sum(valid)


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
    frequencies. Use the result as ``cross_entropy(..., weights=w)``.

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
            raise ValueError(
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
    instances ``ids`` (at least two), float64."""
    d1 = np.full(instance_mask.shape, np.inf)
    d2 = np.full(instance_mask.shape, np.inf)
    for k in ids:
        # Euclidean distance of every pixel to the nearest pixel of instance k.
        d = ndimage.distance_transform_edt(instance_mask != k)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    return w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
