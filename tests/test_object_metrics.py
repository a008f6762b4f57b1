"""Object-level metrics (object precision/recall/F1 at an IoU threshold, AJI) against a brute-force
reference written here: its own flood fill for connected components and a loop over pairs of
boolean masks, following Kumar et al. 2017 for AJI."""

import collections
import math

import numpy as np
import pytest

from segjax.evaluation import metrics

IGNORE = 255


def _components(mask, connectivity):
    """Connected components of a boolean mask by breadth-first flood fill, in row-major order."""
    if connectivity == 1:
        steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    else:
        steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    seen = np.zeros_like(mask, bool)
    found = []
    for y, x in zip(*np.nonzero(mask)):
        if seen[y, x]:
            continue
        component = np.zeros_like(mask, bool)
        queue = collections.deque([(y, x)])
        seen[y, x] = True
        while queue:
            cy, cx = queue.popleft()
            component[cy, cx] = True
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                if inside and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append(component)
    return found


def _reference(pred, instances, instance_class, *, iou_threshold=0.5, connectivity=1):
    """(tp, fp, fn, C, U) by looping over pairs of predicted and true object masks."""
    valid = instance_class != IGNORE
    predicted = [
        (m, c)
        for c in sorted(set(pred[valid].tolist()) - {0})
        for m in _components((pred == c) & valid, connectivity)
    ]
    true = []
    for i in sorted(set(instances[valid].tolist()) - {0}):
        m = (instances == i) & valid
        (c,) = set(instance_class[m].tolist())
        if c != 0:
            true.append((m, c))

    def iou(a, b):
        return (a & b).sum() / (a | b).sum()

    matched_pred, matched_true = set(), set()
    for i, (g, gc) in enumerate(true):
        for j, (s, sc) in enumerate(predicted):
            if gc == sc and iou(g, s) > iou_threshold:
                assert i not in matched_true and j not in matched_pred  # one-to-one
                matched_true.add(i)
                matched_pred.add(j)
    tp = len(matched_true)

    # Kumar et al.: each G takes the S of largest IoU (any class); unused S add their area to U.
    c_sum = u_sum = 0
    used = set()
    for g, _ in true:
        ious = [iou(g, s) for s, _ in predicted]
        if not ious or max(ious) == 0:
            u_sum += g.sum()
            continue
        j = int(np.argmax(ious))
        used.add(j)
        c_sum += (g & predicted[j][0]).sum()
        u_sum += (g | predicted[j][0]).sum()
    u_sum += sum(s.sum() for j, (s, _) in enumerate(predicted) if j not in used)
    return [tp, len(predicted) - tp, len(true) - tp, c_sum, u_sum]


def _disc_scene(rng, size, n, classes=(1,)):
    """Instance ids and class mask of up to n random discs (later discs paint over earlier ones)."""
    yy, xx = np.mgrid[:size, :size]
    instances = np.zeros((size, size), np.int32)
    instance_class = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(2, size // 5)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        instances[disc] = 10 * k  # ids need not be consecutive
        instance_class[disc] = rng.choice(classes)
    return instances, instance_class


def _perturbed_prediction(rng, instance_class):
    """The true class mask shifted, with speckle and some pixels given another class."""
    pred = np.roll(instance_class, tuple(rng.integers(-1, 2, 2)), axis=(0, 1))
    speckle = rng.random(pred.shape) < 0.01
    pred[speckle] = rng.integers(0, 3, speckle.sum())
    return pred


@pytest.mark.parametrize("seed", range(6))
def test_random_disc_scenes_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    instances, instance_class = _disc_scene(rng, 36, 9, classes=(1, 2))
    pred = _perturbed_prediction(rng, instance_class)
    if seed % 2:  # an ignored band across the image
        instance_class[10:13] = IGNORE
    for connectivity in (1, 2):
        for threshold in (0.5, 0.7):
            got = metrics.object_match_counts(
                pred,
                instances,
                instance_class,
                iou_threshold=threshold,
                connectivity=connectivity,
            )
            assert got.dtype == np.int64 and got.shape == (len(metrics.OBJECT_COUNT_FIELDS),)
            want = _reference(
                pred,
                instances,
                instance_class,
                iou_threshold=threshold,
                connectivity=connectivity,
            )
            np.testing.assert_array_equal(got, want, err_msg=f"{connectivity=} {threshold=}")


def _separated_cells():
    instances = np.zeros((20, 30), np.int32)
    instances[2:8, 2:9] = 1
    instances[10:17, 4:10] = 2
    instances[3:15, 15:27] = 3
    return instances, (instances > 0).astype(np.int32)


def test_perfect_prediction():
    instances, instance_class = _separated_cells()
    counts = metrics.object_match_counts(instance_class, instances, instance_class)
    s = metrics.summarize_objects(counts)
    assert (s["object_tp"], s["object_fp"], s["object_fn"]) == (3, 0, 0)
    assert s["object_precision"] == s["object_recall"] == s["object_f1"] == s["aji"] == 1.0


def _touching_pair(left_width):
    """Two true cells side by side with no gap, and the prediction that merges them."""
    instances = np.zeros((12, 24), np.int32)
    instances[1:11, 2 : 2 + left_width] = 1
    instances[1:11, 2 + left_width : 22] = 2
    instance_class = (instances > 0).astype(np.int32)
    return instances, instance_class, instance_class.copy()


def test_touching_cells_predicted_merged():
    # Equal halves: the merged object has IoU exactly 0.5 with each, not > 0.5: no match.
    instances, instance_class, pred = _touching_pair(10)
    tp, fp, fn, c, u = metrics.object_match_counts(pred, instances, instance_class)
    assert (tp, fp, fn) == (0, 1, 2)
    # Both cells pick the merged object (original AJI allows it): C = 100 + 100, U = 200 + 200.
    assert (c, u) == (200, 400)
    # 14 + 6 columns: IoU 140/200 = 0.7 with the big cell (a TP), 60/200 with the small one.
    instances, instance_class, pred = _touching_pair(14)
    tp, fp, fn, c, u = metrics.object_match_counts(pred, instances, instance_class)
    assert (tp, fp, fn) == (1, 0, 1)
    assert (c, u) == (140 + 60, 200 + 200)


def test_split_cell():
    instances = np.zeros((12, 14), np.int32)
    instances[1:11, 2:12] = 7
    instance_class = (instances > 0).astype(np.int32)
    pred = instance_class.copy()
    pred[:, 8] = 0  # a one-pixel cut: 6 columns (60 px) and 3 columns (30 px) remain
    tp, fp, fn, c, u = metrics.object_match_counts(pred, instances, instance_class)
    assert (tp, fp, fn) == (1, 1, 0)  # IoU 60/100 for the larger piece
    assert (c, u) == (60, 100 + 30)  # the unpicked piece adds its area to U


def test_empty_prediction_and_no_instances():
    instances, instance_class = _separated_cells()
    empty = np.zeros_like(instances)
    s = metrics.summarize_objects(metrics.object_match_counts(empty, instances, instance_class))
    assert (s["object_tp"], s["object_fp"], s["object_fn"]) == (0, 0, 3)
    assert math.isnan(s["object_precision"])  # no predicted objects
    assert s["object_recall"] == s["object_f1"] == s["aji"] == 0.0

    # No instances, some prediction: every object is an FP, recall undefined.
    s = metrics.summarize_objects(metrics.object_match_counts(instance_class, empty, empty))
    assert (s["object_tp"], s["object_fp"], s["object_fn"]) == (0, 3, 0)
    assert math.isnan(s["object_recall"])
    assert s["object_precision"] == s["object_f1"] == s["aji"] == 0.0

    # Nothing at all: every rate undefined.
    s = metrics.summarize_objects(metrics.object_match_counts(empty, empty, empty))
    for key in ("object_precision", "object_recall", "object_f1", "aji"):
        assert math.isnan(s[key]), key


def test_ignored_pixels_are_removed_from_prediction_and_instances():
    instances, instance_class, pred = _touching_pair(10)
    # An ignored column on the border between the cells splits the merged prediction in two, and
    # a predicted blob entirely inside an ignored region is not an object.
    instance_class[:, 11] = IGNORE
    instance_class[0, :] = IGNORE
    pred[0, :] = 1
    tp, fp, fn, c, u = metrics.object_match_counts(pred, instances, instance_class)
    assert (tp, fp, fn) == (2, 0, 0)
    assert (c, u) == (90 + 100, 90 + 100)  # the left cell lost its ignored column
    np.testing.assert_array_equal([tp, fp, fn, c, u], _reference(pred, instances, instance_class))


def test_a_prediction_of_the_wrong_class_is_not_a_tp():
    instances = np.zeros((10, 20), np.int32)
    instances[1:9, 1:9] = 1
    instances[1:9, 11:19] = 2
    instance_class = np.where(instances == 1, 1, np.where(instances == 2, 2, 0))
    pred = np.where(instances > 0, 2, 0)  # both cells predicted class 2
    tp, fp, fn, c, u = metrics.object_match_counts(pred, instances, instance_class)
    assert (tp, fp, fn) == (1, 1, 1)
    # AJI judges delineation only: both shapes are exact.
    assert c == u == 128


def test_instances_of_class_background_are_not_objects():
    instances, instance_class = _separated_cells()
    instance_class[instances == 3] = 0
    pred = (instances > 0).astype(np.int32)
    tp, fp, fn, _, _ = metrics.object_match_counts(pred, instances, instance_class)
    assert (tp, fp, fn) == (2, 1, 0)


def test_counts_sum_like_the_images_side_by_side():
    rng = np.random.default_rng(7)
    scenes = []
    for _ in range(2):
        instances, instance_class = _disc_scene(rng, 28, 6, classes=(1, 2))
        scenes.append((_perturbed_prediction(rng, instance_class), instances, instance_class))
    # The second image's ids shifted so ids stay unique; a background gap keeps objects apart.
    pred_b, inst_b, cls_b = scenes[1]
    inst_b = np.where(inst_b > 0, inst_b + 1000, 0)
    gap = np.zeros((28, 3), np.int32)
    joined = [
        np.concatenate([a, gap, b], axis=1)
        for a, b in zip(scenes[0], (pred_b, inst_b, cls_b), strict=True)
    ]
    summed = sum(metrics.object_match_counts(*s, connectivity=2) for s in scenes)
    np.testing.assert_array_equal(summed, metrics.object_match_counts(*joined, connectivity=2))


def test_connectivity_decides_diagonal_contacts():
    instances = np.zeros((8, 8), np.int32)
    instances[1:4, 1:4] = 1
    instances[4:7, 4:7] = 2  # touches the first cell only at a corner
    instance_class = (instances > 0).astype(np.int32)
    four = metrics.object_match_counts(instance_class, instances, instance_class, connectivity=1)
    eight = metrics.object_match_counts(instance_class, instances, instance_class, connectivity=2)
    assert four[:3].tolist() == [2, 0, 0]
    assert eight[:3].tolist() == [0, 1, 2]  # one merged object, IoU 9/18 with each


def test_huge_ids_and_no_background_pixel():
    rng = np.random.default_rng(3)
    instances, instance_class = _disc_scene(rng, 30, 6)
    pred = _perturbed_prediction(rng, instance_class)
    want = metrics.object_match_counts(pred, instances, instance_class)
    # A 32-bit TIFF export's ids, beyond the lookup-table path.
    huge = np.where(instances > 0, instances.astype(np.uint32) + 3_000_000_000, 0)
    assert huge.dtype == np.uint32
    np.testing.assert_array_equal(metrics.object_match_counts(pred, huge, instance_class), want)
    unsigned = instances.astype(np.uint16)
    np.testing.assert_array_equal(metrics.object_match_counts(pred, unsigned, instance_class), want)

    # Every pixel inside one instance or another: no id 0 anywhere.
    full = np.ones((6, 6), np.int32)
    full[:, 3:] = 2
    cls = np.ones_like(full)
    np.testing.assert_array_equal(
        metrics.object_match_counts(cls, full, cls), _reference(cls, full, cls)
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(pred=np.zeros((4, 5), np.int32)), "one shape"),
        (dict(pred=np.zeros((4, 4), np.float32)), "pred has dtype float32"),
        (dict(instances=np.full((4, 4), -1)), "instance id -1 is negative"),
        (dict(iou_threshold=0.3), "iou_threshold=0.3"),
        (dict(connectivity=3), "connectivity=3"),
        (dict(instance_class=np.array([[1, 2, 0, 0]] * 4)), "instance 1 covers classes [1, 2]"),
    ],
)
def test_bad_input_gives_one_line_errors(change, message):
    args = dict(
        pred=np.zeros((4, 4), np.int32),
        instances=np.array([[1, 1, 0, 0]] * 4),
        instance_class=np.array([[1, 1, 0, 0]] * 4),
    )
    args.update(change)
    with pytest.raises(ValueError) as error:
        metrics.object_match_counts(**args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_summary_rates_and_table():
    counts = np.array([6, 2, 3, 50, 80])
    s = metrics.summarize_objects(counts)
    assert s["object_precision"] == pytest.approx(6 / 8)
    assert s["object_recall"] == pytest.approx(6 / 9)
    assert s["object_f1"] == pytest.approx(2 * (6 / 8) * (6 / 9) / (6 / 8 + 6 / 9))
    assert s["aji"] == pytest.approx(50 / 80)
    assert all(isinstance(s[k], int) for k in ("object_tp", "object_fp", "object_fn"))
    table = metrics.format_object_table(s)
    assert "AJI" in table and "62.50" in table and "75.00" in table
    assert "n/a" in metrics.format_object_table(metrics.summarize_objects(np.zeros(5, int)))
    with pytest.raises(ValueError, match="expected 5 non-negative counts"):
        metrics.summarize_objects(np.array([1, 2, 3]))
