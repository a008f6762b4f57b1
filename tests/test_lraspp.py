"""Tests for segjax.models.lraspp (torchvision's LR-ASPP on MobileNetV3-Large)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import models
from segjax.models import lraspp
from segjax.models.backbones import mobilenet
from tests.helpers import abstract_init, abstract_variables, random_variables, tree_size


def test_param_count_matches_torchvision():
    model = models.create("lraspp_mobilenet_v3_large", num_classes=21)
    params = abstract_variables(model, (1, 64, 64, 3))["params"]
    assert tree_size(params) == 3_221_538
    head = params["classifier"]
    assert set(head) == {"cbr", "scale", "low_classifier", "high_classifier"}
    assert set(head["scale"]) == {"kernel"}  # torchvision: Conv2d(960, 128, 1, bias=False)
    chex.assert_shape(head["low_classifier"]["kernel"], (1, 1, 40, 21))
    chex.assert_shape(head["high_classifier"]["kernel"], (1, 1, 128, 21))


def test_head_combines_low_and_gated_high_features():
    # Reference computation of torchvision's LRASPPHead.forward from the head's own parameters.
    head = lraspp.LRASPPHead(num_classes=3, inter_channels=4)
    low = jax.random.normal(jax.random.key(0), (1, 9, 7, 5))
    high = jax.random.normal(jax.random.key(1), (1, 5, 4, 6))
    v = random_variables(head, low, high, train=False)
    got = jax.jit(functools.partial(head.apply, train=False))(v, low, high)

    p, s = v["params"], v["batch_stats"]
    x = np.einsum("bhwc,cd->bhwd", high, p["cbr"]["conv"]["kernel"][0, 0])
    x = (x - s["cbr"]["bn"]["mean"]) / np.sqrt(s["cbr"]["bn"]["var"] + 1e-5)
    x = np.maximum(x * p["cbr"]["bn"]["scale"] + p["cbr"]["bn"]["bias"], 0)
    gate = 1 / (1 + np.exp(-np.einsum("bc,cd->bd", high.mean((1, 2)), p["scale"]["kernel"][0, 0])))
    x = jax.image.resize(x * gate[:, None, None], (1, 9, 7, 4), "bilinear", antialias=False)

    def conv1x1(t, q):
        return np.einsum("bhwc,cd->bhwd", t, q["kernel"][0, 0]) + q["bias"]

    want = conv1x1(low, p["low_classifier"]) + conv1x1(x, p["high_classifier"])
    chex.assert_trees_all_close(got, want, atol=1e-4, rtol=1e-4)


def test_rejects_output_stride_8():
    model = models.create("lraspp_mobilenet_v3_large_tiny", num_classes=3, output_stride=8)
    with pytest.raises(ValueError, match="output_stride"):
        abstract_variables(model, (1, 32, 32, 3))


@pytest.mark.parametrize("output_stride", [16, 32])
def test_output_shapes_odd_sizes(output_stride):
    model = models.create(
        "lraspp_mobilenet_v3_large_tiny", num_classes=5, output_stride=output_stride
    )
    x = jnp.zeros((2, 37, 51, 3))
    _, out = abstract_init(model, x)
    assert set(out) == {"out"}
    chex.assert_shape(out["out"], (2, 37, 51, 5))
    assert out["out"].dtype == jnp.float32


class LRASPPVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_head(self):
        head = lraspp.LRASPPHead(num_classes=3, inter_channels=4)
        low = jax.random.normal(jax.random.key(0), (2, 9, 7, 5))
        high = jax.random.normal(jax.random.key(1), (2, 5, 4, 6))
        v = random_variables(head, low, high, train=False)
        out = self.variant(functools.partial(head.apply, train=False))(v, low, high)
        chex.assert_shape(out, (2, 9, 7, 3))
        chex.assert_tree_all_finite(out)


def test_forward_train_and_backward_finite():
    # The whole tiny network (dilated MobileNetV3 + head) runs forward in training mode; the
    # backward pass goes through the head and the last (dilated, SE, hard-swish) bottleneck.
    # (A full-network backward compile costs ~15 s of CPU; test_deeplab does one on a ResNet.)
    model = models.create("lraspp_mobilenet_v3_large_tiny", num_classes=4)
    x = jax.random.normal(jax.random.key(0), (2, 35, 33, 3))
    variables = random_variables(model, x)
    out, state = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    chex.assert_shape(out["out"], (2, 35, 33, 4))
    chex.assert_tree_all_finite((out, state))
    assert not np.allclose(
        state["batch_stats"]["classifier"]["cbr"]["bn"]["mean"],
        variables["batch_stats"]["classifier"]["cbr"]["bn"]["mean"],
    )

    cfgs, _ = mobilenet.mobilenet_v3_large_config(width_mult=0.25, dilated=True)
    block = mobilenet.InvertedResidualV3(cfgs[-1])
    head = lraspp.LRASPPHead(num_classes=4, inter_channels=8)
    low = jax.random.normal(jax.random.key(1), (2, 9, 9, 16))
    high = jax.random.normal(jax.random.key(2), (2, 5, 5, cfgs[-1].in_channels))
    labels = jax.random.randint(jax.random.key(3), (2, 9, 9), 0, 4)
    vb = random_variables(block, high, train=False)
    feats = jax.eval_shape(functools.partial(block.apply, train=False), vb, high)
    vh = random_variables(head, low, jnp.zeros(feats.shape), train=False)

    def loss_fn(params):
        y, _ = block.apply({**vb, "params": params[0]}, high, train=True, mutable=["batch_stats"])
        logits, _ = head.apply(
            {**vh, "params": params[1]}, low, y, train=True, mutable=["batch_stats"]
        )
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, labels[..., None], -1).mean()

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))((vb["params"], vh["params"]))
    assert np.isfinite(float(loss))
    chex.assert_tree_all_finite(grads)
    norms = jax.tree.leaves(jax.tree.map(lambda g: jnp.abs(g).sum(), grads))
    assert all(float(n) > 0 for n in norms)
