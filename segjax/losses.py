"""Segmentation losses. Label 255 means "ignore" everywhere.

Ignored pixels are removed with ``jnp.where`` (never by multiplying a possibly non-finite
value by zero), and means are taken over valid pixels only.
"""

import jax
import jax.numpy as jnp

IGNORE_INDEX = 255


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
    num_classes = logits.shape[-1]
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
    del num_classes
    return loss, jnp.sum(valid)
