"""Generates the torchvision parity fixtures in ``tests/fixtures/torchvision/`` (needs torch).

    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch torchvision numpy safetensors
    /work/venv-torch/bin/python tools/make_torchvision_fixtures.py

Each case is a small model built from torchvision's own classes (``ResNet`` with its
``Bottleneck`` and ``_make_layer``, ``mobilenet_v3_large(width_mult=…)``, ``FCN``, ``FCNHead``,
``DeepLabV3``, ``DeepLabHead``, ``LRASPP``, ``IntermediateLayerGetter``, ``VGG``), so its state
dict has exactly torchvision's keys, only with fewer channels / blocks. Weights and inputs come
from ``fixture_values`` (deterministic integer hashing), so the fixtures store only the key
list (``manifest.json``) and the expected outputs (``<case>.npz``, NHWC float32); the tests
rebuild the identical state dict without torch. Run it again after changing a case; commit the
resulting files (about 200 KB).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import mobilenetv3, vgg
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.models.segmentation import deeplabv3, fcn, lraspp

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
sys.path.insert(0, os.path.join(HERE, "torchvision"))
import fixture_values  # noqa: E402

NUM_CLASSES = 3


class SlimResNet(ResNet):
    """torchvision's ResNet with base width ``width`` instead of 64 (same modules and keys).

    ``norm_layer`` is every normalisation layer (Mask R-CNN's backbone: ``FrozenBatchNorm2d``).
    """

    def __init__(
        self,
        width,
        layers,
        replace_stride_with_dilation=(False, False, False),
        norm_layer=nn.BatchNorm2d,
    ):
        nn.Module.__init__(self)
        self._norm_layer = norm_layer
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        rswd = replace_stride_with_dilation
        self.layer1 = self._make_layer(Bottleneck, width, layers[0])
        self.layer2 = self._make_layer(Bottleneck, width * 2, layers[1], stride=2, dilate=rswd[0])
        self.layer3 = self._make_layer(Bottleneck, width * 4, layers[2], stride=2, dilate=rswd[1])
        self.layer4 = self._make_layer(Bottleneck, width * 8, layers[3], stride=2, dilate=rswd[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * 4, 10)


def slim_vgg16(width: int, fc: int) -> vgg.VGG:
    """torchvision's VGG16 (config "D") with ``width`` base channels and ``fc`` hidden units."""
    cfg = [c if c == "M" else c * width // 64 for c in vgg.cfgs["D"]]
    model = vgg.VGG(vgg.make_layers(cfg), num_classes=10, init_weights=False)
    last = cfg[-2]
    model.classifier = nn.Sequential(
        nn.Linear(last * 7 * 7, fc),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(fc, fc),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(fc, 10),
    )
    return model


# Tiny cases. ``target`` documents the segjax module the tests build for each.
RESNET_WIDTH, RESNET_BLOCKS = 8, [1, 1, 1, 3]  # segjax "resnet_tiny" with multi_grid (1, 1, 1)
MBV3_WIDTH = 0.25  # segjax "mobilenet_v3_large_tiny"


def case_vgg16():
    model = slim_vgg16(8, 32)

    def run(x):
        pool5 = model.features(x)
        fc7 = model.classifier[:5](torch.flatten(model.avgpool(pool5), 1))
        return {"pool5": pool5, "fc7": fc7[:, :, None, None]}

    # 224 gives a 7×7 pool5, where torchvision's Linear fc6 equals the 7×7 conv (centre pixel).
    return model, run, (1, 224, 224, 3)


def case_resnet50():
    model = SlimResNet(RESNET_WIDTH, RESNET_BLOCKS)

    def run(x):
        x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        out = {}
        for i in range(1, 5):
            x = getattr(model, f"layer{i}")(x)
            out[f"layer{i}"] = x
        return out

    return model, run, (1, 45, 61, 3)


def case_mobilenet_v3_large():
    model = torchvision.models.mobilenet_v3_large(width_mult=MBV3_WIDTH)

    def run(x):
        out = {}
        for i, layer in enumerate(model.features):
            x = layer(x)
            if i in (4, 16):
                out[f"features_{i}"] = x
        return out

    return model, run, (1, 45, 61, 3)


def _seg_run(model):
    return lambda x: dict(model(x))


def case_fcn_resnet():
    backbone = SlimResNet(RESNET_WIDTH, RESNET_BLOCKS, (False, True, True))
    body = IntermediateLayerGetter(backbone, {"layer4": "out", "layer3": "aux"})
    c = RESNET_WIDTH * 4
    model = fcn.FCN(body, fcn.FCNHead(8 * c, NUM_CLASSES), fcn.FCNHead(4 * c, NUM_CLASSES))
    return model, _seg_run(model), (1, 33, 41, 3)


def case_deeplabv3_resnet():
    backbone = SlimResNet(RESNET_WIDTH, RESNET_BLOCKS, (False, True, True))
    body = IntermediateLayerGetter(backbone, {"layer4": "out", "layer3": "aux"})
    c = RESNET_WIDTH * 4
    model = deeplabv3.DeepLabV3(
        body, deeplabv3.DeepLabHead(8 * c, NUM_CLASSES), fcn.FCNHead(4 * c, NUM_CLASSES)
    )
    return model, _seg_run(model), (1, 33, 41, 3)


def case_deeplabv3_mobilenet_v3_large():
    backbone = mobilenetv3.mobilenet_v3_large(width_mult=MBV3_WIDTH, dilated=True)
    model = deeplabv3._deeplabv3_mobilenetv3(backbone, NUM_CLASSES, aux=True)
    return model, _seg_run(model), (1, 33, 41, 3)


def case_lraspp_mobilenet_v3_large():
    backbone = mobilenetv3.mobilenet_v3_large(width_mult=MBV3_WIDTH, dilated=True)
    model = lraspp._lraspp_mobilenetv3(backbone, NUM_CLASSES)
    return model, _seg_run(model), (1, 45, 61, 3)


CASES = {
    "vgg16": case_vgg16,
    "resnet50": case_resnet50,
    "mobilenet_v3_large": case_mobilenet_v3_large,
    "fcn_resnet": case_fcn_resnet,
    "deeplabv3_resnet": case_deeplabv3_resnet,
    "deeplabv3_mobilenet_v3_large": case_deeplabv3_mobilenet_v3_large,
    "lraspp_mobilenet_v3_large": case_lraspp_mobilenet_v3_large,
}


def fill(model: nn.Module) -> dict[str, list]:
    """Loads ``fixture_values`` weights into ``model``; returns {key: [shape, dtype]}."""
    manifest = {}
    sd = {}
    for key, tensor in model.state_dict().items():
        dtype = str(tensor.dtype).replace("torch.", "")
        manifest[key] = [list(tensor.shape), dtype]
        sd[key] = torch.from_numpy(fixture_values.weight_value(key, tuple(tensor.shape), dtype))
    model.load_state_dict(sd, strict=True)
    return manifest


def run_case(builder):
    """Builds, fills and runs one case; returns (manifest, input shape, NHWC outputs)."""
    torch.manual_seed(0)
    model, run, shape = builder()
    model.eval()
    manifest = fill(model)
    x = fixture_values.image(shape)
    with torch.no_grad():
        outputs = run(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    outputs = {k: v.numpy().transpose(0, 2, 3, 1).astype(np.float32) for k, v in outputs.items()}
    return manifest, shape, outputs


# --------------------------------------------------------------------------- Mask R-CNN
#
# A slim torchvision MaskRCNN from its own classes (BackboneWithFPN over the slim ResNet with
# FrozenBatchNorm2d, TwoMLPHead, FastRCNNPredictor, MaskRCNNHeads, MaskRCNNPredictor), run on an
# odd-sized image so the transform resizes and pads. Its hyper-parameters are written to the
# manifest ("config"), and the test builds segjax's MaskRCNN from them.

MASKRCNN_CONFIG = {
    "num_classes": 5,
    "width": 8,
    "stage_blocks": [1, 1, 1, 1],
    "fpn_channels": 16,
    "representation_size": 32,
    "mask_layers": [16, 16, 16, 16],
    "mask_dim_reduced": 16,
    # FrozenBatchNorm2d eps as torchvision's COCO_V1 weights run it (overwrite_eps(model, 0)).
    "bn_eps": 0.0,
    "min_size": 64,
    "max_size": 128,
    "rpn_pre_nms_top_n_test": 64,
    "rpn_post_nms_top_n_test": 48,
    "detections_per_img": 16,
}
MASKRCNN_IMAGE = (61, 83, 3)  # resized to 64×87, padded to 64×96
# Power-of-two factors on fixture_values weights (exact in float32, so the tests rebuild them
# bit for bit). Random weights give huge logits: objectness saturating sigmoid at exactly 1.0
# (ties that make the proposal order arbitrary), deltas that blow every proposal up to the whole
# image, and class scores of exactly 1.0. Scaled, the fixture has 45 proposals and
# detections with scores spread over (0.05, 1) — 16 kept, the 17th candidate 0.003 below the
# 16th, scores at least 0.002 apart — so a comparison of the detection sets is meaningful.
MASKRCNN_SCALED = {
    "rpn.head.cls_logits.weight": 1 / 16,
    "rpn.head.bbox_pred.weight": 1 / 16,
    "roi_heads.box_predictor.cls_score.weight": 1 / 8,
}
# The full-size ResNet-50 with random statistics grows its features to ~3e4: the FPN's lateral
# convs bring them back to ~8, then the RPN deltas and the 91-class logits are tempered as above
# (100 detections, scores 0.37 … 0.75).
FULL_MASKRCNN_SCALED = {
    **{f"backbone.fpn.inner_blocks.{i}.0.weight": 2.0**-12 for i in range(4)},
    "rpn.head.bbox_pred.weight": 1 / 16,
    "roi_heads.box_predictor.cls_score.weight": 1 / 2,
}
# Side lengths of the given RoIs (sqrt of their area, so FPN level 2, 3, 4, 5, 2, …: the
# LevelMapper's floor(4 + log2(side / 224)), clamped to 2…5); the first MASK_ROIS go to the
# mask head too. Sub-pixel and partly outside boxes are among them.
ROI_SIDES = (0.7, 130.2, 260.5, 470.3, 47.6, 180.9, 23.3, 300.3, 9.5, 118.4, 71.2, 410.6,
             520.8, 203.7, 3.2, 231.5)  # fmt: skip
MASK_ROIS = 5


def maskrcnn_image(shape=MASKRCNN_IMAGE) -> np.ndarray:
    """The fixed input image ``[H, W, 3]`` float32 in [0, 1) (exact: 2·u / 4 + 1/2)."""
    return fixture_values.image(shape, "maskrcnn_image") * np.float32(0.25) + np.float32(0.5)


def maskrcnn_rois(image_hw) -> np.ndarray:
    """The given RoIs ``[K, 4]`` (x1, y1, x2, y2) float32 in padded-image pixels.

    Centres anywhere in the image, aspect ratios in [1/2, 2], sides from ``ROI_SIDES``.
    """
    count = len(ROI_SIDES)
    u = (fixture_values.hash_uniform("maskrcnn_rois", 3 * count).reshape(count, 3) + 1) / 2
    cy, cx = u[:, 0] * image_hw[0], u[:, 1] * image_hw[1]
    ratio = np.sqrt(2.0 ** (2 * u[:, 2] - 1))
    side = np.asarray(ROI_SIDES)
    half_w, half_h = side * ratio / 2, side / ratio / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], 1).astype(np.float32)


def slim_maskrcnn(config=MASKRCNN_CONFIG):
    """torchvision's MaskRCNN with the slim ResNet-FPN and small heads of ``config``."""
    from functools import partial

    from torchvision.models.detection import backbone_utils, faster_rcnn, mask_rcnn
    from torchvision.ops import misc

    width, fpn = config["width"], config["fpn_channels"]
    norm = partial(misc.FrozenBatchNorm2d, eps=config["bn_eps"])
    resnet = SlimResNet(width, config["stage_blocks"], norm_layer=norm)
    backbone = backbone_utils.BackboneWithFPN(
        resnet,
        {f"layer{i + 1}": str(i) for i in range(4)},
        [width * 4 * 2**i for i in range(4)],
        fpn,
    )
    rep, classes = config["representation_size"], config["num_classes"]
    return mask_rcnn.MaskRCNN(
        backbone,
        num_classes=None,
        min_size=config["min_size"],
        max_size=config["max_size"],
        rpn_pre_nms_top_n_test=config["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_test=config["rpn_post_nms_top_n_test"],
        box_detections_per_img=config["detections_per_img"],
        box_head=faster_rcnn.TwoMLPHead(fpn * 7 * 7, rep),
        box_predictor=faster_rcnn.FastRCNNPredictor(rep, classes),
        mask_head=mask_rcnn.MaskRCNNHeads(fpn, config["mask_layers"], 1),
        mask_predictor=mask_rcnn.MaskRCNNPredictor(fpn, config["mask_dim_reduced"], classes),
    )


def fill_scaled(model: nn.Module, scaled: dict[str, float]) -> dict[str, list]:
    """:func:`fill`, then the ``scaled`` keys multiplied by their factor; returns the manifest."""
    manifest = fill(model)
    sd = model.state_dict()
    for key, factor in scaled.items():
        sd[key] = sd[key] * factor
    model.load_state_dict(sd, strict=True)
    return manifest


def _nhwc(t) -> np.ndarray:
    return t.numpy().transpose(0, 2, 3, 1).astype(np.float32)


def maskrcnn_reference(model, image: np.ndarray, rois: np.ndarray) -> dict[str, np.ndarray]:
    """Everything the parity tests compare, from torchvision's ``model`` (eval) on ``image``.

    The given ``rois`` themselves, the transformed batch (``images`` NHWC, ``image_size``),
    the pyramid ``fpn_0`` … ``fpn_3``, ``fpn_pool``, the RPN head per level
    (``rpn_objectness_{i}``, ``rpn_deltas_{i}``), the box head on ``rois``
    (``box_class_logits [1, K, C]``, ``box_regression [1, K, 4C]``) and the mask head on
    ``rois[:MASK_ROIS]`` (``mask_logits [1, M, 28, 28, C]``), and the final detections in
    original pixels (``det_boxes``, ``det_scores``, ``det_labels``, ``det_masks`` = pasted
    probability > 0.5).
    """
    model.eval()
    x = torch.from_numpy(image.transpose(2, 0, 1).copy())
    out = {"rois": rois}
    with torch.no_grad():
        images, _ = model.transform([x])
        out["images"] = _nhwc(images.tensors)
        out["image_size"] = np.asarray(images.image_sizes[0], np.int32)
        features = model.backbone(images.tensors)
        for name, value in features.items():
            out[f"fpn_{name}"] = _nhwc(value)
        objectness, deltas = model.rpn.head(list(features.values()))
        for i, (o, d) in enumerate(zip(objectness, deltas)):
            out[f"rpn_objectness_{i}"], out[f"rpn_deltas_{i}"] = _nhwc(o), _nhwc(d)
        heads = model.roi_heads
        r = torch.from_numpy(rois)
        pooled = heads.box_roi_pool(features, [r], images.image_sizes)
        logits, regression = heads.box_predictor(heads.box_head(pooled))
        out["box_class_logits"] = logits[None].numpy()
        out["box_regression"] = regression[None].numpy()
        pooled = heads.mask_roi_pool(features, [r[:MASK_ROIS]], images.image_sizes)
        masks = heads.mask_predictor(heads.mask_head(pooled))
        out["mask_logits"] = masks.numpy().transpose(0, 2, 3, 1)[None].astype(np.float32)
        (det,) = model([x])
    out["det_boxes"] = det["boxes"].numpy()
    out["det_scores"] = det["scores"].numpy()
    out["det_labels"] = det["labels"].numpy().astype(np.int32)
    out["det_masks"] = det["masks"][:, 0].numpy() > 0.5
    return out


def run_maskrcnn_case():
    """The slim Mask R-CNN case: (manifest entry without checksums' state dict, outputs)."""
    torch.manual_seed(0)
    model = slim_maskrcnn().eval()
    manifest = fill_scaled(model, MASKRCNN_SCALED)
    image = maskrcnn_image()
    out = maskrcnn_reference(model, image, maskrcnn_rois(tuple(out_hw(model, image))))
    return manifest, out


def out_hw(model, image) -> tuple[int, int]:
    """The padded batch size torchvision's transform makes of ``image``."""
    with torch.no_grad():
        images, _ = model.eval().transform([torch.from_numpy(image.transpose(2, 0, 1).copy())])
    return tuple(images.tensors.shape[-2:])


def full_size_maskrcnn_reference(shape=(75, 101, 3)):
    """Full ``maskrcnn_resnet50_fpn(weights=None)`` with fixture weights (BatchNorm2d eps 1e-5,
    randomised statistics) on an odd-sized image: ``(state_dict, image, rois, outputs)``."""
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    model.eval()
    fill_scaled(model, FULL_MASKRCNN_SCALED)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    image = maskrcnn_image(shape)
    rois = maskrcnn_rois(out_hw(model, image))
    return sd, image, rois, maskrcnn_reference(model, image, rois)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "torchvision"))
    parser.add_argument("--cases", nargs="*", default=[*CASES, "maskrcnn"])
    parser.add_argument(
        "--full_size_maskrcnn",
        default="",
        help="write the full-size maskrcnn_resnet50_fpn reference (.npz, ~200 MB) here and exit",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.full_size_maskrcnn:
        write_full_size_maskrcnn(args.full_size_maskrcnn)
        return
    path = os.path.join(args.out, "manifest.json")
    meta = json.load(open(path)) if os.path.exists(path) else {}
    meta["generator"] = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }
    cases = meta.setdefault("cases", {})
    for name in args.cases:
        if name == "maskrcnn":
            cases[name] = write_maskrcnn_case(args.out)
            continue
        manifest, shape, outputs = run_case(CASES[name])
        sd = fixture_values.state_dict(manifest)
        cases[name] = {
            "input_shape": list(shape),
            "num_classes": NUM_CLASSES,
            "weights_checksum": fixture_values.checksum(sd),
            "input_checksum": fixture_values.checksum({"x": fixture_values.image(shape)}),
            "outputs": {k: list(v.shape) for k, v in outputs.items()},
            "state_dict": manifest,
        }
        np.savez(os.path.join(args.out, f"{name}.npz"), **outputs)
        params = sum(int(np.prod(s)) for s, _ in manifest.values())
        print(
            f"{name}: {len(manifest)} keys, {params:,} values, outputs "
            + ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
        )
    with open(path, "w") as f:
        json.dump(meta, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")


def write_maskrcnn_case(out_dir: str) -> dict:
    """Runs the slim Mask R-CNN case, writes ``maskrcnn.npz``; returns its manifest entry."""
    manifest, outputs = run_maskrcnn_case()
    sd = fixture_values.state_dict(manifest)
    for key, factor in MASKRCNN_SCALED.items():
        sd[key] = sd[key] * np.float32(factor)
    image = maskrcnn_image()
    np.savez_compressed(os.path.join(out_dir, "maskrcnn.npz"), **outputs)
    scores = outputs["det_scores"]
    print(
        f"maskrcnn: {len(manifest)} keys, {len(scores)} detections (scores "
        f"{scores.min() if len(scores) else 0:.3f}…{scores.max() if len(scores) else 0:.3f}), "
        + ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
    )
    return {
        "config": MASKRCNN_CONFIG,
        "scaled": MASKRCNN_SCALED,
        "input_shape": list(MASKRCNN_IMAGE),
        "num_classes": MASKRCNN_CONFIG["num_classes"],
        "mask_rois": MASK_ROIS,
        "weights_checksum": fixture_values.checksum(sd),
        "input_checksum": fixture_values.checksum({"x": image}),
        "outputs": {k: list(v.shape) for k, v in outputs.items()},
        "state_dict": manifest,
    }


def write_full_size_maskrcnn(path: str) -> None:
    """Writes the full-size reference: state dict (``sd/<key>``), image, rois and outputs."""
    sd, image, rois, outputs = full_size_maskrcnn_reference()
    arrays = {f"sd/{k}": v for k, v in sd.items()}
    np.savez(path, image=image, rois=rois, **arrays, **{f"out/{k}": v for k, v in outputs.items()})
    print(f"full-size maskrcnn: {len(outputs['det_scores'])} detections -> {path}")


if __name__ == "__main__":
    main()
