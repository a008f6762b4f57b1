"""Confusion matrix (jit-able, on device) and its summary (on host).

Rows are ground truth, columns are predictions; label 255 is ignored. A class absent from both
ground truth and predictions has NaN IoU/Dice/accuracy and is left out of the means.
"""

import jax
import jax.numpy as jnp
import numpy as np

# The ignore label of masks everywhere (padding, losses, metrics, datasets). Its one home is
# here, the lowest module: segjax.data, augment and losses import it from metrics.
IGNORE_INDEX = 255


def confusion_matrix(
    labels: jax.Array,
    predictions: jax.Array,
    num_classes: int,
    ignore_index: int = IGNORE_INDEX,
) -> jax.Array:
    """Counts (label, prediction) pairs over all non-ignored pixels.

    Args:
      labels: integer array of any shape; ``ignore_index`` marks pixels to skip.
      predictions: integer array of the same shape (class ids).
      num_classes: C.
      ignore_index: label to skip.

    Returns:
      int32 ``[C, C]``; ``cm[i, j]`` = pixels of class ``i`` predicted as ``j``.
    """
    labels = labels.astype(jnp.int32).reshape(-1)
    predictions = predictions.astype(jnp.int32).reshape(-1)
    valid = (labels != ignore_index) & (labels >= 0) & (labels < num_classes)
    index = jnp.where(valid, labels * num_classes + predictions, 0)
    counts = jnp.bincount(index, weights=valid.astype(jnp.int32), length=num_classes**2)
    return counts.astype(jnp.int32).reshape(num_classes, num_classes)


def summarize(cm: np.ndarray) -> dict:
    """Metrics of a confusion matrix.

    Returns:
      Dict with ``miou``, ``pixel_accuracy``, ``mean_accuracy``, ``fw_iou``, ``mdice`` (floats) and
      per-class lists ``iou``, ``dice``, ``accuracy`` (NaN for classes absent from both ground
      truth and predictions; NaN accuracy for classes absent from the ground truth).
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    union = gt + pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(gt + pred > 0, 2 * tp / (gt + pred), np.nan)
        accuracy = np.where(gt > 0, tp / gt, np.nan)
    total = cm.sum()
    freq = gt / total if total > 0 else np.zeros_like(gt)
    present = ~np.isnan(iou)

    def nanmean(x):
        return float(np.nanmean(x)) if np.any(~np.isnan(x)) else float("nan")

    return {
        "miou": nanmean(iou),
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_accuracy": nanmean(accuracy),
        "fw_iou": float(np.sum(freq[present] * iou[present])) if total > 0 else float("nan"),
        "mdice": nanmean(dice),
        "iou": iou.tolist(),
        "dice": dice.tolist(),
        "accuracy": accuracy.tolist(),
    }


def format_table(summary: dict, class_names: list[str] | tuple[str, ...]) -> str:
    """A per-class text table (IoU, accuracy, Dice in %) followed by the aggregate metrics."""

    def pct(v):
        return "   n/a" if v is None or np.isnan(v) else f"{100 * v:6.2f}"

    width = max([len("class")] + [len(n) for n in class_names])
    lines = [f"{'class':<{width}}    IoU    Acc   Dice"]
    for name, iou, acc, dice in zip(
        class_names, summary["iou"], summary["accuracy"], summary["dice"], strict=True
    ):
        lines.append(f"{name:<{width}} {pct(iou)} {pct(acc)} {pct(dice)}")
    lines.append(
        f"mIoU {pct(summary['miou'])}  pixel acc {pct(summary['pixel_accuracy'])}  "
        f"mean acc {pct(summary['mean_accuracy'])}  fwIoU {pct(summary['fw_iou'])}  "
        f"mDice {pct(summary['mdice'])}"
    )
    return "\n".join(lines)
