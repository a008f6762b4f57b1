"""segjax.evaluation.coco_eval: COCO box / mask AP through pycocotools, merged over processes.

Hand-made cases compute their expected AP from the geometry (IoU against the ten thresholds),
not from a stored number. The parity cases use ``tests/fixtures/torchvision/coco_eval.*``
(``tools/make_coco_eval_fixture.py``, with torch): torchvision's detections of the slim Mask
R-CNN of ``test_maskrcnn_parity`` on four images, a COCO ground truth made from them, and the
statistics pycocotools gives those detections in torchvision's own way. The evaluator must
reproduce them from torchvision's detections, and score segjax's detections (the same weights,
converted; masks pasted by the evaluator) within 0.1 AP points.
"""

import functools
import json
import os

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segjax.data.base import DatasetInfo
from segjax.data.image_io import DataError
from segjax.evaluation import coco_eval
from tests.test_maskrcnn_parity import (
    FIXTURES,
    fixture_model,
    fixture_values,
    fixture_variables,
)
from tests.test_maskrcnn_parity import _meta as maskrcnn_meta

THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's IoU thresholds
PARITY_POINTS = 0.1  # segjax's detections: every statistic within 0.1 AP points
NUM_CLASSES = 4  # hand-made cases: labels 1, 2, 3


def rect_masks(boxes, hw) -> np.ndarray:
    """uint8 ``[N, H, W]`` rectangles of integer ``boxes`` (x1, y1, x2, y2)."""
    masks = np.zeros((len(boxes), *hw), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, int)):
        masks[k, y1:y2, x1:x2] = 1
    return masks


def objects(boxes, labels, hw, **extra) -> dict:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return {"boxes": boxes, "labels": np.asarray(labels, np.int32), "masks": rect_masks(boxes, hw),
            **extra}  # fmt: skip


def detections(boxes, labels, scores, hw) -> dict:
    out = objects(boxes, labels, hw, scores=np.asarray(scores, np.float32))
    out["masks"] = out["masks"].astype(np.float32)  # pasted probabilities
    return out


def evaluate_one(gt, dt, hw=(200, 200), num_classes=NUM_CLASSES, **kwargs) -> dict:
    evaluator = coco_eval.CocoEvaluator(num_classes, **kwargs)
    evaluator.add_image(1, hw, gt, dt)
    return evaluator.evaluate()


# ----------------------------------------------------------------------------- hand-made cases

# small (< 32²), medium and large (> 96²) objects, one per class (so AR1 can be 1 too)
BOXES = [[5, 5, 25, 25], [40, 10, 90, 60], [60, 80, 180, 190]]
LABELS = [1, 2, 3]


def test_perfect_detections_score_one():
    hw = (200, 200)
    metrics = evaluate_one(
        objects(BOXES, LABELS, hw), detections(BOXES, LABELS, [0.9, 0.8, 0.7], hw)
    )
    assert sorted(metrics) == sorted(
        f"{t}/{n}" for t in ("bbox", "segm") for n in coco_eval.STAT_NAMES
    )
    assert list(metrics.values()) == pytest.approx([1.0] * 24, abs=1e-12), metrics


def test_shifted_boxes_match_the_thresholds_below_their_iou():
    hw = (200, 200)
    for shift in (3, 9, 12):
        gt_box = [[20, 20, 60, 60]]
        dt_box = [[20 + shift, 20, 60 + shift, 60]]
        iou = (40 - shift) / (40 + shift)
        expected = float(np.mean(iou >= THRESHOLDS))
        metrics = evaluate_one(objects(gt_box, [1], hw), detections(dt_box, [1], [0.5], hw))
        for iou_type in ("bbox", "segm"):  # rectangles: the masks' IoU is the boxes'
            assert metrics[f"{iou_type}/AP"] == pytest.approx(expected, abs=1e-12), shift
            assert metrics[f"{iou_type}/AP50"] == pytest.approx(1.0, abs=1e-12)
            assert metrics[f"{iou_type}/AP75"] == pytest.approx(float(iou >= 0.75), abs=1e-12)
            assert metrics[f"{iou_type}/AR100"] == pytest.approx(expected, abs=1e-12)


def test_crowd_region_absorbs_duplicates():
    hw = (200, 200)
    gt_boxes = [[10, 10, 50, 50], [100, 100, 190, 190]]  # the second: a crowd
    # Three detections inside the crowd, scored above the true one.
    dt_boxes = [[110, 110, 140, 140], [150, 150, 185, 185], [105, 150, 140, 185], gt_boxes[0]]
    dt = detections(dt_boxes, [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.6], hw)
    crowd = evaluate_one(objects(gt_boxes, [1, 1], hw, is_crowd=np.array([False, True])), dt)
    assert crowd["bbox/AP"] == crowd["segm/AP"] == pytest.approx(1.0, abs=1e-12)
    # Not a crowd: the region is one object the duplicates miss (IoU < 0.5), and they are
    # false positives ranked first.
    plain = evaluate_one(objects(gt_boxes, [1, 1], hw), dt)
    assert plain["bbox/AP"] < 0.6 and plain["segm/AP"] < 0.6


def test_labels_become_category_ids():
    hw = (200, 200)
    gt = objects(BOXES, LABELS, hw)
    ids = (0, 17, 4, 9)  # label → category id: not sorted, not contiguous
    names = ("__background__", "cat", "dog", "owl")
    evaluator = coco_eval.CocoEvaluator(NUM_CLASSES, ids, names)
    evaluator.add_image(397133, hw, gt, detections(BOXES, LABELS, [0.9, 0.8, 0.7], hw))
    assert evaluator.categories() == [
        {"id": 17, "name": "cat"},
        {"id": 4, "name": "dog"},
        {"id": 9, "name": "owl"},
    ]
    assert [r["category_id"] for r in evaluator.results()] == [17, 4, 9]
    assert {r["image_id"] for r in evaluator.results()} == {397133}
    assert evaluator.evaluate()["segm/AP"] == pytest.approx(1.0, abs=1e-12)
    # Swapped labels: every detection is of the wrong category.
    swapped = evaluate_one(gt, detections(BOXES, [2, 3, 1], [0.9, 0.8, 0.7], hw), category_ids=ids)
    assert swapped["bbox/AP"] == swapped["segm/AP"] == 0.0

    info = DatasetInfo("d", 4, names, ((0, 0, 0),) * 4, {}, task="instance", category_ids=ids)
    assert coco_eval.CocoEvaluator.for_dataset(info).category_ids == ids
    with pytest.raises(ValueError, match="task 'semantic'"):
        coco_eval.CocoEvaluator.for_dataset(DatasetInfo("s", 3, ("a",) * 3, ((0, 0, 0),) * 3, {}))
    with pytest.raises(ValueError, match="2 category_ids for num_classes=4"):
        coco_eval.CocoEvaluator(NUM_CLASSES, (0, 1))


def test_empty_detections_ground_truth_and_split():
    hw = (200, 200)
    gt = objects(BOXES, LABELS, hw)
    no_objects = objects(np.zeros((0, 4)), [], hw)
    missed = evaluate_one(gt, None)
    assert set(missed.values()) == {0.0}, missed  # every area range has objects: all 0
    # Detections on an image without objects: pycocotools' -1 (undefined), not 0 or NaN.
    nothing_true = evaluate_one(no_objects, detections(BOXES, LABELS, [0.9, 0.8, 0.7], hw))
    assert set(nothing_true.values()) == {-1.0}
    assert set(evaluate_one(no_objects, None).values()) == {-1.0}
    assert set(coco_eval.CocoEvaluator(NUM_CLASSES).evaluate().values()) == {
        -1.0
    }  # no images at all
    # An image without detections among others lowers recall, as a missed object should.
    evaluator = coco_eval.CocoEvaluator(NUM_CLASSES)
    evaluator.add_image("a.png", hw, gt, detections(BOXES, LABELS, [0.9, 0.8, 0.7], hw))
    evaluator.add_image("b.png", hw, gt, None)
    assert evaluator.evaluate()["bbox/AR100"] == pytest.approx(0.5)
    table = coco_eval.format_table(nothing_true)
    assert table.splitlines()[1].split() == ["bbox"] + ["n/a"] * 12


def test_padding_is_dropped_and_model_masks_are_pasted():
    """The eval pipeline's padded ground truth, the model's padded 28×28 masks: pasted here as
    segjax.models.maskrcnn.paste_masks pastes them, then thresholded at 0.5."""
    from segjax.models.maskrcnn import paste_masks

    hw = (200, 200)
    gt = objects(BOXES + [[0, 0, 0, 0]], LABELS + [1], hw)
    gt["instance_valid"] = np.array([True, True, True, False])
    dt = detections(BOXES + [[0, 0, 1, 1]], LABELS + [1], [0.9, 0.8, 0.7, 0.6], hw)
    dt["masks"] = np.zeros((4, 28, 28), np.float32)
    dt["masks"][:, :, :14] = np.linspace(0.3, 0.8, 14)  # the left half of each box, partly
    dt["valid"] = np.array([True, True, True, False])
    evaluator = coco_eval.CocoEvaluator(NUM_CLASSES)
    evaluator.add_image(1, hw, gt, dt)
    assert len(evaluator.images[1]["ground_truth"]) == len(evaluator.results()) == 3

    pasted = paste_masks(dt["masks"][:3], dt["boxes"][:3], hw) > 0.5
    assert pasted.any(axis=(1, 2)).all()
    rles = [r["segmentation"] for r in evaluator.results()]
    decoded = coco_mask.decode([{**r, "counts": r["counts"].encode()} for r in rles])
    np.testing.assert_array_equal(decoded.transpose(2, 0, 1), pasted)
    metrics = evaluator.evaluate()
    assert metrics["bbox/AP"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["segm/AP50"] == 0.0  # under half of each object


def test_bad_input_names_the_image():
    hw = (200, 200)
    evaluator = coco_eval.CocoEvaluator(NUM_CLASSES)
    evaluator.add_image(b"a.png", hw, objects(BOXES, LABELS, hw), None)
    with pytest.raises(DataError, match="image 'a.png' added twice"):
        evaluator.add_image("a.png", hw, objects(BOXES, LABELS, hw), None)
    with pytest.raises(DataError, match=r"image 'c.png': detection label 4; expected 1 … 3"):
        evaluator.add_image("c.png", hw, objects(BOXES, LABELS, hw),
                            detections(BOXES, [1, 2, 4], [0.9, 0.8, 0.7], hw))  # fmt: skip
    with pytest.raises(
        DataError,
        match=r"'d.png': ground-truth masks of shape \(3, 200, 200\); expected \(3, 200, 100\)",
    ):
        evaluator.add_image("d.png", (200, 100), objects(BOXES, LABELS, hw), None)
    square = detections(BOXES, LABELS, [0.9, 0.8, 0.7], (28, 28))
    with pytest.raises(DataError, match="say which with pasted=True / False"):
        evaluator.add_image("e.png", (28, 28), objects(BOXES, LABELS, (28, 28)), square)
    boxes_only = coco_eval.CocoEvaluator(NUM_CLASSES, iou_types=("bbox",))
    boxes_only.add_image(1, hw, {"boxes": BOXES, "labels": LABELS}, None)
    assert sorted(boxes_only.evaluate()) == sorted(f"bbox/{n}" for n in coco_eval.STAT_NAMES)


def test_processes_merge_to_the_single_process_result(tmp_path):
    """Two accumulators (two processes' images) serialised and merged evaluate exactly like one
    that saw every image; an image evaluated twice is an error."""
    rng = np.random.default_rng(0)
    hw = (120, 160)
    single = coco_eval.CocoEvaluator(3, (0, 5, 2))
    halves = [coco_eval.CocoEvaluator(3, (0, 5, 2)) for _ in range(2)]
    for i in range(6):
        xy = rng.uniform(0, 100, (4, 2))
        size = rng.uniform(5, 50, (4, 2))
        gt_boxes = np.round(np.concatenate([xy, xy + size], 1))
        dt_boxes = gt_boxes + np.round(rng.normal(0, 3, gt_boxes.shape))
        labels = rng.integers(1, 3, 4)
        gt = objects(np.clip(gt_boxes, 0, 119), labels, hw)
        dt = detections(np.clip(dt_boxes, 0, 119), labels, rng.uniform(0.1, 1, 4), hw)
        single.add_image(f"img{i}.png", hw, gt, dt)
        halves[i % 2].add_image(f"img{i}.png", hw, gt, dt)
    merged = coco_eval.merge_serialized([h.to_bytes() for h in halves])
    assert sorted(merged.images) == sorted(single.images)
    expected = single.evaluate()
    assert 0.1 < expected["segm/AP"] < 0.9
    assert merged.evaluate() == expected
    assert coco_eval.gather(single) is single  # one process: nothing to gather
    with pytest.raises(DataError, match="image 'img0.png' evaluated by two processes"):
        single.merge([halves[0]])
    with pytest.raises(ValueError, match="settings differ"):
        single.merge([coco_eval.CocoEvaluator(NUM_CLASSES)])

    path = tmp_path / "coco.json"
    coco_eval.write_json(str(path), {**expected, "segm/APl": -1.0}, step=7)
    written = json.loads(path.read_text())
    assert written["step"] == 7 and written["segm/APl"] == -1.0
    assert written["bbox/AP"] == expected["bbox/AP"]


# ----------------------------------------------------------------------------- parity fixture


@functools.cache
def _fixture() -> tuple[dict, dict]:
    with open(os.path.join(FIXTURES, "coco_eval.json")) as f:
        meta = json.load(f)
    with np.load(os.path.join(FIXTURES, "coco_eval.npz")) as data:
        arrays = {k: data[k] for k in data.files}
    return meta, arrays


def fixture_images() -> list[np.ndarray]:
    """The fixture's images (float32 in [0, 1)), as the generator makes them."""
    meta, _ = _fixture()
    images = []
    for spec in meta["images"]:
        image = fixture_values.image(tuple(spec["shape"]), spec["name"])
        image = image * np.float32(0.25) + np.float32(0.5)
        assert fixture_values.checksum({"x": image}) == spec["checksum"], spec["name"]
        images.append(image)
    return images


def fixture_ground_truth(image_id: int) -> dict:
    """One image's objects from the fixture's COCO annotations, in segjax's layout."""
    meta, _ = _fixture()
    to_label = {c: label for label, c in enumerate(meta["category_ids"]) if label}
    anns = [a for a in meta["ground_truth"]["annotations"] if a["image_id"] == image_id]
    xywh = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
    rles = [{**a["segmentation"], "counts": a["segmentation"]["counts"].encode()} for a in anns]
    return {
        "boxes": np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
        "labels": np.asarray([to_label[a["category_id"]] for a in anns], np.int32),
        "masks": coco_mask.decode(rles).transpose(2, 0, 1),
        "is_crowd": np.asarray([a["iscrowd"] for a in anns], bool),
        "areas": np.asarray([a["area"] for a in anns], np.float64),
    }


def fixture_evaluator(detections_of) -> coco_eval.CocoEvaluator:
    meta, _ = _fixture()
    evaluator = coco_eval.CocoEvaluator(
        len(meta["category_ids"]), meta["category_ids"], meta["class_names"]
    )
    for i, spec in enumerate(meta["images"]):
        dt, pasted = detections_of(i, spec["id"])
        evaluator.add_image(
            spec["id"], spec["shape"][:2], fixture_ground_truth(spec["id"]), dt, pasted=pasted
        )
    return evaluator


def reference_metrics() -> dict[str, float]:
    meta, _ = _fixture()
    stats = meta["stats"]
    return {
        f"{t}/{name}": stats[t][k] for t in stats for k, name in enumerate(coco_eval.STAT_NAMES)
    }


def test_fixture_is_not_vacuous():
    """Same weights as the parity fixture; the AP is neither 0 nor 1; every area range, a crowd
    and several non-contiguous categories are in the ground truth."""
    meta, arrays = _fixture()
    assert meta["weights_checksum"] == maskrcnn_meta()["weights_checksum"]
    ref = reference_metrics()
    for iou_type in ("bbox", "segm"):
        assert 0.05 < ref[f"{iou_type}/AP"] < 0.9
        assert all(ref[f"{iou_type}/{n}"] >= 0 for n in coco_eval.STAT_NAMES)
    anns = meta["ground_truth"]["annotations"]
    assert any(a["iscrowd"] for a in anns)
    assert len({a["category_id"] for a in anns}) >= 3
    assert meta["category_ids"] != list(range(len(meta["category_ids"])))
    assert sum(len(arrays[f"{s['id']}/scores"]) for s in meta["images"]) >= 40


def test_torchvision_detections_reproduce_pycocotools():
    _, arrays = _fixture()

    def torchvision_detections(_, image_id):
        return {k: arrays[f"{image_id}/{k}"] for k in ("boxes", "scores", "labels", "masks")}, True

    got = fixture_evaluator(torchvision_detections).evaluate()
    ref = reference_metrics()
    assert got.keys() == ref.keys()
    for name, value in ref.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_reference_is_sensitive_to_crowds_and_mask_areas(monkeypatch):
    """Negative controls: the fixture tells apart an evaluator that loses ``iscrowd`` or that
    sizes mask detections by their boxes (results with both ``bbox`` and ``segmentation``)."""
    _, arrays = _fixture()
    ref = reference_metrics()

    def no_crowd(_, image_id):
        dt = {k: arrays[f"{image_id}/{k}"] for k in ("boxes", "scores", "labels", "masks")}
        return dt, True

    evaluator = fixture_evaluator(no_crowd)
    for record in evaluator.images.values():
        for ann in record["ground_truth"]:
            ann["iscrowd"] = 0
    assert abs(evaluator.evaluate()["bbox/AP"] - ref["bbox/AP"]) > 1e-4

    def with_boxes(self, coco_ids, iou_type):
        return [{**det, "image_id": coco_ids[i]} for i, r in self.images.items()
                for det in r["detections"]]  # fmt: skip

    monkeypatch.setattr(coco_eval.CocoEvaluator, "_results", with_boxes)
    assert abs(fixture_evaluator(no_crowd).evaluate()["segm/APs"] - ref["segm/APs"]) > 1e-4


def test_segjax_detections_score_the_same_ap():
    from segjax.models.maskrcnn import predict_images

    results = predict_images(fixture_model(), fixture_variables(), fixture_images(), paste=False)
    assert results[0]["masks"].shape[1:] == (28, 28)  # the evaluator pastes them
    evaluator = fixture_evaluator(lambda i, _: (results[i], False))
    meta, _ = _fixture()
    assert {r["category_id"] for r in evaluator.results()} <= set(meta["category_ids"][1:])
    got = evaluator.evaluate()
    ref = reference_metrics()
    differences = {name: 100 * abs(got[name] - value) for name, value in ref.items()}
    worst = max(differences, key=differences.get)
    assert differences[worst] <= PARITY_POINTS, (worst, got[worst], ref[worst])


def test_gather_pads_and_cuts_the_serialised_states(monkeypatch):
    """:func:`coco_eval.gather` as process 0 of two, with process 1's side of each allgather
    simulated: the states differ in length, so the padding must be cut off exactly."""
    import jax
    from jax.experimental import multihost_utils

    hw = (200, 200)
    first, second = coco_eval.CocoEvaluator(NUM_CLASSES), coco_eval.CocoEvaluator(NUM_CLASSES)
    first.add_image(1, hw, objects(BOXES, LABELS, hw), detections(BOXES, LABELS, [0.9] * 3, hw))
    second.add_image(2, hw, objects(BOXES[:1], LABELS[:1], hw), None)
    theirs = np.frombuffer(second.to_bytes(), np.uint8)

    def allgather(x):
        x = np.asarray(x)
        if x.shape == (1,):  # the lengths
            return np.stack([x, np.asarray([theirs.size], x.dtype)])
        other = np.zeros_like(x)
        other[: theirs.size] = theirs
        return np.stack([x, other])

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    gathered = coco_eval.gather(first)
    assert list(gathered.images) == [1, 2]
    assert gathered.images == first.merge([second]).images
    # Category 1's second object (on the second image) is missed: its recall is 1/2.
    assert gathered.evaluate()["bbox/AR100"] == pytest.approx((0.5 + 1 + 1) / 3)
