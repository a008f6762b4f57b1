"""segjax.predict with an instance model (Mask R-CNN): COCO JSON, 16-bit instance PNG, overlay.

The model is ``maskrcnn_tiny`` with random variables whose classifier is biased towards two
classes, so that there are detections on both sides of the 0.5 score threshold. The references
are independent of segjax.predict: images decoded with PIL, the model run through
``maskrcnn.inference_fn`` / ``predict_images`` directly, RLEs decoded with pycocotools, the
instance map painted detection by detection.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from PIL import Image
from pycocotools import mask as coco_mask

from segjax import checkpoint, cli, errors, models, predict, tasks
from segjax.data import coco_names
from segjax.data.image_io import DataError
from segjax.evaluation import inference
from segjax.models import maskrcnn
from segjax.tasks import instance_outputs
from tests.helpers import load_config, random_variables

ROOT = pathlib.Path(__file__).parent.parent
CONFIG = "configs/maskrcnn_resnet50_fpn_coco.py"

# (relative path, (height, width), PIL mode); all near 4:3, so that they share one padded
# bucket of maskrcnn_tiny's transform and the model compiles once (~10 s on 2 loaded cores).
IMAGES = {
    "photo.jpg": ((60, 80), "RGB"),
    "gray.png": ((48, 64), "L"),
    os.path.join("sub", "alpha.png"): ((72, 96), "RGBA"),
    "wide.png": ((45, 66), "RGB"),
}
# The CLI's --score_threshold in the run below (not the default 0.5, to see it arrive).
THRESHOLD = 0.6


def _config():
    config = load_config(pathlib.Path(CONFIG).name)
    # XLA's own convolutions: this is about the outputs; segjax.xla_cpu's matmul forms only
    # add compile time here (they are tested in test_ops_conv).
    config.runtime.conv_impl = "xla"
    return config


def _biased(variables):
    """Random variables made lively: small RPN deltas and class logits dominated by biases
    that put class 1 near 0.6 and class 2 near 0.35 (both kept by the model's 0.05)."""

    def change(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        leaf = np.asarray(leaf)
        if "rpn/head/bbox_pred" in name or "box_predictor/bbox_pred" in name:
            return leaf * 0.1
        if "rpn/head/cls_logits" in name:
            return leaf * 0.05
        if "box_predictor/cls_score/kernel" in name:
            return leaf * 0.05
        if "box_predictor/cls_score/bias" in name:
            return np.array([0.0, 4.0, 3.5] + [0.0] * (leaf.shape[0] - 3), np.float32)
        return leaf

    return jax.tree_util.tree_map_with_path(change, variables)


def _write_images(folder):
    rng = np.random.default_rng(3)
    os.makedirs(folder / "sub")
    for rel, ((h, w), mode) in IMAGES.items():
        channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
        pixels = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(
            folder / rel, quality=95
        )
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def _reference(model, variables, fn, path):
    """Detections of one file, by a path not through segjax.predict: PIL decode, the model's
    ``predict_images`` (masks, scores, labels) and its raw boxes in resized pixels scaled to
    the original size here."""
    image = np.asarray(Image.open(path).convert("RGB"))
    (result,) = maskrcnn.predict_images(model, variables, [image], fn=fn)
    batch = model.transform([image])
    raw = jax.device_get(fn(variables, batch["images"], batch["image_sizes"], batch["image_sizes"]))
    (h, w), (rh, rw) = image.shape[:2], batch["image_sizes"][0]
    keep = raw["valid"][0]
    result["boxes_from_resized"] = raw["boxes"][0][keep] * np.float32([w / rw, h / rh] * 2)
    return image, result


def _painted_ids(masks, scores, threshold):
    """Instance ids painted one detection at a time, best first, never over a painted pixel."""
    ids = np.zeros(masks.shape[1:], np.int64)
    for k in np.argsort(-scores, kind="stable"):
        if scores[k] >= threshold:
            ids[(masks[k] > 0.5) & (ids == 0)] = k + 1
    return ids


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The tiny model, its variables, one jitted forward pass shared by segjax.predict and the
    references (one compilation), and the instance task's image writer on a folder of mixed
    images with a corrupt one."""
    config = _config()
    model = tasks.create_model(config)
    # On one device, as predict puts them: variables placed differently would make the
    # references below miss the compilation cache of ``fn``.
    variables = jax.device_put(
        _biased(random_variables(model, (1, 64, 64, 3))), jax.local_devices()[0]
    )
    fn = maskrcnn.inference_fn(model, config)
    tmp = tmp_path_factory.mktemp("instances")
    _write_images(tmp / "images")
    write = instance_outputs.image_writer(
        config, variables, model, str(tmp / "out"), score_threshold=THRESHOLD, fn=fn
    )
    written, failures = predict.for_each_image(
        [str(tmp / "images")],
        write,
        progress=False,
    )
    return config, model, variables, fn, tmp, written, failures


def test_three_outputs_per_image_and_the_corrupt_file_is_reported(run):
    *_, tmp, written, failures = run
    assert len(failures) == 1 and "broken.jpg" in failures[0]
    out = tmp / "out" / "images"
    expected = []
    for rel in IMAGES:
        stem = os.path.splitext(rel)[0]
        expected += [f"{stem}.json", f"{stem}_instances.png", f"{stem}_overlay.png"]
    assert sorted(written) == sorted(str(out / e) for e in expected)
    found = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    assert sorted(found) == sorted(expected)


def test_json_is_the_models_detections_in_original_pixels(run):
    _, model, variables, fn, tmp, *_ = run
    total = 0
    for rel, ((h, w), _) in IMAGES.items():
        _, ref = _reference(model, variables, fn, tmp / "images" / rel)
        stem = os.path.splitext(rel)[0]
        entries = json.loads((tmp / "out" / "images" / f"{stem}.json").read_text())
        assert len(entries) == len(ref["scores"])
        total += len(entries)
        assert all(e["image_id"] == f"images/{stem}".replace(os.sep, "/") for e in entries)
        scores = np.array([e["score"] for e in entries])
        assert np.all(np.diff(scores) <= 0)
        order = np.argsort(-ref["scores"], kind="stable")
        np.testing.assert_allclose(scores, ref["scores"][order], rtol=1e-6)
        assert [e["category_id"] for e in entries] == ref["labels"][order].tolist()
        xywh = np.array([e["bbox"] for e in entries]).reshape(-1, 4)
        boxes = ref["boxes_from_resized"][order]
        np.testing.assert_allclose(xywh[:, :2], boxes[:, :2], atol=1e-3)
        np.testing.assert_allclose(xywh[:, 2:], boxes[:, 2:] - boxes[:, :2], atol=1e-3)
        assert xywh[:, 0].min() >= 0 and (xywh[:, 0] + xywh[:, 2]).max() <= w + 1e-3
        assert xywh[:, 1].min() >= 0 and (xywh[:, 1] + xywh[:, 3]).max() <= h + 1e-3
        for entry, mask in zip(entries, ref["masks"][order]):
            assert entry["segmentation"]["size"] == [h, w]
            decoded = coco_mask.decode(
                {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"]}
            )
            np.testing.assert_array_equal(decoded, mask > 0.5)
    assert total >= 8


def test_instance_png_matches_the_json_masks_best_first(run):
    *_, tmp, _, _ = run
    seen_ids, overlaps, below = set(), 0, 0
    for rel, ((h, w), _) in IMAGES.items():
        base = tmp / "out" / "images" / os.path.splitext(rel)[0]
        png = Image.open(f"{base}_instances.png")
        ids = np.asarray(png)
        assert png.mode.startswith("I;16") and ids.shape == (h, w)
        entries = json.loads(pathlib.Path(f"{base}.json").read_text())
        masks = np.stack([coco_mask.decode(e["segmentation"]) for e in entries])
        scores = np.array([e["score"] for e in entries])
        np.testing.assert_array_equal(ids, _painted_ids(masks, scores, THRESHOLD))
        seen_ids |= set(np.unique(ids).tolist()) - {0}
        kept = masks[scores >= THRESHOLD]
        overlaps += int((kept.sum(axis=0) > 1).sum())
        below += int(((scores >= 0.5) & (scores < THRESHOLD)).sum())
    # Non-vacuous: several instances, overlapping masks resolved, and detections between the
    # default 0.5 and the given threshold left out (so --score_threshold arrived).
    assert len(seen_ids) >= 3 and overlaps > 0 and below > 0


def test_overlay_blends_one_colour_per_instance_and_leaves_the_rest(run):
    *_, tmp, _, _ = run
    alpha = 0.5
    for rel in IMAGES:
        base = tmp / "out" / "images" / os.path.splitext(rel)[0]
        image = np.asarray(Image.open(tmp / "images" / rel).convert("RGB")).astype(np.float32)
        overlay = np.asarray(Image.open(f"{base}_overlay.png")).astype(np.float32)
        ids = np.asarray(Image.open(f"{base}_instances.png")).astype(np.int64)
        entries = json.loads(pathlib.Path(f"{base}.json").read_text())
        assert overlay.shape == image.shape
        # Away from every drawn box and its tag (above the box, up to 120 px to the right of
        # its left edge), the overlay is the image itself.
        drawn = np.zeros(ids.shape, bool)
        for e in (e for e in entries if e["score"] >= THRESHOLD):
            x, y, bw, bh = e["bbox"]
            x0, y0 = max(int(x) - 3, 0), max(int(y) - 25, 0)
            drawn[y0 : int(y + bh) + 4, x0 : int(x + bw) + 4] = True
            drawn[y0 : int(y) + 25, x0 : int(x) + 120] = True
        np.testing.assert_array_equal(overlay[~drawn], image[~drawn])
        # Inside the masks and away from lines and tags: one blended colour per instance.
        colours = {}
        for k in set(np.unique(ids).tolist()) - {0}:
            inside = (ids == k) & ~_near_lines_or_tags(entries, ids.shape)
            if inside.sum() < 3:
                continue
            implied = (overlay[inside] - (1 - alpha) * image[inside]) / alpha
            assert np.ptp(implied, axis=0).max() <= 2.5, (rel, k)
            colours[k] = tuple(np.round(implied.mean(axis=0)).astype(int))
        assert len(set(colours.values())) == len(colours)


def _near_lines_or_tags(entries, shape):
    """Pixels within 3 px of a drawn box outline, or in a tag band, of the kept detections."""
    near = np.zeros(shape, bool)
    for e in (e for e in entries if e["score"] >= THRESHOLD):
        x, y, bw, bh = e["bbox"]
        x0, y0, x1, y1 = int(x), int(y), int(x + bw), int(y + bh)
        outer = np.zeros(shape, bool)
        outer[max(y0 - 3, 0) : y1 + 4, max(x0 - 3, 0) : x1 + 4] = True
        inner = np.zeros(shape, bool)
        inner[y0 + 4 : max(y1 - 3, y0 + 4), x0 + 4 : max(x1 - 3, x0 + 4)] = True
        near |= outer & ~inner
        near[max(y0 - 25, 0) : y0 + 25, max(x0 - 3, 0) : x0 + 120] = True
    return near


def test_detect_api_returns_plain_arrays_from_paths_and_arrays(run):
    _, model, variables, fn, tmp, *_ = run
    path = tmp / "images" / "gray.png"
    image, ref = _reference(model, variables, fn, path)
    from_path, from_array = instance_outputs.detect(model, variables, [str(path), image], fn=fn)
    order = np.argsort(-ref["scores"], kind="stable")
    for got in (from_path, from_array):
        assert set(got) == {"boxes", "scores", "labels", "masks"}
        assert all(isinstance(v, np.ndarray) for v in got.values())
        assert got["masks"].shape == (len(order), 48, 64)
        np.testing.assert_array_equal(got["labels"], ref["labels"][order])
        np.testing.assert_allclose(got["boxes"], ref["boxes"][order], rtol=1e-6)
    (small,) = instance_outputs.detect(model, variables, [image], paste=False, fn=fn)
    assert small["masks"].shape == (len(order), 28, 28)
    np.testing.assert_array_equal(small["scores"], from_array["scores"])
    with pytest.raises(DataError, match=r"shape \(5, 5\)"):
        instance_outputs.detect(model, variables, [np.zeros((5, 5), np.uint8)], fn=fn)
    with pytest.raises(ValueError, match="UNet is not an instance model"):
        instance_outputs.detect(models.create("unet_tiny", num_classes=3), {}, [image])


def test_image_ids_and_class_names():
    assert instance_outputs.image_id_for(os.path.join("val2017", "000000397133")) == 397133
    assert instance_outputs.image_id_for(os.path.join("images", "sub", "b")) == "images/sub/b"
    config = _config()
    assert instance_outputs.class_names_for(config) == ["class 0", "class 1", "class 2", "class 3"]
    config.model.num_classes = 91
    assert instance_outputs.class_names_for(config)[1] == "person"
    config.data.class_names = ("a", "b")
    with pytest.raises(ValueError, match="class_names has 2 names; expected one per class"):
        instance_outputs.class_names_for(config)


def test_an_image_without_detections_gets_empty_outputs(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    empty = {
        "boxes": np.zeros((0, 4), np.float32),
        "scores": np.zeros((0,), np.float32),
        "labels": np.zeros((0,), np.int32),
        "masks": np.zeros((0, 28, 28), np.float32),
    }
    paths = instance_outputs.write_instances(image, empty, ["bg", "a"], str(tmp_path / "x"), "x")
    assert json.loads(pathlib.Path(paths[0]).read_text()) == []
    ids = np.asarray(Image.open(paths[1]))
    assert ids.shape == (7, 9) and not ids.any()
    np.testing.assert_array_equal(np.asarray(Image.open(paths[2])), image)


def test_coco_names_are_torchvisions_layout():
    names = coco_names.CATEGORIES
    assert len(names) == 91 and names[0] == "__background__"
    # Spot checks against the COCO 2017 annotation files' category list.
    for cid, name in [
        (1, "person"),
        (13, "stop sign"),
        (44, "bottle"),
        (72, "tv"),
        (90, "toothbrush"),
    ]:
        assert names[cid] == name
    assert coco_names.placeholder_ids() == (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
    assert len(coco_names.CATEGORY_IDS) == 80 and len(set(coco_names.names())) == 80
    assert coco_names.CONTIGUOUS_TO_CATEGORY_ID[1] == 1
    assert coco_names.CONTIGUOUS_TO_CATEGORY_ID[80] == 90
    for k, cid in coco_names.CONTIGUOUS_TO_CATEGORY_ID.items():
        assert coco_names.CATEGORY_ID_TO_CONTIGUOUS[cid] == k
    assert coco_names.category_id(72) == 72
    with pytest.raises(ValueError, match="label 12 is the 'N/A' slot"):
        coco_names.category_id(12)
    with pytest.raises(ValueError, match="label 91 is out of range"):
        coco_names.category_id(91)


@pytest.mark.torch
def test_coco_names_equal_torchvisions_meta():
    detection = pytest.importorskip("torchvision.models.detection")
    meta = detection.MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    assert tuple(meta) == coco_names.CATEGORIES


def test_predict_files_takes_instance_models_and_refuses_semantic_options(run):
    config, model, variables, *_ = run
    with pytest.raises(ValueError, match="are for semantic models; MaskRCNN predicts whole"):
        predict.predict_files(
            config, variables, model, [], "/nonexistent", options=inference.InferenceOptions()
        )


def test_semantic_flags_are_refused_for_an_instance_model(monkeypatch):
    config, task = _config(), tasks.get("instance")
    inference_flags = cli.define_inference_flags()
    assert task.inference_options(config, inference_flags) is None  # none given
    monkeypatch.setattr(flags.FLAGS["flip"], "present", 1)
    monkeypatch.setattr(flags.FLAGS["scales"], "present", 1)
    with pytest.raises(errors.ConfigError, match=r"^--scales, --flip: semantic-segmentation"):
        task.inference_options(config, inference_flags)
    with pytest.raises(ValueError, match=r"whole images \(use --alpha\)$"):
        task.inference_options(config, inference_flags, instead="--alpha")


def test_cli_restores_the_instance_model_and_reports_bad_inputs_by_name(run, tmp_path):
    """The command line end to end up to the images (whose outputs the tests above check):
    the config, checkpoint.load_for_inference of a Mask R-CNN variables checkpoint, the flags.
    Only unreadable inputs, so that nothing compiles."""
    _, _, variables, *_ = run
    ckpt = str(tmp_path / "vars")
    checkpoint.save_variables(
        ckpt, {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    )
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segjax.predict",
            "--config",
            f"{CONFIG}:runlocal",
            "--checkpoint",
            ckpt,
            "--score_threshold",
            "0.3",
            str(tmp_path / "bad.png"),
            str(tmp_path / "missing.jpg"),
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "2 input(s) failed" in last and "bad.png" in last and "missing.jpg" in last
    assert "wrote 0 files" in proc.stdout
