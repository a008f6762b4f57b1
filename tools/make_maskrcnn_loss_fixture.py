"""Generates ``tests/fixtures/torchvision/maskrcnn_losses.npz``: torchvision's training losses.

    /work/venv-torch/bin/python tools/make_maskrcnn_loss_fixture.py

The slim torchvision Mask R-CNN of ``make_torchvision_fixtures`` (same weights: the ``maskrcnn``
manifest entry with its power-of-two ``scaled`` factors) runs its RPN and RoI heads in training
mode on a batch of two padded images with hand-made ground truth. Both samplers are wrapped so
that what they are given (torchvision's match labels) and what they draw (the sampled positive
and negative indices) are recorded. The fixture stores only what the segjax test cannot rebuild
without torch: the ground truth, torchvision's training proposals, the match labels, the sampled
indices and the five losses. The images come from ``fixture_values`` (checksum stored), so the
test rebuilds them bit for bit. torchvision's own transform is skipped (the batch is given
already normalised and padded) so the two image sizes inside the padding can be chosen.
"""

import argparse
import os

import make_torchvision_fixtures as base
import numpy as np
import torch
from torchvision.models.detection.image_list import ImageList

fixture_values = base.fixture_values

PADDED_SHAPE = (64, 96)
IMAGE_SIZES = ((64, 87), (57, 96))  # (height, width) inside the padding
MAX_INSTANCES = 4
# Per image: (x1, y1, x2, y2, label). Sizes from 9 to 60 pixels, overlapping objects, and
# boxes that reach the bottom / right border (the mask targets' boundary rule) — the second
# image's last box ends on both. Image 0 has a padded (invalid) entry.
GROUND_TRUTH = (
    ((4.0, 6.5, 40.0, 50.0, 1), (30.5, 10.0, 86.0, 60.0, 2), (60.0, 2.0, 69.0, 14.0, 4)),
    (
        (10.0, 10.0, 30.0, 31.0, 3),
        (20.0, 4.0, 62.5, 55.0, 1),
        (50.0, 30.0, 95.0, 57.0, 2),
        (70.0, 40.0, 96.0, 57.0, 4),
    ),
)
LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


def loss_images() -> np.ndarray:
    """The normalised padded batch ``[2, 64, 96, 3]`` float32: zeros outside each image size."""
    images = fixture_values.image((len(IMAGE_SIZES), *PADDED_SHAPE, 3), "maskrcnn_loss_images")
    for image, (h, w) in zip(images, IMAGE_SIZES):
        image[h:] = 0
        image[:, w:] = 0
    return images


def ground_truth() -> dict[str, np.ndarray]:
    """Padded ground truth of the contract: boxes, labels, masks (ellipses), instance_valid."""
    n = len(IMAGE_SIZES)
    boxes = np.zeros((n, MAX_INSTANCES, 4), np.float32)
    labels = np.zeros((n, MAX_INSTANCES), np.int32)
    masks = np.zeros((n, MAX_INSTANCES, *PADDED_SHAPE), np.uint8)
    valid = np.zeros((n, MAX_INSTANCES), bool)
    ys, xs = np.mgrid[: PADDED_SHAPE[0], : PADDED_SHAPE[1]] + 0.5
    for i, objects in enumerate(GROUND_TRUTH):
        for j, (x1, y1, x2, y2, label) in enumerate(objects):
            boxes[i, j], labels[i, j], valid[i, j] = (x1, y1, x2, y2), label, True
            cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
            masks[i, j] = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
    return {"boxes": boxes, "labels": labels, "masks": masks, "instance_valid": valid}


class RecordingSampler:
    """Wraps a ``BalancedPositiveNegativeSampler``, keeping its inputs and outputs."""

    def __init__(self, sampler):
        self.sampler, self.labels, self.positive, self.negative = sampler, [], [], []

    def __call__(self, matched_idxs):
        positive, negative = self.sampler(matched_idxs)
        self.labels = [m.numpy().copy() for m in matched_idxs]
        self.positive = [np.flatnonzero(p.numpy()) for p in positive]
        self.negative = [np.flatnonzero(n.numpy()) for n in negative]
        return positive, negative


def _torch_targets(gt: dict[str, np.ndarray]) -> list[dict[str, torch.Tensor]]:
    """torchvision's targets: the valid entries, masks at each image's size (not padded)."""
    out = []
    for i, (h, w) in enumerate(IMAGE_SIZES):
        keep = gt["instance_valid"][i]
        out.append(
            {
                "boxes": torch.from_numpy(gt["boxes"][i][keep]),
                "labels": torch.from_numpy(gt["labels"][i][keep].astype(np.int64)),
                "masks": torch.from_numpy(gt["masks"][i][keep][:, :h, :w].copy()),
            }
        )
    return out


def _padded(arrays: list[np.ndarray], fill, dtype) -> np.ndarray:
    """Ragged per-image arrays stacked, padded with ``fill`` to the longest."""
    length = max(len(a) for a in arrays)
    out = np.full((len(arrays), length, *arrays[0].shape[1:]), fill, dtype)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return out


def torchvision_losses() -> dict[str, np.ndarray]:
    """Runs torchvision's training RPN and RoI heads; returns the fixture's arrays."""
    torch.manual_seed(0)
    model = base.slim_maskrcnn()
    base.fill_scaled(model, base.MASKRCNN_SCALED)
    model.train()
    rpn_sampler = RecordingSampler(model.rpn.fg_bg_sampler)
    roi_sampler = RecordingSampler(model.roi_heads.fg_bg_sampler)
    model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler = rpn_sampler, roi_sampler
    images, gt = loss_images(), ground_truth()
    tensors = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    image_list = ImageList(tensors, list(IMAGE_SIZES))
    targets = _torch_targets(gt)
    with torch.no_grad():
        features = model.backbone(tensors)
        proposals, rpn_losses = model.rpn(image_list, features, targets)
        _, roi_losses = model.roi_heads(features, proposals, image_list.image_sizes, targets)
    losses = {**rpn_losses, **roi_losses}
    out = {
        **gt,
        "images_checksum": np.float64(fixture_values.checksum({"x": images})),
        "image_size": np.asarray(IMAGE_SIZES, np.int32),
        "proposals": _padded([p.numpy() for p in proposals], 0, np.float32),
        "num_proposals": np.asarray([len(p) for p in proposals], np.int32),
        "rpn_labels": np.stack(rpn_sampler.labels).astype(np.int8),
        "roi_labels": _padded(roi_sampler.labels, -9, np.int8),
        "losses": np.asarray([float(losses[k]) for k in LOSS_NAMES], np.float64),
    }
    for stage, sampler in (("rpn", rpn_sampler), ("roi", roi_sampler)):
        out[f"{stage}_positive"] = _padded(sampler.positive, -1, np.int32)
        out[f"{stage}_negative"] = _padded(sampler.negative, -1, np.int32)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(base.HERE, "torchvision"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = torchvision_losses()
    path = os.path.join(args.out, "maskrcnn_losses.npz")
    np.savez_compressed(path, **out)
    print(
        f"{path}: proposals {out['num_proposals'].tolist()}, RPN positives "
        f"{(out['rpn_positive'] >= 0).sum(1).tolist()}, RoI positives "
        f"{(out['roi_positive'] >= 0).sum(1).tolist()}, losses "
        + ", ".join(f"{k} {v:.6g}" for k, v in zip(LOSS_NAMES, out["losses"]))
    )


if __name__ == "__main__":
    main()
