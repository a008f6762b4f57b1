"""Tests for segjax.models.maskrcnn against NumPy re-implementations of torchvision's algorithms.

The references below are written from torchvision's code (AnchorGenerator, RegionProposalNetwork
.filter_proposals, RoIHeads.postprocess_detections, GeneralizedRCNNTransform, FrozenBatchNorm2d,
F.interpolate) in plain NumPy and loops, in torchvision's NCHW layouts, so that they check the
conventions (anchor order, delta channels, level ids) as well as the numbers.
"""

import math
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from segjax import config, models
from segjax.data.image_io import DataError
from segjax.models import maskrcnn
from segjax.models.maskrcnn import anchors, backbone, heads, postprocess, rpn, transform
from tests.helpers import abstract_init, random_variables, tree_size

# --------------------------------------------------------------------------- NumPy references


def f32(x: float) -> float:
    """``x`` rounded to float32 (an emulation independent of NumPy's float32 arithmetic)."""
    return struct.unpack("f", struct.pack("f", x))[0]


def ref_cell_anchors(sizes, ratios):
    """torchvision's ``generate_anchors``, one anchor at a time."""
    cell = []
    for r in ratios:
        h_ratio = np.sqrt(np.float32(r))
        w_ratio = np.float32(1) / h_ratio
        for s in sizes:
            w, h = w_ratio * np.float32(s), h_ratio * np.float32(s)
            cell.append(np.round(np.array([-w, -h, w, h], np.float32) / np.float32(2)))
    return np.array(cell, np.float32)


def ref_anchors(image_shape, feature_shape, sizes, ratios):
    """torchvision's ``grid_anchors`` for one level, as loops (row, column, cell anchor)."""
    stride_h, stride_w = image_shape[0] // feature_shape[0], image_shape[1] // feature_shape[1]
    out = []
    for y in range(feature_shape[0]):
        for x in range(feature_shape[1]):
            shift = np.array([x * stride_w, y * stride_h] * 2, np.float32)
            out.extend(c + shift for c in ref_cell_anchors(sizes, ratios))
    return np.array(out, np.float32)


BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def ref_decode(codes, ref, weights, clip=BBOX_XFORM_CLIP):
    """torchvision's ``BoxCoder.decode_single``: codes [N, 4K] and boxes [N, 4] → [N, K, 4]."""
    ref = ref.astype(np.float32)
    w = ref[:, 2] - ref[:, 0]
    h = ref[:, 3] - ref[:, 1]
    cx, cy = ref[:, 0] + 0.5 * w, ref[:, 1] + 0.5 * h
    c = codes.reshape(len(ref), -1, 4).astype(np.float32)
    wx, wy, ww, wh = weights
    dx, dy = c[..., 0] / wx, c[..., 1] / wy
    dw, dh = np.minimum(c[..., 2] / ww, clip), np.minimum(c[..., 3] / wh, clip)
    pcx, pcy = dx * w[:, None] + cx[:, None], dy * h[:, None] + cy[:, None]
    pw, ph = np.exp(dw) * w[:, None], np.exp(dh) * h[:, None]
    return np.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], -1)


def ref_clip(boxes, h, w):
    out = boxes.copy()
    out[..., 0::2] = np.clip(out[..., 0::2], 0, w)
    out[..., 1::2] = np.clip(out[..., 1::2], 0, h)
    return out


def ref_iou(a, b):
    tl, br = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(br - tl, 0, None))
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return inter / union if union > 0 else 0.0


def ref_batched_nms(boxes, scores, groups, threshold):
    """Greedy NMS within each group; kept indices by descending score (ties: lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if all(groups[k] != groups[i] or ref_iou(boxes[k], boxes[i]) <= threshold for k in kept):
            kept.append(i)
    return np.array(kept, np.int64)


def ref_filter_proposals(objectness_nchw, deltas_nchw, image_shape, image_size, cfg):
    """torchvision's RPN inference for ONE image: head outputs ``[A, H, W]``, ``[4A, H, W]``."""
    flat_obj, flat_deltas, all_anchors, levels, tops = [], [], [], [], []
    offset = 0
    for level, (o, d) in enumerate(zip(objectness_nchw, deltas_nchw, strict=True)):
        a, h, w = o.shape
        # permute_and_flatten: view(N, -1, C, H, W).permute(0, 3, 4, 1, 2).reshape(N, -1, C)
        flat_obj.append(o.reshape(a, 1, h, w).transpose(2, 3, 0, 1).reshape(-1))
        flat_deltas.append(d.reshape(a, 4, h, w).transpose(2, 3, 0, 1).reshape(-1, 4))
        level_anchors = ref_anchors(image_shape, (h, w), cfg.anchor_sizes[level], cfg.aspect_ratios)
        all_anchors.append(level_anchors)
        levels.append(np.full(len(level_anchors), level))
        k = min(cfg.pre_nms_top_n, a * h * w)
        tops.append(np.argsort(-flat_obj[-1], kind="stable")[:k] + offset)
        offset += a * h * w
    obj, deltas = np.concatenate(flat_obj), np.concatenate(flat_deltas)
    proposals = ref_decode(deltas, np.concatenate(all_anchors), (1, 1, 1, 1))[:, 0]
    top = np.concatenate(tops)
    boxes = ref_clip(proposals[top], *image_size)
    scores = 1 / (1 + np.exp(-obj[top].astype(np.float64)))
    lvl = np.concatenate(levels)[top]
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = np.flatnonzero((wh.min(axis=1) >= cfg.min_size) & (scores >= cfg.score_thresh))
    kept = keep[ref_batched_nms(boxes[keep], scores[keep], lvl[keep], cfg.nms_thresh)]
    kept = kept[: cfg.post_nms_top_n]
    return boxes[kept], scores[kept]


def ref_postprocess(class_logits, box_regression, proposals, image_size, cfg):
    """torchvision's ``postprocess_detections`` for ONE image (its real proposals only)."""
    z = class_logits - class_logits.max(axis=1, keepdims=True)
    scores = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    boxes = ref_clip(ref_decode(box_regression, proposals, cfg.bbox_reg_weights), *image_size)
    num_classes = class_logits.shape[1]
    labels = np.broadcast_to(np.arange(num_classes), scores.shape)
    boxes, scores, labels = (
        boxes[:, 1:].reshape(-1, 4),
        scores[:, 1:].ravel(),
        labels[:, 1:].ravel(),
    )
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = np.flatnonzero((scores > cfg.score_thresh) & (wh.min(axis=1) >= cfg.min_size))
    kept = keep[ref_batched_nms(boxes[keep], scores[keep], labels[keep], cfg.nms_thresh)]
    kept = kept[: cfg.detections_per_img]
    return boxes[kept], scores[kept], labels[kept]


def ref_bilinear(image, out_h, out_w):
    """PyTorch's CPU ``upsample_bilinear2d`` (align_corners=False, output size given), per pixel."""
    in_h, in_w = image.shape[:2]

    def taps(dst, n_in, n_out):
        src = max(f32(f32(f32(n_in / n_out) * f32(dst + 0.5)) - 0.5), 0.0)
        i0 = int(src)
        return i0, i0 + (1 if i0 < n_in - 1 else 0), f32(src - i0)

    out = np.zeros((out_h, out_w, image.shape[2]), np.float64)
    for y in range(out_h):
        y0, y1, ly = taps(y, in_h, out_h)
        for x in range(out_w):
            x0, x1, lx = taps(x, in_w, out_w)
            out[y, x] = (1 - ly) * ((1 - lx) * image[y0, x0] + lx * image[y0, x1]) + ly * (
                (1 - lx) * image[y1, x0] + lx * image[y1, x1]
            )
    return out


def ref_resized_size(h, w, min_size, max_size):
    """torchvision's resize decision: a Python-float scale, ``int(side · scale)``."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return int(h * scale), int(w * scale)


# --------------------------------------------------------------------------- full-size model


@pytest.fixture(scope="module")
def full_model():
    model = models.create("maskrcnn_resnet50_fpn", num_classes=91)
    variables, output = abstract_init(model, (1, 800, 1344, 3))
    return model, variables, output


def _resnet50_counts():
    """(conv parameters, BatchNorm channels) of torchvision's ResNet-50 trunk, from its layout."""
    convs, bn = 7 * 7 * 3 * 64, 64
    in_ch = 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for j in range(blocks):
            convs += in_ch * planes + 9 * planes * planes + planes * 4 * planes
            bn += 6 * planes
            if j == 0:
                convs += in_ch * 4 * planes
                bn += 4 * planes
            in_ch = 4 * planes
    return convs, bn


def test_full_model_parameter_count_is_torchvisions(full_model):
    _, variables, _ = full_model
    params = variables["params"]
    assert tree_size(params) == 44_401_393
    body_convs, _ = _resnet50_counts()
    conv = lambda k, cin, cout: k * k * cin * cout + cout  # noqa: E731
    expected = {
        "body": body_convs,
        "fpn": sum(conv(1, c, 256) for c in (256, 512, 1024, 2048)) + 4 * conv(3, 256, 256),
        "rpn": conv(3, 256, 256) + conv(1, 256, 3) + conv(1, 256, 12),
        "box_head": conv(7, 256, 1024) + conv(1, 1024, 1024),
        "box_predictor": conv(1, 1024, 91) + conv(1, 1024, 364),
        "mask_head": 4 * conv(3, 256, 256),
        "mask_predictor": conv(2, 256, 256) + conv(1, 256, 91),
    }
    roi = params["roi_heads"]
    got = {
        "body": tree_size(params["backbone"]["body"]),
        "fpn": tree_size(params["backbone"]["fpn"]),
        "rpn": tree_size(params["rpn"]),
        **{
            k: tree_size(roi[k])
            for k in ("box_head", "box_predictor", "mask_head", "mask_predictor")
        },
    }
    assert got == expected


def test_frozen_batchnorm_lives_in_batch_stats(full_model):
    _, variables, _ = full_model
    param_leaves = {
        path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(variables["params"])
    }
    assert param_leaves == {"kernel", "bias"}  # no BatchNorm scale / statistics among params
    stats = jax.tree_util.tree_leaves_with_path(variables["batch_stats"])
    assert {p[-1].key for p, _ in stats} == {"scale", "bias", "mean", "var"}
    assert all(p[0].key == "backbone" and p[1].key == "body" for p, _ in stats)
    assert tree_size(variables["batch_stats"]) == 4 * _resnet50_counts()[1]


def test_full_model_outputs_on_a_bucket(full_model):
    _, _, out = full_model
    shapes = {k: (v.shape, v.dtype) for k, v in out.items()}
    assert shapes == {
        "boxes": ((1, 100, 4), jnp.float32),
        "scores": ((1, 100), jnp.float32),
        "labels": ((1, 100), jnp.int32),
        "masks": ((1, 100, 28, 28), jnp.float32),
        "valid": ((1, 100), jnp.bool_),
    }


@pytest.mark.parametrize(
    "trainable, frozen",
    [(3, {"conv1", "layer1"}), (5, set()), (0, {"conv1", "layer1", "layer2", "layer3", "layer4"})],
)
def test_trainable_layers_freeze_torchvisions_stages(tiny_run, trainable, frozen):
    params = tiny_run[1]["params"]
    mask = maskrcnn.trainable_mask(maskrcnn.maskrcnn_tiny(trainable_layers=trainable), params)
    for path, flag in jax.tree_util.tree_leaves_with_path(mask):
        names = [k.key for k in path]
        stage = names[2].split("_")[0] if names[:2] == ["backbone", "body"] else None
        assert flag == (stage not in frozen), names


def test_trainable_layers_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="trainable_layers"):
        abstract_init(maskrcnn.maskrcnn_tiny(trainable_layers=6), (1, 64, 64, 3))


def test_registered_in_the_model_table():
    assert {"maskrcnn_resnet50_fpn", "maskrcnn_tiny"} <= set(models.names())
    assert models.create("maskrcnn_tiny", num_classes=7).num_classes == 7


# --------------------------------------------------------------------------- anchors


def test_cell_anchors_are_torchvisions():
    # torchvision's well-known P2 cell for size 32: ratios 0.5, 1, 2.
    np.testing.assert_array_equal(
        anchors.cell_anchors((32,), (0.5, 1.0, 2.0)),
        [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]],
    )
    for sizes in ((64,), (128, 256), (512,)):
        np.testing.assert_array_equal(
            anchors.cell_anchors(sizes, (0.5, 1.0, 2.0)), ref_cell_anchors(sizes, (0.5, 1.0, 2.0))
        )


@pytest.mark.parametrize(
    "image_shape, feature_shape",
    [((800, 1344), (13, 21)), ((64, 96), (16, 24)), ((96, 64), (3, 2))],
)
def test_grid_anchors_match_the_reference(image_shape, feature_shape):
    cell = anchors.cell_anchors((64,), (0.5, 1.0, 2.0))
    got = anchors.grid_anchors(image_shape, feature_shape, cell)
    np.testing.assert_array_equal(
        got, ref_anchors(image_shape, feature_shape, (64,), (0.5, 1.0, 2.0))
    )
    if image_shape == (800, 1344):  # integer strides as torchvision: 800 // 13 = 61
        assert anchors.level_strides(image_shape, feature_shape) == (61, 64)
        np.testing.assert_array_equal(got[3 * 21], [-45, 61 - 23, 45, 61 + 23])  # (x 0, y 1)


def test_anchors_at_indices_equal_the_grid():
    image_shape = (800, 1344)
    feature_shapes = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]
    cells = [anchors.cell_anchors((s,), (0.5, 1.0, 2.0)) for s in (32, 64, 128, 256, 512)]
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 5, 300)
    indices = np.array([rng.integers(0, 3 * np.prod(feature_shapes[lv])) for lv in levels])
    got = anchors.anchors_at(jnp.asarray(indices), levels, image_shape, feature_shapes, cells)
    want = [
        anchors.grid_anchors(image_shape, feature_shapes[lv], cells[lv])[i]
        for i, lv in zip(indices, levels)
    ]
    np.testing.assert_array_equal(np.asarray(got), np.array(want))


# --------------------------------------------------------------------------- transform


def test_resized_size_is_torchvisions():
    assert transform.resized_size(480, 640, 800, 1333) == (800, 1066)  # as torchvision 0.29
    for h, w in [(480, 640), (500, 2000), (333, 500), (1000, 1000), (17, 5000), (4000, 3000)]:
        assert transform.resized_size(h, w, 800, 1333) == ref_resized_size(h, w, 800, 1333)


@pytest.mark.parametrize("shape, size", [((5, 7), (9, 11)), ((12, 9), (5, 4)), ((6, 6), (6, 13))])
def test_bilinear_resize_matches_pytorch_reference(shape, size):
    image = np.random.default_rng(1).normal(size=(*shape, 2)).astype(np.float32)
    want = ref_bilinear(image, *size)
    np.testing.assert_allclose(transform.resize_bilinear(image, size), want, rtol=1e-6, atol=1e-6)
    # jax.image.resize without antialiasing is the same interpolation.
    jax_resized = jax.image.resize(image, (*size, 2), "bilinear", antialias=False)
    np.testing.assert_allclose(np.asarray(jax_resized), want, rtol=1e-5, atol=1e-5)


def test_default_buckets_hold_every_image_and_are_few():
    t = transform.ImageTransform()
    buckets = t.bucket_shapes()
    assert buckets == ((800, 800), (800, 1088), (1088, 800), (800, 1344), (1344, 800), (1344, 1344))
    for h, w in [(480, 640), (640, 480), (100, 1000), (1000, 100), (800, 800), (333, 500), (7, 9)]:
        size = t.resized_size_of((h, w))
        assert t.bucket_for([size]) in buckets[:-1]
    assert t.bucket_for([(800, 1066), (1066, 800)]) == (1344, 1344)


def test_transform_normalises_resizes_and_pads():
    t = transform.ImageTransform(min_size=32, max_size=64)
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), rng.uniform(size=(40, 20, 3))]
    batch = t(images)
    np.testing.assert_array_equal(batch["image_sizes"], [(32, 48), (64, 32)])
    np.testing.assert_array_equal(batch["original_sizes"], [(20, 30), (40, 20)])
    assert batch["images"].shape == (2, 64, 64, 3)  # mixed orientation: the (64, 64) fallback
    mean, std = np.array(transform.IMAGENET_MEAN), np.array(transform.IMAGENET_STD)
    want = ref_bilinear((images[0] / 255.0 - mean) / std, 32, 48)
    np.testing.assert_allclose(batch["images"][0, :32, :48], want, atol=1e-5)
    assert not batch["images"][0, 32:].any() and not batch["images"][0, :, 48:].any()


def test_transform_rejects_non_rgb_images():
    with pytest.raises(DataError, match=r"image 1 has shape \(8, 8\)"):
        transform.ImageTransform()([np.zeros((8, 8, 3)), np.zeros((8, 8))])


def ref_paste(mask, box, im_h, im_w):
    """torchvision's ``paste_masks_in_image`` (padding 1) for one mask."""
    m = mask.shape[0]
    padded = np.pad(mask, 1)
    scale = (m + 2) / m
    half_w, half_h = (box[2] - box[0]) * 0.5 * scale, (box[3] - box[1]) * 0.5 * scale
    cx, cy = (box[2] + box[0]) * 0.5, (box[3] + box[1]) * 0.5
    x1, y1, x2, y2 = (int(v) for v in (cx - half_w, cy - half_h, cx + half_w, cy + half_h))
    w, h = max(x2 - x1 + 1, 1), max(y2 - y1 + 1, 1)
    resized = ref_bilinear(padded[..., None], h, w)[..., 0]
    out = np.zeros((im_h, im_w))
    x0, x_1, y0, y_1 = max(x1, 0), min(x2 + 1, im_w), max(y1, 0), min(y2 + 1, im_h)
    out[y0:y_1, x0:x_1] = resized[y0 - y1 : y_1 - y1, x0 - x1 : x_1 - x1]
    return out


def test_paste_masks_on_a_rounded_canvas_is_torchvisions():
    rng = np.random.default_rng(3)
    masks = rng.uniform(size=(3, 28, 28)).astype(np.float32)
    boxes = np.array([[3.2, 5.1, 40.7, 30.2], [-4, -3, 20, 70], [50, 2, 90, 19.5]], np.float32)
    got = transform.paste_masks(masks, boxes, (61, 83))
    for mask, box, pasted in zip(masks, boxes, got, strict=True):
        np.testing.assert_allclose(pasted, ref_paste(mask, box, 61, 83), atol=1e-5)


# --------------------------------------------------------------------------- layers


def test_frozen_batchnorm_is_the_affine_map_of_its_buffers():
    x = np.random.default_rng(4).normal(size=(2, 3, 3, 5)).astype(np.float32)
    stats = {
        k: np.random.default_rng(i).uniform(0.5, 1.5, 5).astype(np.float32)
        for i, k in enumerate(("scale", "bias", "mean", "var"))
    }
    y = backbone.FrozenBatchNorm(eps=0.0).apply({"batch_stats": stats}, x)
    scale = stats["scale"] / np.sqrt(stats["var"])
    np.testing.assert_allclose(
        y, x * scale + (stats["bias"] - stats["mean"] * scale), rtol=1e-6, atol=1e-6
    )


def test_nearest_resize_is_pytorchs():
    x = jnp.arange(2 * 5 * 7, dtype=jnp.float32).reshape(1, 5, 7, 2)
    got = backbone.resize_nearest(x, (10, 9))
    rows = [min(int(f32(i * f32(5 / 10))), 4) for i in range(10)]
    cols = [min(int(f32(j * f32(7 / 9))), 6) for j in range(9)]
    np.testing.assert_array_equal(got, np.asarray(x)[:, rows][:, :, cols])


def test_mask_predictor_transposed_conv_is_pytorchs():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    w_torch = rng.normal(size=(6, 5, 2, 2)).astype(np.float32)  # ConvTranspose2d [in, out, kh, kw]
    bias = rng.normal(size=5).astype(np.float32)
    kernel = w_torch.transpose(2, 3, 1, 0)  # the converter's OIHW → HWIO transpose
    y = heads.ConvTranspose2x2(5).apply({"params": {"kernel": kernel, "bias": bias}}, x)
    want = np.zeros((2, 6, 8, 5)) + bias
    for i in range(3):
        for j in range(4):
            for a in range(2):
                for b in range(2):
                    want[:, 2 * i + a, 2 * j + b] += x[:, i, j] @ w_torch[:, :, a, b]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_fc6_is_torchvisions_linear_on_the_chw_flattened_roi():
    rng = np.random.default_rng(6)
    rois = rng.normal(size=(2, 3, 7, 7, 4)).astype(np.float32)
    w6 = rng.normal(size=(8, 4 * 49)).astype(np.float32) * 0.1
    w7 = rng.normal(size=(8, 8)).astype(np.float32) * 0.1
    b6, b7 = rng.normal(size=8).astype(np.float32), rng.normal(size=8).astype(np.float32)
    params = {
        "fc6": {"kernel": w6.reshape(8, 4, 7, 7).transpose(2, 3, 1, 0), "bias": b6},
        "fc7": {"kernel": w7.T, "bias": b7},
    }
    y = heads.TwoMLPHead(8).apply({"params": params}, rois)
    flat = rois.reshape(6, 7, 7, 4).transpose(0, 3, 1, 2).reshape(6, -1)  # torch's flatten(1)
    want = np.maximum(np.maximum(flat @ w6.T + b6, 0) @ w7.T + b7, 0).reshape(2, 3, 8)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- selection logic


def _random_head_outputs(rng, feature_shapes, num_anchors=3):
    obj = [rng.normal(size=(*s, num_anchors)).astype(np.float32) * 2 for s in feature_shapes]
    deltas = [
        rng.normal(size=(*s, 4 * num_anchors)).astype(np.float32) * 0.3 for s in feature_shapes
    ]
    return obj, deltas


def test_proposal_selection_matches_torchvisions_filter_proposals():
    rng = np.random.default_rng(7)
    image_shape, image_size = (64, 96), (60, 85)
    feature_shapes = [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    cfg = rpn.ProposalConfig(pre_nms_top_n=40, post_nms_top_n=150, nms_thresh=0.7)
    obj, deltas = _random_head_outputs(rng, feature_shapes)
    select = jax.jit(lambda o, d, s: rpn.select_proposals(o, d, s, image_shape, cfg))
    boxes, scores, valid = jax.device_get(select(obj, deltas, jnp.array(image_size)))
    to_nchw = lambda a: a.transpose(2, 0, 1)  # noqa: E731
    want_boxes, want_scores = ref_filter_proposals(
        [to_nchw(o) for o in obj], [to_nchw(d) for d in deltas], image_shape, image_size, cfg
    )
    n = len(want_scores)
    assert 0 < n < 150 and valid.sum() == n and valid[:n].all()  # NMS removed some
    np.testing.assert_allclose(boxes[:n], want_boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(scores[:n], want_scores, rtol=1e-5)
    assert not boxes[n:].any()


def test_detections_match_torchvisions_postprocess():
    rng = np.random.default_rng(8)
    num_props, num_classes, image_size = 30, 6, (50, 70)
    xy = rng.uniform(0, 50, (num_props, 2))
    proposals = np.concatenate([xy, xy + rng.uniform(2, 30, (num_props, 2))], 1).astype(np.float32)
    logits = rng.normal(size=(num_props, num_classes)).astype(np.float32) * 2
    regression = rng.normal(size=(num_props, 4 * num_classes)).astype(np.float32)
    valid = np.arange(num_props) < 25  # padded proposals must not produce detections
    cfg = postprocess.DetectionConfig(detections_per_img=20)
    detect = jax.jit(lambda *a: postprocess.detect(*a, cfg))
    got = jax.device_get(detect(logits, regression, proposals, valid, jnp.array(image_size)))
    want_boxes, want_scores, want_labels = ref_postprocess(
        logits[:25], regression[:25], proposals[:25], image_size, cfg
    )
    n = len(want_scores)
    assert n == 20 and got["valid"].all()  # more candidates than detections: truncated
    np.testing.assert_allclose(got["boxes"][:n], want_boxes, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got["scores"][:n], want_scores, rtol=1e-5)
    np.testing.assert_array_equal(got["labels"][:n], want_labels)


# --------------------------------------------------------------------------- tiny model end to end


def _scaled(variables, factors):
    """``variables`` with the leaves under the given path fragments scaled (livelier outputs)."""

    def scale(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return leaf * next((f for key, f in factors.items() if key in name), 1.0)

    return jax.tree_util.tree_map_with_path(scale, variables)


@pytest.fixture(scope="module")
def tiny_run():
    """The tiny model, variables, a batch of 8 mixed-size images and its jitted detections."""
    model = maskrcnn.maskrcnn_tiny()
    rng = np.random.default_rng(9)
    sizes = [(96, 128), (70, 100), (64, 96), (50, 120), (80, 100), (64, 64), (40, 60), (90, 130)]
    batch = model.transform([rng.uniform(size=(*s, 3)).astype(np.float32) for s in sizes])
    variables = random_variables(model, batch["images"].shape)
    variables = _scaled(
        variables,
        {
            "rpn/head/bbox_pred": 0.1,
            "rpn/head/cls_logits": 0.05,
            "box_predictor/bbox_pred": 0.1,
            "box_predictor/cls_score": 0.2,
        },
    )
    # conv_impl="xla": this test is about one static-shape jit; the matmul forms of "auto" on
    # CPU are segjax.xla_cpu's business (and tested there) and only add compile time here.
    xla_convs = config.base_config().runtime
    xla_convs.conv_impl = "xla"
    fn = maskrcnn.inference_fn(model, xla_convs)
    args = (batch["images"], batch["image_sizes"], batch["original_sizes"])
    out = jax.device_get(fn(variables, *args))
    return model, variables, batch, fn, out


def test_tiny_jitted_inference_equals_its_pieces_with_numpy_selection(tiny_run):
    """The one-jit forward pass equals the network pieces run one at a time with the NumPy
    references of torchvision's proposal selection and post-processing (un-jitted, in
    torchvision's NCHW layouts) in between. (Running the network pieces eagerly as well costs
    ~20 s of per-op compilation on 2 CPU cores and checks nothing more.)"""
    model, variables, batch, _, out = tiny_run
    images, sizes = jnp.asarray(batch["images"]), batch["image_sizes"]
    image_shape = images.shape[1:3]

    def network(variables, images):
        features = model.apply(variables, images, method=model.features)
        rpn_out = model.apply(variables, features, method=lambda m, f: m.rpn.head(f))
        return features, rpn_out

    features, (obj, deltas) = jax.jit(network)(variables, images)
    obj, deltas = jax.device_get((obj, deltas))
    roi_heads = jax.jit(
        lambda v, f, b, which: model.apply(
            v, f, b, method=lambda m, f, b: getattr(m.roi_heads, which)(f, b, image_shape)
        ),
        static_argnums=3,
    )
    num_props = model.rpn_test.post_nms_top_n
    props = np.zeros((8, num_props, 4), np.float32)
    kept = []
    for b in range(8):
        p, _ = ref_filter_proposals(
            [o[b].transpose(2, 0, 1) for o in obj],
            [d[b].transpose(2, 0, 1) for d in deltas],
            image_shape,
            sizes[b],
            model.rpn_test,
        )
        props[b, : len(p)] = p
        kept.append(len(p))
    logits, regression = jax.device_get(roi_heads(variables, features, props, "box_outputs"))
    for b in range(8):
        k = kept[b]
        boxes, scores, lab = ref_postprocess(
            logits[b, :k], regression[b, :k], props[b, :k], sizes[b], model.detection
        )
        n = len(scores)
        assert out["valid"][b].sum() == n and n > 0
        ratio = batch["original_sizes"][b] / sizes[b]
        np.testing.assert_allclose(
            out["boxes"][b, :n], boxes * np.tile(ratio[::-1], 2), rtol=1e-4, atol=1e-3
        )
        np.testing.assert_allclose(out["scores"][b, :n], scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(out["labels"][b, :n], lab)
    # The mask branch on the model's own detections (back in resized pixels): RoIAlign moves
    # with the boxes, so the reference's ~1e-5 box differences would blur the comparison.
    ratios = np.tile((batch["original_sizes"] / sizes)[:, None, ::-1], 2)
    own_boxes = jnp.asarray(out["boxes"] / ratios, jnp.float32)
    mask_logits = jax.device_get(roi_heads(variables, features, own_boxes, "mask_logits"))
    own = np.take_along_axis(mask_logits, out["labels"][..., None, None, None], -1)[..., 0]
    probs = np.where(out["valid"][..., None, None], 1 / (1 + np.exp(-own)), 0)
    np.testing.assert_allclose(out["masks"], probs, rtol=1e-4, atol=1e-5)


def test_tiny_inference_sharded_over_8_devices_equals_one_device(tiny_run):
    _, variables, batch, fn, out = tiny_run
    assert jax.device_count() == 8
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharded = jax.device_put(
        (batch["images"], batch["image_sizes"], batch["original_sizes"]),
        NamedSharding(mesh, P("data")),
    )
    result = fn(jax.device_put(variables, NamedSharding(mesh, P())), *sharded)
    assert result["boxes"].sharding.spec[0] == "data"
    result = jax.device_get(result)
    for key in ("valid", "labels"):
        np.testing.assert_array_equal(result[key], out[key])
    # Batch 1 and batch 8 convolutions round differently (~1e-6), which this random network
    # amplifies to ~1e-4 px in the boxes, and RoIAlign on those boxes to ~1e-3 in the masks.
    for key, atol in (("boxes", 1e-3), ("scores", 1e-4), ("masks", 2e-3)):
        np.testing.assert_allclose(result[key], out[key], rtol=1e-4, atol=atol)
