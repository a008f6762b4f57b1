"""Confusion matrix (jit-able, on device) and its summary (on host); object-level metrics.

Rows are ground truth, columns are predictions; label 255 is ignored. A class absent from both
ground truth and predictions has NaN IoU/Dice/accuracy and is left out of the means.

Object-level metrics (host-side NumPy/SciPy, for data with instance masks) match connected
components of the predicted classes to the true instances: see :func:`object_match_counts`.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from segjax.errors import ConfigError, DataError

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


def _percent(v) -> str:
    return "   n/a" if v is None or np.isnan(v) else f"{100 * v:6.2f}"


def format_table(summary: dict, class_names: list[str] | tuple[str, ...]) -> str:
    """A per-class text table (IoU, accuracy, Dice in %) followed by the aggregate metrics."""
    pct = _percent
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


# The layout of the count vector of :func:`object_match_counts`. Every entry is a plain count, so
# vectors of different images and processes are summed before :func:`summarize_objects`; AJI in
# particular is "aggregated": C and U are summed over the dataset, not averaged per image.
OBJECT_COUNT_FIELDS = ("tp", "fp", "fn", "aji_intersection", "aji_union")


def object_match_counts(
    pred: np.ndarray,
    instances: np.ndarray,
    instance_class: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    connectivity: int = 1,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Object detection counts and AJI sums of one image, to be summed over a dataset.

    Conventions:

    * Ignored pixels (``instance_class == ignore_index``) are removed from the prediction and from
      the true instances before anything else, so they never count (a predicted region running
      through an ignored band is two objects).
    * Predicted objects: connected components of each predicted foreground class (class != 0),
      labelled separately per class (two touching regions of different classes are two objects).
      ``connectivity=1`` (default, scipy's): 4-connected, so a one-pixel background line, even a
      diagonal one, separates two cells; ``connectivity=2``: 8-connected.
    * True objects: instance ids != 0; an instance's class is the class mask under its pixels. An
      instance the class mask marks as background (class 0) is not an object.
    * Detection: a predicted and a true object of the SAME class match when IoU > ``iou_threshold``
      (strictly). A threshold >= 0.5 makes matches one-to-one (an object cannot overlap two disjoint
      objects each by more than half of their union), so no assignment step is needed. Matched
      pairs are TPs, unmatched predictions FPs, unmatched true instances FNs.
    * AJI (Kumar et al. 2017), class-agnostic as in the paper (it measures delineation; the class is
      judged by the detection counts): each true instance G picks the predicted object S with the
      largest IoU (ties: the first in label order), C += |G ∩ S|, U += |G ∪ S|; a G overlapping no
      prediction adds |G| to U; predictions never picked add their area to U. As in the original
      (unlike AJI+) one S may be picked by several G, and then its pixels count in U each time.

    Args:
      pred: ``[H, W]`` integer predicted class ids (0 = background).
      instances: ``[H, W]`` non-negative integer instance ids (0 = background), unique per image.
      instance_class: ``[H, W]`` integer true class mask (0 background, ``ignore_index`` ignored).
      iou_threshold: in [0.5, 1).
      connectivity: 1 (4-connected) or 2 (8-connected) components of the prediction.
      ignore_index: the ignore label of ``instance_class``.

    Returns:
      int64 ``[5]`` laid out as :data:`OBJECT_COUNT_FIELDS`: tp, fp, fn, AJI intersection C, AJI
      union U. Sum these over images (and processes), then call :func:`summarize_objects`.

    Raises:
      ValueError: arrays not 2-D integer of one shape, negative instance ids, an instance covering
        several classes, or an ``iou_threshold``/``connectivity`` out of range.
    """
    _check_object_inputs(pred, instances, instance_class, iou_threshold, connectivity)
    instance_class = np.asarray(instance_class)
    valid = instance_class != ignore_index
    pred_labels, pred_cls = _label_predicted_objects(np.asarray(pred), valid, connectivity)
    true_labels, true_cls = _compact_true_objects(np.asarray(instances), instance_class, valid)
    n_pred, n_true = len(pred_cls) - 1, len(true_cls) - 1

    pred_area = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    true_area = np.bincount(true_labels.ravel(), minlength=n_true + 1)
    # Only overlapping pairs are counted (sparse): an untrained model's speckle can give thousands
    # of components, and a dense n_pred × n_true table would then be mostly zeros.
    both = (pred_labels > 0) & (true_labels > 0)
    pair_key = pred_labels[both].astype(np.int64) * (n_true + 1) + true_labels[both]
    pair_key, inter = np.unique(pair_key, return_counts=True)
    pi, ti = np.divmod(pair_key, n_true + 1)
    union = pred_area[pi] + true_area[ti] - inter
    iou = inter / union

    tp = int(np.count_nonzero((pred_cls[pi] == true_cls[ti]) & (iou > iou_threshold)))
    aji_c, aji_u = _aji_sums(pi, ti, inter, union, iou, pred_area, true_area)
    return np.array([tp, n_pred - tp, n_true - tp, aji_c, aji_u], np.int64)


def _aji_sums(pi, ti, inter, union, iou, pred_area, true_area) -> tuple[int, int]:
    """AJI's C and U from the overlapping (predicted, true) pairs and the object areas."""
    # Each true object's pair of largest IoU: sorting by (true id, -IoU, pred id) puts it first
    # in that true object's run of pairs.
    order = np.lexsort((pi, -iou, ti))
    first = order[np.r_[True, ti[order][1:] != ti[order][:-1]]] if len(order) else order
    picked_pred = np.zeros(len(pred_area), bool)
    picked_pred[pi[first]] = True
    unmatched_true = np.ones(len(true_area), bool)
    unmatched_true[ti[first]] = False
    aji_u = (
        union[first].sum()
        + true_area[1:][unmatched_true[1:]].sum()
        + pred_area[1:][~picked_pred[1:]].sum()
    )
    return int(inter[first].sum()), int(aji_u)


def _check_object_inputs(pred, instances, instance_class, iou_threshold, connectivity) -> None:
    arrays = {"pred": pred, "instances": instances, "instance_class": instance_class}
    shapes = {name: np.shape(a) for name, a in arrays.items()}
    if len(set(shapes.values())) != 1 or len(shapes["pred"]) != 2:
        raise ValueError(
            f"object_match_counts: expected three [H, W] arrays of one shape, got {shapes}"
        )
    for name, a in arrays.items():
        if not np.issubdtype(np.asarray(a).dtype, np.integer):
            raise ValueError(
                f"object_match_counts: {name} has dtype {np.asarray(a).dtype}, expected integer ids"
            )
    if np.size(instances) and np.min(instances) < 0:
        raise DataError(
            f"object_match_counts: instance id {np.min(instances)} is negative, "
            "expected 0 (background) or a positive id"
        )
    if not 0.5 <= iou_threshold < 1:
        raise ConfigError(
            f"object_match_counts: iou_threshold={iou_threshold}, expected 0.5 <= t < 1 "
            "(below 0.5 matches are no longer one-to-one)"
        )
    if connectivity not in (1, 2):
        raise ConfigError(
            f"object_match_counts: connectivity={connectivity}, expected 1 (4-connected) or "
            "2 (8-connected)"
        )


def _label_predicted_objects(
    pred: np.ndarray, valid: np.ndarray, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    """Labels 1..n over all predicted foreground classes, and the class of each (index 0 unused)."""
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels = np.zeros(pred.shape, np.int32)
    classes = [np.zeros(1, np.int64)]
    foreground = (pred != 0) & valid
    count = 0
    for c in np.unique(pred[foreground]):
        class_labels, n = ndimage.label(foreground & (pred == c), structure=structure)
        inside = class_labels > 0
        labels[inside] = class_labels[inside] + count
        classes.append(np.full(n, c, np.int64))
        count += n
    return labels, np.concatenate(classes)


def _compact_true_objects(
    instances: np.ndarray, instance_class: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """True objects relabelled 1..n (ignored and class-0 pixels dropped), and the class of each."""
    ids = np.where(valid, instances, 0)
    present, compact = _compact_ids(ids)
    cls = np.zeros(len(present), np.int64)
    cls[compact] = instance_class  # any pixel's class; checked for consistency next
    cls[0] = 0
    inside = compact > 0
    mixed = inside & (cls[compact] != instance_class)
    if mixed.any():
        k = compact[mixed][0]
        found = np.unique(instance_class[inside & (compact == k)]).tolist()
        raise DataError(
            f"object_match_counts: instance {present[k]} covers classes {found} in the class "
            "mask, expected one class per instance"
        )
    # Instances labelled background in the class mask are not objects.
    keep = cls > 0
    keep[0] = True
    remap = np.cumsum(keep) - 1
    remap[~keep] = 0
    return remap[compact].astype(np.int32), cls[keep]


def _compact_ids(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted ids present (with 0 first, always) and each pixel's index into them."""
    largest = int(ids.max(initial=0))
    if largest < 2**20:
        # The usual case (uint16-stored ids): a lookup table, no sort over the pixels.
        pixels_per_id = np.bincount(ids.ravel().astype(np.intp), minlength=1)
        pixels_per_id[0] = 1  # 0 is always in `present`, even when no pixel is background
        present = np.flatnonzero(pixels_per_id)
        lookup = np.zeros(largest + 1, np.int64)
        lookup[present] = np.arange(len(present))
        return present, lookup[ids]
    # Huge ids (32-bit TIFF exports): a table that large would waste memory; unique() hashes, and
    # the search is against the few ids found.
    present = np.union1d(np.unique(ids), [0])
    return present, np.searchsorted(present, ids)


def summarize_objects(counts: np.ndarray) -> dict:
    """Object precision / recall / F1 and AJI from summed :func:`object_match_counts` vectors.

    precision = tp / (tp + fp), recall = tp / (tp + fn), F1 = 2 tp / (2 tp + fp + fn), AJI = C / U.
    Each is NaN when its denominator is 0 (precision without predicted objects, recall without
    true objects, F1 and AJI with neither).

    Returns:
      Dict with floats ``object_precision``, ``object_recall``, ``object_f1``, ``aji`` and ints
      ``object_tp``, ``object_fp``, ``object_fn``.

    Raises:
      ValueError: ``counts`` is not a vector of ``len(OBJECT_COUNT_FIELDS)`` non-negative counts.
    """
    counts = np.asarray(counts)
    if counts.shape != (len(OBJECT_COUNT_FIELDS),) or np.any(counts < 0):
        raise ValueError(
            f"summarize_objects: counts {counts.tolist()} (shape {counts.shape}), expected "
            f"{len(OBJECT_COUNT_FIELDS)} non-negative counts {OBJECT_COUNT_FIELDS}"
        )
    tp, fp, fn, aji_c, aji_u = (int(v) for v in counts)

    def ratio(num, den):
        return num / den if den > 0 else float("nan")

    return {
        "object_precision": ratio(tp, tp + fp),
        "object_recall": ratio(tp, tp + fn),
        "object_f1": ratio(2 * tp, 2 * tp + fp + fn),
        "aji": ratio(aji_c, aji_u),
        "object_tp": tp,
        "object_fp": fp,
        "object_fn": fn,
    }


def format_object_table(summary: dict) -> str:
    """Two-line text table of :func:`summarize_objects`: TP/FP/FN, then prec./recall/F1/AJI %."""
    counts = [f"{summary[k]:>8d}" for k in ("object_tp", "object_fp", "object_fn")]
    rate_keys = ("object_precision", "object_recall", "object_f1", "aji")
    rates = [_percent(summary[k]) for k in rate_keys]
    return "\n".join(
        [
            f"{'objects':<8}{'TP':>8}{'FP':>8}{'FN':>8}   prec.  recall      F1     AJI",
            f"{'':<8}{''.join(counts)}  {'  '.join(rates)}",
        ]
    )
