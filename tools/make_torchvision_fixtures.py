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
    """torchvision's ResNet with base width ``width`` instead of 64 (same modules and keys)."""

    def __init__(self, width, layers, replace_stride_with_dilation=(False, False, False)):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "torchvision"))
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = os.path.join(args.out, "manifest.json")
    meta = json.load(open(path)) if os.path.exists(path) else {}
    meta["generator"] = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }
    cases = meta.setdefault("cases", {})
    for name in args.cases:
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


if __name__ == "__main__":
    main()
