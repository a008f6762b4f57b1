"""Mask R-CNN ↔ torchvision: weights conversion and numerical parity.

The fixture (``tests/fixtures/torchvision/maskrcnn.npz`` + its ``manifest.json`` entry, made by
``tools/make_torchvision_fixtures.py --cases maskrcnn`` with torch) is a slim torchvision
``MaskRCNN`` built from torchvision's own classes, run on a 61×83 image: its transformed batch,
FPN levels, RPN head outputs, box and mask heads on given RoIs, and the final detections.
Its weights are rebuilt here bit for bit by ``fixture_values`` (with the manifest's power-of-two
``scaled`` factors), converted, and segjax's :class:`MaskRCNN` with the manifest's
hyper-parameters must agree: tensors within 1e-4 of max |reference|, detections the same set.
No torch is needed except for the test marked ``torch`` (full size; skipped without torch).
"""

import functools
import importlib.util
import json
import os
import sys

import chex
import jax
import numpy as np
import pytest
import scipy.optimize

from segjax import checkpoint
from segjax.models.backbones import resnet
from segjax.models.maskrcnn import ImageTransform, MaskRCNN, predict_images
from segjax.models.maskrcnn.postprocess import DetectionConfig
from segjax.models.maskrcnn.rpn import ProposalConfig
from segjax.weights import import_torchvision
from segjax.weights import torchvision as tv

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision")
sys.path.insert(0, FIXTURES)
import fixture_values  # noqa: E402

ARCH = "maskrcnn_resnet50_fpn"
RTOL = 1e-4  # max |segjax − torchvision| ≤ RTOL · max |torchvision|
MIN_IOU, SCORE_ATOL, MASK_AGREEMENT = 0.99, 1e-4, 0.999
# Random slim weights give some degenerate boxes (0.01 px wide), whose IoU drops below MIN_IOU
# for a float32 rounding difference of 1e-4 px (it does on some CPUs): such boxes match when
# every coordinate agrees within BOX_ATOL pixels.
BOX_ATOL = 2e-3
PYRAMID = ("0", "1", "2", "3", "pool")


# ----------------------------------------------------------------------------- fixture


@functools.cache
def _meta() -> dict:
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        return json.load(f)["cases"]["maskrcnn"]


@functools.cache
def _reference() -> dict[str, np.ndarray]:
    with np.load(os.path.join(FIXTURES, "maskrcnn.npz")) as data:
        return {k: data[k] for k in data.files}


def scaled_state_dict(manifest: dict, scaled: dict[str, float]) -> dict[str, np.ndarray]:
    """``fixture_values``' state dict of ``manifest`` with the ``scaled`` keys multiplied."""
    sd = fixture_values.state_dict(manifest)
    for key, factor in scaled.items():
        sd[key] = sd[key] * np.float32(factor)
    return sd


def fixture_state_dict() -> dict[str, np.ndarray]:
    """The slim torchvision Mask R-CNN's state dict, checked against the generator's checksum."""
    meta = _meta()
    sd = scaled_state_dict(meta["state_dict"], meta["scaled"])
    assert fixture_values.checksum(sd) == meta["weights_checksum"], "fixture_values drifted"
    return sd


def fixture_image() -> np.ndarray:
    """The fixture's input: ``[H, W, 3]`` float32 in [0, 1) (as the generator makes it)."""
    meta = _meta()
    image = fixture_values.image(tuple(meta["input_shape"]), "maskrcnn_image")
    image = image * np.float32(0.25) + np.float32(0.5)
    assert fixture_values.checksum({"x": image}) == meta["input_checksum"]
    return image


def model_from_config(config: dict, **kwargs) -> MaskRCNN:
    """segjax's Mask R-CNN with the hyper-parameters the generator gave torchvision's."""
    return MaskRCNN(
        num_classes=config["num_classes"],
        width=config["width"],
        stage_blocks=tuple(config["stage_blocks"]),
        fpn_channels=config["fpn_channels"],
        representation_size=config["representation_size"],
        mask_layers=tuple(config["mask_layers"]),
        mask_dim_reduced=config["mask_dim_reduced"],
        bn_eps=config["bn_eps"],
        rpn_test=ProposalConfig(
            config["rpn_pre_nms_top_n_test"], config["rpn_post_nms_top_n_test"]
        ),
        detection=DetectionConfig(detections_per_img=config["detections_per_img"]),
        transform=ImageTransform(min_size=config["min_size"], max_size=config["max_size"]),
        **kwargs,
    )


@functools.cache
def fixture_model() -> MaskRCNN:
    return model_from_config(_meta()["config"])


@functools.cache
def fixture_variables() -> dict:
    return tv.convert(fixture_state_dict(), ARCH, module=fixture_model())


# ----------------------------------------------------------------------------- comparison


def relative_error(got, ref) -> float:
    """max |got − ref| / max |ref| (shapes must agree)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _pieces(module: MaskRCNN, images, rois, mask_rois):
    features = module.features(images)
    objectness, deltas = module.rpn_outputs(images)
    class_logits, box_regression = module.box_head_outputs(images, rois)
    mask_logits = module.mask_head_outputs(images, mask_rois)
    return {
        **{f"fpn_{name}": f for name, f in zip(PYRAMID, features)},
        **{f"rpn_objectness_{i}": o for i, o in enumerate(objectness)},
        **{f"rpn_deltas_{i}": d for i, d in enumerate(deltas)},
        "box_class_logits": class_logits,
        "box_regression": box_regression,
        "mask_logits": mask_logits,
    }


@functools.cache
def _jitted_pieces(module: MaskRCNN):
    return jax.jit(lambda v, *args: module.apply(v, *args, method=_pieces))


def head_outputs(module, variables, ref: dict, rois: np.ndarray) -> dict[str, np.ndarray]:
    """segjax's pieces on torchvision's own transformed batch (one compiled function)."""
    mask_rois = rois[: ref["mask_logits"].shape[1]]
    out = _jitted_pieces(module)(variables, ref["images"], rois[None], mask_rois[None])
    return jax.device_get(out)


def tensor_errors(got: dict, ref: dict) -> dict[str, float]:
    """Relative error of every recorded tensor output (FPN, RPN, box and mask heads)."""
    names = [k for k in ref if k.startswith(("fpn_", "rpn_", "box_", "mask_"))]
    return {name: relative_error(got[name], ref[name]) for name in names}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of (x1, y1, x2, y2) boxes (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], axis=-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def match_boxes(ref_boxes, got_boxes, ref_labels, got_labels) -> np.ndarray:
    """A one-to-one matching of reference boxes to ours with the same label, maximising the
    total IoU (duplicates — the same box from two proposals — each need their own partner):
    for each reference box our index, or −1 where the IoU is below MIN_IOU (boxes whose
    coordinates agree within BOX_ATOL count as IoU 1)."""
    match = np.full(len(ref_boxes), -1)
    if len(ref_boxes) == 0 or len(got_boxes) == 0:
        return match
    iou = box_iou(ref_boxes, got_boxes)
    close = np.all(np.abs(ref_boxes[:, None] - got_boxes[None]) <= BOX_ATOL, axis=-1)
    iou = np.where(close, 1.0, iou)
    iou = np.where(np.asarray(ref_labels)[:, None] == np.asarray(got_labels)[None], iou, 0)
    rows, cols = scipy.optimize.linear_sum_assignment(iou, maximize=True)
    good = iou[rows, cols] >= MIN_IOU
    match[rows[good]] = cols[good]
    return match


def detection_report(got: dict, ref: dict) -> dict:
    """How our final detections compare with torchvision's (``det_*`` of the reference).

    Returns ``matched`` (how many of torchvision's have a partner: same label, IoU ≥ 0.99),
    ``count`` (ours, torchvision's), ``score_error`` (max |Δscore| over the matches) and
    ``mask_agreement`` (the lowest fraction of pixels where the two pasted masks at 0.5 agree).
    """
    match = match_boxes(ref["det_boxes"], got["boxes"], ref["det_labels"], got["labels"])
    pairs = [(i, int(j)) for i, j in enumerate(match) if j >= 0]
    score_error = max((abs(ref["det_scores"][i] - got["scores"][j]) for i, j in pairs), default=0)
    agreement = min(
        (float(np.mean(ref["det_masks"][i] == (got["masks"][j] > 0.5))) for i, j in pairs),
        default=1.0,
    )
    return {
        "matched": len(pairs),
        "count": (len(got["scores"]), len(ref["det_scores"])),
        "score_error": float(score_error),
        "mask_agreement": agreement,
    }


def assert_detections_match(report: dict) -> None:
    ours, theirs = report["count"]
    assert ours == theirs, f"{ours} detections, torchvision {theirs}"
    assert report["matched"] == theirs, report
    assert report["score_error"] <= SCORE_ATOL, report
    assert report["mask_agreement"] >= MASK_AGREEMENT, report


# ----------------------------------------------------------------------------- parity


def test_fixture_is_not_vacuous():
    """Enough detections, spread scores and non-empty masks, so the set comparison means
    something (the generator scales the class logits for this)."""
    ref = _reference()
    scores = ref["det_scores"]
    assert len(scores) >= 10 and scores.min() > 0.05 and scores.max() < 0.999
    assert np.min(-np.diff(scores)) > 10 * SCORE_ATOL  # no near-ties in the ranking
    assert sum(m.any() for m in ref["det_masks"]) >= 10
    assert len(set(ref["det_labels"].tolist())) >= 3


def test_transform_is_torchvisions():
    ref = _reference()
    batch = fixture_model().transform([fixture_image()])
    np.testing.assert_array_equal(batch["image_sizes"][0], ref["image_size"])
    assert batch["images"].shape == ref["images"].shape
    assert relative_error(batch["images"], ref["images"]) <= 1e-5


def test_pieces_match_torchvision():
    """FPN (5 levels), RPN objectness and deltas (5 levels), box and mask heads on given RoIs."""
    ref = _reference()
    rois = _reference()["rois"]
    got = head_outputs(fixture_model(), fixture_variables(), ref, rois)
    errors = tensor_errors(got, ref)
    assert len(errors) == 5 + 10 + 3
    for name, err in errors.items():
        assert err <= RTOL, f"{name}: max abs diff / max abs ref = {err:.2e}"
    # The RoIs reach every pyramid level torchvision's LevelMapper assigns (2 … 5).
    side = np.sqrt(np.prod(rois[:, 2:] - rois[:, :2], axis=1))
    levels = np.clip(np.floor(4 + np.log2(side / 224) + 1e-6), 2, 5)
    assert set(levels) == set(levels[: ref["mask_logits"].shape[1]]) == {2, 3, 4, 5}


def test_detections_match_torchvision():
    """End to end from the raw image (transform, jitted model, mask pasting at 0.5)."""
    ref = _reference()
    (got,) = predict_images(fixture_model(), fixture_variables(), [fixture_image()])
    assert got["masks"].shape[1:] == ref["det_masks"].shape[1:]
    assert_detections_match(detection_report(got, ref))


def test_parity_check_catches_a_flattening_bug():
    """Negative control: fc6 read as if torch flattened the RoI (H, W, C) instead of (C, H, W)."""
    ref = _reference()
    variables = jax.tree.map(np.copy, fixture_variables())
    fc6 = variables["params"]["roi_heads"]["box_head"]["fc6"]
    h, w, c, o = fc6["kernel"].shape
    torch_weight = fixture_state_dict()["roi_heads.box_head.fc6.weight"]
    fc6["kernel"] = torch_weight.reshape(o, h, w, c).transpose(1, 2, 3, 0)
    errors = tensor_errors(head_outputs(fixture_model(), variables, ref, _reference()["rois"]), ref)
    assert errors["fpn_0"] <= RTOL and errors["mask_logits"] <= RTOL
    assert errors["box_class_logits"] > 100 * RTOL


# ----------------------------------------------------------------------------- conversion


def test_layouts_and_frozen_batchnorm():
    sd, v = fixture_state_dict(), fixture_variables()
    params, stats = v["params"], v["batch_stats"]
    body = stats["backbone"]["body"]
    for flax_name, torch_name in (("scale", "weight"), ("bias", "bias"), ("mean", "running_mean"),
                                  ("var", "running_var")):  # fmt: skip
        np.testing.assert_array_equal(
            body["layer2_0"]["downsample_bn"][flax_name],
            sd[f"backbone.body.layer2.0.downsample.1.{torch_name}"],
        )
    assert "bn1" not in params["backbone"]["body"]  # frozen BN: no parameters
    heads = params["roi_heads"]
    np.testing.assert_array_equal(
        heads["box_predictor"]["cls_score"]["kernel"],
        sd["roi_heads.box_predictor.cls_score.weight"].T,
    )
    np.testing.assert_array_equal(
        heads["mask_head"]["mask_fcn3"]["kernel"],
        sd["roi_heads.mask_head.2.0.weight"].transpose(2, 3, 1, 0),
    )
    # ConvTranspose2d [in, out, 2, 2] → HWOI: kernel[a, b, o, i] = weight[i, o, a, b]
    t = sd["roi_heads.mask_predictor.conv5_mask.weight"]
    assert heads["mask_predictor"]["conv5_mask"]["kernel"][1, 0, 3, 5] == t[5, 3, 1, 0]
    np.testing.assert_array_equal(
        params["rpn"]["head"]["conv"]["kernel"],
        sd["rpn.head.conv.0.0.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        params["backbone"]["fpn"]["layer_blocks_3"]["bias"],
        sd["backbone.fpn.layer_blocks.3.0.bias"],
    )


def test_export_round_trips_exactly():
    sd = fixture_state_dict()
    back = tv.export(fixture_variables(), ARCH)
    assert sorted(back) == sorted(sd)
    for key, value in sd.items():
        assert back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def legacy_keys(sd: dict) -> dict:
    """``sd`` with the key names of torchvision < 0.13 (those of the published COCO file)."""
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if key.startswith(("backbone.fpn.inner_blocks.", "backbone.fpn.layer_blocks.")):
            key = ".".join(parts[:4] + parts[5:])  # drop the Sequential's .0
        elif key.startswith("rpn.head.conv.0.0."):
            key = "rpn.head.conv." + parts[-1]
        elif key.startswith("roi_heads.mask_head."):
            key = f"roi_heads.mask_head.mask_fcn{int(parts[2]) + 1}.{parts[-1]}"
        out[key] = value
    return out


def test_checkpoints_of_old_torchvision_convert_the_same():
    sd = fixture_state_dict()
    old = legacy_keys(sd)
    assert "rpn.head.conv.weight" in old and "roi_heads.mask_head.mask_fcn4.bias" in old
    assert "backbone.fpn.inner_blocks.0.weight" in old
    chex.assert_trees_all_equal(tv.convert(old, ARCH, module=fixture_model()), fixture_variables())
    both = {**sd, "rpn.head.conv.weight": old["rpn.head.conv.weight"]}
    with pytest.raises(tv.ConversionError, match="both 'rpn.head.conv.weight' and 'rpn.head.conv"):
        tv.convert(both, ARCH, module=fixture_model())


def _conversion_error(sd, **kwargs) -> str:
    with pytest.raises(tv.ConversionError) as e:
        tv.convert(sd, ARCH, **{"module": fixture_model(), **kwargs})
    return str(e.value)


def test_missing_unexpected_and_mis_shaped_keys():
    sd = fixture_state_dict()
    del sd["roi_heads.mask_head.2.0.weight"]
    sd["roi_heads.mask_head.9.0.weight"] = np.zeros((1,), np.float32)
    msg = _conversion_error(sd)
    lines = msg.splitlines()
    assert lines[0] == f"state dict does not match torchvision {ARCH!r}:"
    assert "  missing keys (1): roi_heads.mask_head.2.0.weight" in lines
    assert "  unexpected keys (1): roi_heads.mask_head.9.0.weight" in lines

    sd = fixture_state_dict()
    sd["roi_heads.box_head.fc6.weight"] = np.zeros((32, 100), np.float32)
    msg = _conversion_error(sd)
    assert "\n" not in msg
    assert msg == (
        f"{ARCH}: shape mismatch for roi_heads.box_head.fc6.weight: checkpoint (32, 100), "
        "expected (32, 784) (segjax params/roi_heads/box_head/fc6/kernel (7, 7, 16, 32))"
    )


def test_class_count_mismatch_and_drop_head():
    sd = fixture_state_dict()
    assert "has 5 classes, but num_classes=7" in _conversion_error(sd, num_classes=7)
    seven = model_from_config({**_meta()["config"], "num_classes": 7})
    variables = tv.convert(sd, ARCH, num_classes=7, drop_head=True, module=seven)
    target = tv.abstract_variables(seven, tv.ARCHS[ARCH])
    _, report = checkpoint.merge_pretrained(target, variables)
    assert sorted(report["kept_initial"]) == [
        f"params/roi_heads/{layer}/{leaf}"
        for layer in (
            "box_predictor/bbox_pred",
            "box_predictor/cls_score",
            "mask_predictor/mask_fcn_logits",
        )
        for leaf in ("bias", "kernel")
    ]
    assert not report["unused"] and not report["shape_mismatch"]


# ----------------------------------------------------------------------------- ResNet-50 backbone


def _resnet_fixture() -> dict[str, np.ndarray]:
    """The slim torchvision ResNet of the ``resnet50`` fixture (BatchNorm2d, with ``fc``)."""
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        meta = json.load(f)["cases"]["resnet50"]
    return fixture_values.state_dict(meta["state_dict"])


def test_imagenet_resnet50_initialises_the_backbone():
    sd = _resnet_fixture()
    assert "fc.weight" in sd and "layer4.2.bn3.running_var" in sd
    # The resnet50 fixture has (1, 1, 1, 3) blocks; the rest of the model is the fixture's.
    model = model_from_config({**_meta()["config"], "stage_blocks": [1, 1, 1, 3]})
    variables = tv.convert(sd, ARCH, backbone_only=True, module=model)
    assert set(variables) == {"params", "batch_stats"}
    assert all(set(tree) == {"backbone"} and set(tree["backbone"]) == {"body"}
               for tree in variables.values())  # fmt: skip
    bn = variables["batch_stats"]["backbone"]["body"]["layer4_2"]["bn3"]
    np.testing.assert_array_equal(bn["var"], sd["layer4.2.bn3.running_var"])
    np.testing.assert_array_equal(bn["scale"], sd["layer4.2.bn3.weight"])
    target = tv.abstract_variables(model, tv.ARCHS[ARCH])
    _, report = checkpoint.merge_pretrained(target, variables)
    assert not report["unused"] and not report["shape_mismatch"]
    in_body = lambda name: name.split("/")[1:3] == ["backbone", "body"]  # noqa: E731
    assert report["loaded"] and all(map(in_body, report["loaded"]))
    assert not any(map(in_body, report["kept_initial"]))
    assert any(n.startswith("params/backbone/fpn/") for n in report["kept_initial"])
    # Why backbone_only exists: a plain resnet50 import lives at backbone/… with BatchNorm
    # affines in params, so init_from would load none of it into a Mask R-CNN.
    slim_resnet = resnet.ResNet(depth=50, width=8, stage_blocks=(1, 1, 1, 3))
    plain = tv.convert(sd, "resnet50", module=slim_resnet)
    assert not checkpoint.merge_pretrained(target, plain)[1]["loaded"]


def test_backbone_only_equals_the_full_conversions_body():
    full = fixture_state_dict()
    prefix = "backbone.body."
    body = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
    body["fc.weight"], body["fc.bias"] = np.zeros((10, 256), np.float32), np.zeros(10, np.float32)
    variables = tv.convert(body, ARCH, backbone_only=True, module=fixture_model())
    expected = {
        c: {"backbone": {"body": t["backbone"]["body"]}} for c, t in fixture_variables().items()
    }
    chex.assert_trees_all_equal(variables, expected)


def test_wrong_kind_of_checkpoint_gets_a_hint():
    hint = "ImageNet resnet50 checkpoint; convert it with backbone_only=True"
    msg = _conversion_error(_resnet_fixture())
    assert hint in msg and "\n" not in msg
    assert hint in _conversion_error(_resnet_fixture(), num_classes=5)
    msg = _conversion_error(fixture_state_dict(), backbone_only=True)
    assert "torchvision 'resnet50'" in msg and "full model checkpoint" in msg
    with pytest.raises(tv.ConversionError, match="backbone_only applies to .*maskrcnn_resnet50"):
        tv.convert({}, "fcn_resnet50", backbone_only=True)


# ----------------------------------------------------------------------------- CLI


def _config_kwargs() -> dict:
    c = _meta()["config"]
    names = ("width", "stage_blocks", "fpn_channels", "representation_size", "mask_layers",
             "mask_dim_reduced")  # fmt: skip
    return {k: c[k] for k in names}


def test_cli_imports_maskrcnn_and_says_how_to_build_it(tmp_path, capsys):
    from safetensors.numpy import save_file

    path = str(tmp_path / "maskrcnn.safetensors")
    save_file(legacy_keys(fixture_state_dict()), path)  # old names, as the published file
    out = str(tmp_path / "imported")
    argv = ["--arch", ARCH, "--checkpoint", path, "--output", out,
            "--model_kwargs", json.dumps(_config_kwargs())]  # fmt: skip
    import_torchvision.main(argv)
    printed = capsys.readouterr().out
    assert "5-class model" in printed and "model.kwargs.bn_eps=0.0" in printed
    chex.assert_trees_all_equal(checkpoint.read_weights(out), fixture_variables())


def test_cli_backbone_only(tmp_path, capsys):
    path = str(tmp_path / "resnet50.npz")
    np.savez(path, **_resnet_fixture())
    out = str(tmp_path / "backbone")
    kwargs = {**_config_kwargs(), "stage_blocks": [1, 1, 1, 3]}
    argv = ["--arch", ARCH, "--backbone_only", "--checkpoint", path, "--output", out,
            "--model_kwargs", json.dumps(kwargs)]  # fmt: skip
    import_torchvision.main(argv)
    printed = capsys.readouterr().out
    assert "backbone" in printed and "init_from" in printed and "fc.weight" in printed
    restored = checkpoint.read_weights(out)
    assert set(restored["params"]["backbone"]) == {"body"}


# ----------------------------------------------------------------------------- full size


def _fixture_tool():
    """``tools/make_torchvision_fixtures.py`` as a module (it imports torch)."""
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "make_torchvision_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_torchvision_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_size_report(sd: dict, image: np.ndarray, rois: np.ndarray, ref: dict) -> dict:
    """Every comparison of the full-size model against a reference of the generator's
    ``full_size_maskrcnn_reference`` (weights, image, RoIs, torchvision's outputs)."""
    model = MaskRCNN(num_classes=91)  # bn_eps 1e-5: weights=None builds BatchNorm2d
    variables = tv.convert(sd, ARCH, module=model)
    errors = tensor_errors(head_outputs(model, variables, ref, rois), ref)
    batch = model.transform([image])
    errors["images"] = relative_error(batch["images"], ref["images"])
    (got,) = predict_images(model, variables, [image])
    return {"errors": errors, "detections": detection_report(got, ref)}


@pytest.mark.torch
@pytest.mark.slow
def test_full_size_parity():
    """Full ``maskrcnn_resnet50_fpn(weights=None)`` with fixture weights (needs torch)."""
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    tool = _fixture_tool()
    sd, image, rois, ref = tool.full_size_maskrcnn_reference()
    report = full_size_report(sd, image, rois, ref)
    for name, err in report["errors"].items():
        assert err <= RTOL, f"{name}: {err:.2e}"
    assert len(ref["det_scores"]) >= 10
    assert_detections_match(report["detections"])
