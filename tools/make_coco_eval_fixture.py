"""Generates the COCO evaluation fixture ``tests/fixtures/torchvision/coco_eval.{npz,json}``.

    /work/venv-torch/bin/pip install pycocotools   # besides torch, torchvision, numpy
    /work/venv-torch/bin/python tools/make_coco_eval_fixture.py

The slim torchvision Mask R-CNN of ``make_torchvision_fixtures.py`` (its ``maskrcnn`` case: the
same weights, which the tests rebuild without torch from that case's manifest entry) runs on a
few small ``fixture_values`` images. Its detections (boxes, scores, labels, masks pasted by
torchvision and thresholded at 0.5) are stored in ``coco_eval.npz``.

The ground truth is made from those detections so that the AP is neither 0 nor 1 (a fixed NumPy
seed): a subset of them with boxes perturbed by 2 … 25 % of their size, masks eroded, dilated or
shifted, now and then a wrong class; objects nobody detected (one of them large, so every area
range has ground truth); and one ``iscrowd`` region over a group of near-duplicate detections.
The model's labels 1 … 4 are the categories 3, 8, 9 and 21 (``CATEGORY_IDS``): results must
carry the dataset's ids, not the labels. ``coco_eval.json`` holds the images' names and
shapes, that ground truth as a COCO annotations dict (RLE segmentations), the category table,
and the 12 statistics pycocotools gives torchvision's detections for ``bbox`` and ``segm``:
ground truth loaded by ``COCO``, box results without and mask results without boxes, as
torchvision's ``references/detection/coco_eval.py`` builds them.
"""

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile

import numpy as np
import torch
import torchvision
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_torchvision_fixtures as tv_fixtures  # noqa: E402

fixture_values = tv_fixtures.fixture_values
OUT = os.path.join(tv_fixtures.HERE, "torchvision")
# Landscape images that all resize into one padded bucket (64 × 96) of the slim model's
# transform (min_size 64, max_size 128), so segjax compiles its forward pass once. Their COCO
# ids are deliberately unsorted.
IMAGES = (
    {"id": 42, "name": "coco_eval_image_0", "shape": [61, 83, 3]},
    {"id": 7, "name": "coco_eval_image_1", "shape": [96, 128, 3]},
    {"id": 1000, "name": "coco_eval_image_2", "shape": [70, 90, 3]},
    {"id": 3, "name": "coco_eval_image_3", "shape": [66, 96, 3]},
)
CATEGORY_IDS = (0, 3, 8, 9, 21)  # label → category id (0: background)
CATEGORY_NAMES = ("__background__", "triangle", "square", "circle", "star")
SEED = 16


def fixture_image(spec: dict) -> np.ndarray:
    """The image of ``spec`` ``[H, W, 3]`` float32 in [0, 1) (the maskrcnn case's recipe)."""
    shape = tuple(spec["shape"])
    return fixture_values.image(shape, spec["name"]) * np.float32(0.25) + np.float32(0.5)


def torchvision_detections(model, image: np.ndarray) -> dict[str, np.ndarray]:
    """torchvision's detections of one image: boxes, scores, labels, masks (> 0.5, bool)."""
    with torch.no_grad():
        (det,) = model([torch.from_numpy(image.transpose(2, 0, 1).copy())])
    return {
        "boxes": det["boxes"].numpy().astype(np.float32),
        "scores": det["scores"].numpy().astype(np.float32),
        "labels": det["labels"].numpy().astype(np.int32),
        "masks": det["masks"][:, 0].numpy() > 0.5,
    }


def _perturbed_box(box: np.ndarray, rng: np.random.Generator, hw) -> np.ndarray:
    """``box`` with each side moved by up to a random 2 … 25 % of its size (at least 1 px)."""
    size = np.maximum(box[2:] - box[:2], 1.0)
    scale = rng.choice([0.02, 0.05, 0.1, 0.15, 0.25])
    moved = box + rng.uniform(-1, 1, 4) * scale * np.tile(size, 2)
    x1, y1 = np.clip(np.minimum(moved[:2], moved[2:] - 0.5), 0, None)
    x2, y2 = np.minimum(np.maximum(moved[2:], [x1 + 0.5, y1 + 0.5]), [hw[1], hw[0]])
    return np.asarray([x1, y1, x2, y2])


def _dilate(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """Binary dilation by the 4-neighbourhood (pixels outside the image are background)."""
    for _ in range(iterations):
        padded = np.pad(mask, 1)
        mask = (padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2]
                | padded[1:-1, 2:])  # fmt: skip
    return mask


def _erode(mask: np.ndarray) -> np.ndarray:
    return ~_dilate(~np.pad(mask, 1, constant_values=True))[1:-1, 1:-1]


def _perturbed_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``mask`` eroded, dilated, shifted by a pixel or kept (an empty result keeps ``mask``)."""
    change = rng.choice(["keep", "erode", "dilate", "shift"])
    if change == "erode":
        out = _erode(mask)
    elif change == "dilate":
        out = _dilate(mask)
    elif change == "shift":
        out = np.roll(mask, rng.choice([-1, 1]), axis=int(rng.integers(2)))
    else:
        out = mask
    return out if out.any() else mask


def _box_of(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return np.asarray([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)


def _ellipse(hw, centre, radii) -> np.ndarray:
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1


def ground_truth_objects(det: dict, hw, rng: np.random.Generator, index: int) -> list[dict]:
    """The ground-truth objects of one image (module docstring): ``box`` (x1, y1, x2, y2),
    ``label``, ``mask`` (bool), ``crowd``."""
    objects = []
    crowd = np.zeros(hw, bool)
    for k in range(len(det["scores"])):
        if index == 1 and det["masks"][k].any() and crowd.sum() < 400 and k >= 2:
            crowd |= det["masks"][k]  # detections under the crowd region are not FPs
            continue
        if rng.uniform() < 0.35 or not det["masks"][k].any():
            continue  # a false positive
        label = int(det["labels"][k])
        if rng.uniform() < 0.1:
            label = int(rng.integers(1, len(CATEGORY_IDS)))  # usually a class confusion
        mask = _perturbed_mask(det["masks"][k], rng)
        box = _perturbed_box(det["boxes"][k].astype(np.float64), rng, hw)
        objects.append({"box": box, "label": label, "mask": mask, "crowd": False})
    for _ in range(2):  # objects the model missed
        centre = rng.uniform(0.2, 0.8, 2) * hw
        mask = _ellipse(hw, centre, rng.uniform(3, 12, 2))
        label = int(rng.integers(1, len(CATEGORY_IDS)))
        objects.append({"box": _box_of(mask), "label": label, "mask": mask, "crowd": False})
    if index == 1:
        large = _ellipse(hw, (hw[0] / 2, hw[1] / 2), (0.55 * hw[0], 0.55 * hw[1]))  # clipped
        objects.append({"box": _box_of(large), "label": 2, "mask": large, "crowd": False})
        crowd = _dilate(crowd, 2)
        objects.append({"box": _box_of(crowd), "label": 3, "mask": crowd, "crowd": True})
    return objects


def coco_ground_truth(objects_per_image: list[list[dict]]) -> dict:
    """The COCO annotations dict (images, annotations with RLE masks, categories)."""
    images, annotations = [], []
    for spec, objects in zip(IMAGES, objects_per_image):
        h, w = spec["shape"][:2]
        images.append({"id": spec["id"], "file_name": f"{spec['name']}.png", "height": h,
                       "width": w})  # fmt: skip
        for obj in objects:
            rle = coco_mask.encode(np.asfortranarray(obj["mask"], np.uint8))
            x1, y1, x2, y2 = (float(v) for v in obj["box"])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": spec["id"],
                    "category_id": CATEGORY_IDS[obj["label"]],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": float(coco_mask.area(rle)),
                    "iscrowd": int(obj["crowd"]),
                    "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()},
                }
            )
    categories = [{"id": c, "name": n} for c, n in zip(CATEGORY_IDS[1:], CATEGORY_NAMES[1:])]
    return {"images": images, "annotations": annotations, "categories": categories}


def torchvision_style_results(detections: list[dict]) -> dict[str, list[dict]]:
    """``{"bbox": …, "segm": …}`` results lists as torchvision's reference evaluator makes them."""
    results = {"bbox": [], "segm": []}
    for spec, det in zip(IMAGES, detections):
        for box, score, label, mask in zip(
            det["boxes"], det["scores"], det["labels"], det["masks"]
        ):
            common = {"image_id": spec["id"], "category_id": CATEGORY_IDS[int(label)],
                      "score": float(score)}  # fmt: skip
            x1, y1, x2, y2 = (float(v) for v in box)
            results["bbox"].append({**common, "bbox": [x1, y1, x2 - x1, y2 - y1]})
            rle = coco_mask.encode(np.asfortranarray(mask, np.uint8))
            rle["counts"] = rle["counts"].decode()
            results["segm"].append({**common, "segmentation": rle})
    return results


def pycocotools_stats(ground_truth: dict, results: dict[str, list[dict]], path: str) -> dict:
    """The 12 ``COCOeval.stats`` per IoU type; the ground truth read back from ``path``."""
    with open(path, "w") as f:
        json.dump(ground_truth, f)
    stats = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(path)
        for iou_type, res in results.items():
            evaluation = COCOeval(gt, gt.loadRes(res), iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            stats[iou_type] = [float(v) for v in evaluation.stats]
    return stats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = tv_fixtures.slim_maskrcnn().eval()
    manifest = tv_fixtures.fill_scaled(model, tv_fixtures.MASKRCNN_SCALED)
    sd = fixture_values.state_dict(manifest)
    for key, factor in tv_fixtures.MASKRCNN_SCALED.items():
        sd[key] = sd[key] * np.float32(factor)

    images = [fixture_image(spec) for spec in IMAGES]
    detections = [torchvision_detections(model, image) for image in images]
    rng = np.random.default_rng(SEED)
    objects = [ground_truth_objects(d, im.shape[:2], rng, i)
               for i, (d, im) in enumerate(zip(detections, images))]  # fmt: skip
    ground_truth = coco_ground_truth(objects)
    results = torchvision_style_results(detections)
    with tempfile.TemporaryDirectory() as tmp:
        stats = pycocotools_stats(ground_truth, results, os.path.join(tmp, "instances.json"))

    arrays = {f"{spec['id']}/{k}": v for spec, d in zip(IMAGES, detections) for k, v in d.items()}
    np.savez_compressed(os.path.join(args.out, "coco_eval.npz"), **arrays)
    meta = {
        "generator": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
        },  # fmt: skip
        "weights_checksum": fixture_values.checksum(sd),
        "images": [
            {**s, "checksum": fixture_values.checksum({"x": im})} for s, im in zip(IMAGES, images)
        ],  # fmt: skip
        "category_ids": list(CATEGORY_IDS),
        "class_names": list(CATEGORY_NAMES),
        "ground_truth": ground_truth,
        "stats": stats,
    }
    with open(os.path.join(args.out, "coco_eval.json"), "w") as f:
        json.dump(meta, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
    counts = [len(d["scores"]) for d in detections]
    print(f"coco_eval: detections per image {counts}, {len(ground_truth['annotations'])} objects")
    for iou_type, values in stats.items():
        print(f"  {iou_type}: " + " ".join(f"{v:.4f}" for v in values))


if __name__ == "__main__":
    main()
