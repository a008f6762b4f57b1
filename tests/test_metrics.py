import chex
import jax
import numpy as np
import pytest

from segjax.evaluation import metrics


def _reference_cm(labels, preds, c):
    cm = np.zeros((c, c), np.int64)
    for t, p in zip(labels.ravel(), preds.ravel()):
        if t != 255:
            cm[t, p] += 1
    return cm


class ConfusionMatrixTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_reference_with_ignore(self):
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 5, (3, 17, 19))
        labels[rng.random(labels.shape) < 0.2] = 255
        preds = rng.integers(0, 5, (3, 17, 19))
        cm = self.variant(metrics.confusion_matrix, static_argnums=2)(labels, preds, 5)
        np.testing.assert_array_equal(np.asarray(cm), _reference_cm(labels, preds, 5))


def _reference_summary(cm):
    c = cm.shape[0]
    iou, dice, acc = [], [], []
    for k in range(c):
        tp = cm[k, k]
        fn = cm[k].sum() - tp
        fp = cm[:, k].sum() - tp
        iou.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
        acc.append(tp / (tp + fn) if tp + fn else np.nan)
    return np.array(iou), np.array(dice), np.array(acc)


def test_summary_against_reference_with_absent_class():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, (40, 40))  # class 3 never in ground truth
    labels[:5] = 255
    preds = np.where(rng.random(labels.shape) < 0.7, labels, rng.integers(0, 3, labels.shape))
    preds[0, 0] = 4  # class 4: predicted once (on an ignored pixel → not counted)
    preds[10, 10] = 4  # predicted on a valid pixel → IoU 0, accuracy NaN
    cm = np.asarray(metrics.confusion_matrix(labels, preds, 6))
    s = metrics.summarize(cm)
    iou, dice, acc = _reference_summary(cm)
    np.testing.assert_allclose(s["iou"], iou)
    np.testing.assert_allclose(s["dice"], dice)
    np.testing.assert_allclose(s["accuracy"], acc)
    assert np.isnan(s["iou"][3]) and np.isnan(s["iou"][5])  # absent from both
    assert s["iou"][4] == 0.0 and np.isnan(s["accuracy"][4])
    assert s["miou"] == pytest.approx(np.nanmean(iou))
    valid = labels != 255
    assert s["pixel_accuracy"] == pytest.approx(np.mean(preds[valid] == labels[valid]))
    freq = cm.sum(1) / cm.sum()
    assert s["fw_iou"] == pytest.approx(np.nansum(freq * np.nan_to_num(iou)))
    assert s["mdice"] == pytest.approx(np.nanmean(dice))
    assert s["mean_accuracy"] == pytest.approx(np.nanmean(acc))


def test_perfect_prediction_is_one_and_table_prints():
    labels = np.array([[0, 1], [2, 255]])
    cm = np.asarray(jax.jit(metrics.confusion_matrix, static_argnums=2)(labels, labels % 255, 3))
    s = metrics.summarize(cm)
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0
    table = metrics.format_table(s, ["a", "b", "c"])
    assert "mIoU 100.00" in table.replace("  ", " ")
