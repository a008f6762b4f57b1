"""segjax.evaluation.coco_eval's backends: faster-coco-eval gives pycocotools' statistics.

pycocotools is the reference (issue 16); ``backend="faster_coco_eval"`` is offered because it
agrees. Both evaluate the same accumulated records here: random images with objects of every
area range (small < 32², medium, large > 96²), irregular masks, crowd regions with detections
inside them, missed objects, duplicates, wrong-class and background detections, scores rounded
to create ties, an image over the 100-detection cap, images without objects or detections, and
given areas that differ from the mask's pixel count.

The matching is the same, so the recall statistics (AR…) must be equal exactly. The AP
statistics may differ in the last bits: pycocotools' precision is ``tp / (tp + fp +
np.spacing(1))``, faster-coco-eval's C++ ``tp / (tp + fp)``, so each precision value is up to
2.2e-16 (relative) higher there; measured on these fixtures: at most 2 ulp in the precision
arrays, 1.1e-16 in a statistic. AP is compared within :data:`AP_TOLERANCE`.
"""

import copy
import dataclasses
import sys

import numpy as np
import pytest

from segjax.config import base_config
from segjax.evaluation import coco_eval
from tests.test_coco_eval import _fixture as parity_fixture
from tests.test_coco_eval import fixture_evaluator, reference_metrics

NUM_CLASSES = 6  # labels 1 … 5
CATEGORY_IDS = (0, 3, 11, 7, 25, 4)  # not contiguous, not sorted: as COCO's
# AP: pycocotools' eps in the precision's denominator (module docstring), a few ulp of a mean.
AP_TOLERANCE = 1e-15


def blob(rng, hw, box) -> np.ndarray:
    """An irregular 0/1 mask in ``box`` (x1, y1, x2, y2): an ellipse with a wobbly edge."""
    x1, y1, x2, y2 = box
    ys, xs = np.mgrid[: hw[0], : hw[1]] + 0.5
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, max((x2 - x1) / 2, 1), max((y2 - y1) / 2, 1)
    angle = np.arctan2(ys - cy, xs - cx)
    wobble = 1 + 0.15 * np.sin(rng.integers(2, 6) * angle + rng.uniform(0, 2 * np.pi))
    return ((((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2) <= wobble**2).astype(np.uint8)


def random_box(rng, hw, side) -> list[float]:
    w, h = side * rng.uniform(0.6, 1.4, 2)
    x1 = rng.uniform(0, max(hw[1] - w, 1))
    y1 = rng.uniform(0, max(hw[0] - h, 1))
    return [x1, y1, min(x1 + w, hw[1]), min(y1 + h, hw[0])]


def random_image(rng, hw) -> tuple[dict, dict]:
    """One image's ground truth and detections (module docstring)."""
    sides = rng.choice([12, 24, 50, 80, 130], rng.integers(0, 9))  # small … large
    gt_boxes = [random_box(rng, hw, s) for s in sides]
    gt_masks = [blob(rng, hw, b) for b in gt_boxes]
    labels = list(rng.integers(1, NUM_CLASSES, len(gt_boxes)))
    crowd = list(rng.random(len(gt_boxes)) < 0.15)
    dt_boxes, dt_masks, dt_labels = [], [], []
    for box, mask, label, is_crowd in zip(gt_boxes, gt_masks, labels, crowd):
        if rng.random() < 0.2:
            continue  # missed
        for _ in range(rng.integers(1, 4 if is_crowd else 3)):  # duplicates, crowd members
            quality = rng.choice([0.02, 0.08, 0.25])  # good, fair, poor localisation
            shift = rng.normal(0, quality * (box[2] - box[0]), 2)
            dt_box = np.clip(np.add(box, np.tile(shift, 2)), 0, [hw[1], hw[0]] * 2)
            if is_crowd:  # a part of the crowd region
                x1, y1, x2, y2 = box
                dt_box = random_box(rng, hw, (x2 - x1) / 3) if rng.random() < 0.5 else dt_box
            dt_boxes.append(list(dt_box))
            dt_masks.append(np.roll(mask, np.round(shift[::-1]).astype(int), axis=(0, 1)))
            swap = rng.random() < 0.1
            dt_labels.append(int(rng.integers(1, NUM_CLASSES)) if swap else label)
    for _ in range(rng.integers(0, 4)):  # on the background
        box = random_box(rng, hw, rng.choice([15, 40, 100]))
        dt_boxes.append(box)
        dt_masks.append(blob(rng, hw, box))
        dt_labels.append(int(rng.integers(1, NUM_CLASSES)))
    # Probabilities, thresholded by the evaluator at 0.5: the mask with 3 % of its pixels lost.
    probabilities = [m * np.where(rng.random(hw) < 0.03, 0.3, rng.uniform(0.55, 1, hw))
                     for m in dt_masks]  # fmt: skip
    scores = np.round(rng.uniform(0.05, 1, len(dt_boxes)), 1)  # ties within and across images
    gt = {
        "boxes": np.asarray(gt_boxes, np.float64).reshape(-1, 4),
        "labels": np.asarray(labels, np.int32),
        "masks": np.asarray(gt_masks, np.uint8).reshape(-1, *hw),
        "is_crowd": np.asarray(crowd, bool),
    }
    dt = {
        "boxes": np.asarray(dt_boxes, np.float64).reshape(-1, 4),
        "labels": np.asarray(dt_labels, np.int32),
        "scores": scores.astype(np.float32),
        "masks": np.asarray(probabilities, np.float32).reshape(-1, *hw),
    }
    return gt, dt


def crowded_image(rng, hw) -> tuple[dict, dict]:
    """120 detections (over the 100 kept per image), scores in a few tied values."""
    gt, _ = random_image(rng, hw)
    while not len(gt["labels"]):
        gt, _ = random_image(rng, hw)
    boxes = [random_box(rng, hw, rng.choice([10, 30, 60])) for _ in range(120)]
    dt = {
        "boxes": np.asarray(boxes),
        "labels": rng.integers(1, NUM_CLASSES, 120).astype(np.int32),
        "scores": rng.choice([0.3, 0.5, 0.9], 120).astype(np.float32),
        "masks": np.asarray([blob(rng, hw, b) for b in boxes], bool),
    }
    return gt, dt


def random_evaluator(seed: int, num_images: int = 12) -> coco_eval.CocoEvaluator:
    rng = np.random.default_rng(seed)
    evaluator = coco_eval.CocoEvaluator(NUM_CLASSES, CATEGORY_IDS)
    for i in range(num_images):
        hw = tuple(int(s) for s in rng.choice([96, 160, 240], 2))
        gt, dt = random_image(rng, hw)
        if i == 1:
            dt = None  # an image without detections
        if i == 2:  # given areas (as COCO's polygons' areas), not the mask's pixel count
            gt["areas"] = gt["masks"].sum((1, 2)) * rng.uniform(0.8, 1.2, len(gt["labels"]))
        if i == 3:
            gt, dt = crowded_image(rng, hw)
        evaluator.add_image(1000 + 7 * i, hw, gt, dt, pasted=True)
    return evaluator


def with_backend(evaluator, backend: str) -> coco_eval.CocoEvaluator:
    return dataclasses.replace(evaluator, backend=backend)


def assert_backends_agree(evaluator) -> dict:
    """pycocotools' statistics of ``evaluator``, after checking faster-coco-eval's: AR equal,
    AP within :data:`AP_TOLERANCE`; the accumulated records are left as they were (both
    ``loadRes`` write into the results they are given)."""
    records = copy.deepcopy(evaluator.images)
    reference = with_backend(evaluator, "pycocotools").evaluate()
    fast = with_backend(evaluator, "faster_coco_eval").evaluate()
    assert fast.keys() == reference.keys()
    tolerance = {k: AP_TOLERANCE if "/AP" in k else 0.0 for k in reference}
    differing = {
        k: (reference[k], fast[k]) for k in reference if abs(fast[k] - reference[k]) > tolerance[k]
    }
    assert not differing, differing
    assert evaluator.images == records
    return reference


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backends_agree_on_random_images(seed):
    evaluator = random_evaluator(seed)
    anns = [a for r in evaluator.images.values() for a in r["ground_truth"]]
    assert any(a["iscrowd"] for a in anns)
    assert len(evaluator.results()) > 150
    metrics = assert_backends_agree(evaluator)
    for iou_type in ("bbox", "segm"):  # not vacuous: every statistic defined, none 0 or 1
        values = [metrics[f"{iou_type}/{name}"] for name in coco_eval.STAT_NAMES]
        assert all(0.02 < v < 0.98 for v in values), (iou_type, values)
    assert metrics["bbox/AP"] != metrics["segm/AP"]


def test_backends_agree_on_the_torchvision_fixture():
    """The parity fixture's torchvision detections: faster-coco-eval reproduces the statistics
    pycocotools gave them (stored by ``tools/make_coco_eval_fixture.py``)."""
    _, arrays = parity_fixture()

    def torchvision_detections(_, image_id):
        return {k: arrays[f"{image_id}/{k}"] for k in ("boxes", "scores", "labels", "masks")}, True

    evaluator = with_backend(fixture_evaluator(torchvision_detections), "faster_coco_eval")
    assert evaluator.evaluate() == pytest.approx(reference_metrics(), abs=AP_TOLERANCE)


def test_backends_agree_on_empty_and_box_only_evaluations():
    """pycocotools' -1 (undefined) where there is nothing to score, and box-only evaluation."""
    rng = np.random.default_rng(5)
    hw = (160, 160)
    gt, dt = random_image(rng, hw)
    none = {k: v[:0] for k, v in gt.items()}
    assert set(assert_backends_agree(coco_eval.CocoEvaluator(NUM_CLASSES)).values()) == {-1.0}
    only_false = coco_eval.CocoEvaluator(NUM_CLASSES)
    only_false.add_image(1, hw, none, dt, pasted=True)
    assert set(assert_backends_agree(only_false).values()) == {-1.0}
    all_missed = coco_eval.CocoEvaluator(NUM_CLASSES)
    all_missed.add_image(1, hw, gt, None)
    assert_backends_agree(all_missed)

    boxes_only = coco_eval.CocoEvaluator(NUM_CLASSES, iou_types=("bbox",))
    for i in range(4):
        gt, dt = random_image(rng, hw)
        boxes_only.add_image(i + 1, hw, {k: gt[k] for k in ("boxes", "labels")},
                             {k: dt[k] for k in ("boxes", "labels", "scores")})  # fmt: skip
    assert sorted(assert_backends_agree(boxes_only)) == [
        f"bbox/{n}" for n in sorted(coco_eval.STAT_NAMES)
    ]


def test_backend_is_a_setting(monkeypatch):
    """Serialised and merged with the state; unknown or missing backends are one-line errors."""
    assert base_config().eval.coco_backend == "pycocotools"
    assert coco_eval.CocoEvaluator(NUM_CLASSES).backend == "pycocotools"
    evaluator = random_evaluator(0, num_images=2)
    fast = with_backend(evaluator, "faster_coco_eval")
    restored = coco_eval.merge_serialized([fast.to_bytes()])
    assert restored.backend == "faster_coco_eval" and restored.images == evaluator.images
    with pytest.raises(ValueError, match="settings differ"):
        evaluator.merge([coco_eval.CocoEvaluator(NUM_CLASSES, CATEGORY_IDS, backend=fast.backend)])

    with pytest.raises(ValueError) as error:
        coco_eval.CocoEvaluator(NUM_CLASSES, backend="fast")
    assert str(error.value) == (
        "COCO evaluation backend (config.eval.coco_backend) 'fast'; "
        "expected one of 'pycocotools', 'faster_coco_eval'"
    )
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install -e "\.\[coco-fast\]"') as error:
        coco_eval.check_backend("faster_coco_eval")
    assert "\n" not in str(error.value)
    assert coco_eval.check_backend("pycocotools") == "pycocotools"  # needs nothing optional


def test_instance_task_carries_the_configured_backend(instance_config):
    """``config.eval.coco_backend`` reaches the evaluation loop through the instance task's
    eval stream, and a typo fails when the stream is built (start-up), not after a pass."""
    from segjax import data as data_lib
    from segjax.tasks import InstanceTask

    source = data_lib.get_source(instance_config.data)
    split = instance_config.data.eval_split
    assert InstanceTask().eval_stream(source, instance_config, split).coco_backend == "pycocotools"
    instance_config.eval.coco_backend = "faster_coco_eval"
    stream = InstanceTask().eval_stream(source, instance_config, split)
    assert stream.coco_backend == "faster_coco_eval"
    instance_config.eval.coco_backend = "faster-coco-eval"
    with pytest.raises(ValueError, match=r"config\.eval\.coco_backend\) 'faster-coco-eval'"):
        InstanceTask().eval_stream(source, instance_config, split)
