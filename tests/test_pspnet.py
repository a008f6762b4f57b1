"""Tests for segjax.models.pspnet (pyramid pooling on a dilated ResNet)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import models
from segjax.models import pspnet
from tests.helpers import abstract_init, abstract_variables, random_variables, tree_size


def test_adaptive_pool_bins_follow_pytorch():
    # PyTorch's AdaptiveAvgPool: bin i spans [floor(i·n/b), ceil((i+1)·n/b)).
    m = pspnet.adaptive_pool_matrix(5, 3)
    spans = [tuple(np.flatnonzero(row)) for row in m]
    assert spans == [(0, 1), (1, 2, 3), (3, 4)]
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    # More bins than pixels: every bin still averages at least one pixel.
    assert (pspnet.adaptive_pool_matrix(2, 6) > 0).sum(axis=1).min() == 1


def test_adaptive_avg_pool_matches_loop():
    x = np.asarray(jax.random.normal(jax.random.key(0), (2, 7, 10, 3)))
    for bins in (1, 2, 3, 6):
        got = np.asarray(pspnet.adaptive_avg_pool(jnp.asarray(x), bins))
        want = np.zeros((2, bins, bins, 3), np.float32)
        for i in range(bins):
            h0, h1 = (i * 7) // bins, -(-(i + 1) * 7 // bins)
            for j in range(bins):
                w0, w1 = (j * 10) // bins, -(-(j + 1) * 10 // bins)
                want[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Divisible sizes reduce to block means.
    blocks = x[:, :6, :6].reshape(2, 3, 2, 3, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(pspnet.adaptive_avg_pool(jnp.asarray(x[:, :6, :6]), 3), blocks,
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def _resnet_features(depth):
    # torchvision resnet totals minus the 2048·1000 + 1000 fc layer.
    return {50: 25_557_032, 101: 44_549_160}[depth] - 2_049_000


@pytest.mark.parametrize("depth", [50, 101])
def test_param_count_from_architecture(depth):
    n = 21
    ppm = 4 * (2048 * 512 + 2 * 512)
    head = (4096 * 512 * 9 + 2 * 512) + (512 * n + n)
    aux = (1024 * 256 * 9 + 2 * 256) + (256 * n + n)
    model = models.create(f"pspnet_resnet{depth}", num_classes=n)
    params = abstract_variables(model, (1, 64, 64, 3))["params"]
    assert tree_size(params) == _resnet_features(depth) + ppm + head + aux
    assert tree_size(params["aux_classifier"]) == aux


@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_shapes_odd_sizes(output_stride):
    model = models.create("pspnet_tiny", num_classes=5, output_stride=output_stride)
    x = jnp.zeros((2, 37, 51, 3))
    _, out = abstract_init(model, x)
    chex.assert_shape([out["out"], out["aux"]], (2, 37, 51, 5))


class PyramidPoolingVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_ppm(self):
        ppm = pspnet.PyramidPooling(bins=(1, 2, 3, 6))
        x = jax.random.normal(jax.random.key(0), (2, 5, 7, 8))
        v = random_variables(ppm, x, train=False)
        out = self.variant(functools.partial(ppm.apply, train=False))(v, x)
        chex.assert_shape(out, (2, 5, 7, 8 + 4 * 2))
        chex.assert_trees_all_close(out[..., :8], x)  # the input is passed through
        # The 1×1 bin is constant over space.
        chex.assert_trees_all_close(
            out[..., 8:10], jnp.broadcast_to(out[:, :1, :1, 8:10], out[..., 8:10].shape)
        )


def test_forward_and_backward_finite():
    # Full tiny PSPNet forward; backward (training mode) through the pyramid pooling module.
    # (test_deeplab compiles one full-network training backward on the same tiny ResNet.)
    model = models.create("pspnet_tiny", num_classes=4)
    x = jax.random.normal(jax.random.key(0), (2, 33, 31, 3))
    variables = random_variables(model, x)
    out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
    chex.assert_shape([out["out"], out["aux"]], (2, 33, 31, 4))
    chex.assert_tree_all_finite(out)

    ppm = pspnet.PyramidPooling(bins=(1, 2, 3, 6))
    feats = jax.random.normal(jax.random.key(2), (2, 5, 4, 8))
    labels = jax.random.randint(jax.random.key(3), (2, 5, 4), 0, 4)
    v = random_variables(ppm, feats, train=False)
    mix = jax.random.normal(jax.random.key(4), (8 + 4 * 2, 4))  # every branch reaches the loss

    def loss_fn(params, feats):
        y, _ = ppm.apply({**v, "params": params}, feats, train=True, mutable=["batch_stats"])
        logp = jax.nn.log_softmax(y @ mix)
        return -jnp.take_along_axis(logp, labels[..., None], -1).mean()

    loss, grads = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1)))(v["params"], feats)
    assert np.isfinite(float(loss))
    chex.assert_tree_all_finite(grads)
    norms = jax.tree.leaves(jax.tree.map(lambda g: jnp.abs(g).sum(), grads))
    assert all(float(n) > 0 for n in norms)
