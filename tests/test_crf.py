"""Tests for segjax/evaluation/crf.py: brute-force agreement, energy descent, edge sharpening,
jit/batch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from segjax.evaluation import crf


def _test_image(height, width, seed=0):
    """Smooth regions with colour edges plus noise, uint8 [1, H, W, 3]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.float32)
    image[..., 0] = np.where(xx + 0.5 * yy > 0.6 * width, 200, 40)
    disc = (yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (height / 4) ** 2
    image[..., 1] = np.where(disc, 180, 60)
    image[..., 2] = 128 + 60 * np.sin(xx / 7.0)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255)
    return image.astype(np.uint8)[None]


def _random_q(shape, seed=1):
    rng = np.random.default_rng(seed)
    return jax.nn.softmax(jnp.asarray(rng.normal(0, 2, shape), jnp.float32), axis=-1)


def _numpy_kernels(image, params):
    """Independent float64 brute force of both kernels, [N, N] each, self included."""
    height, width, _ = image.shape
    yy, xx = np.mgrid[0:height, 0:width]
    pos = np.stack([yy.ravel(), xx.ravel()], -1).astype(np.float64)
    rgb = image.reshape(-1, 3).astype(np.float64)
    d_pos = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    d_rgb = ((rgb[:, None] - rgb[None]) ** 2).sum(-1)
    bilateral = np.exp(
        -d_pos / (2 * params.bilateral_sxy**2) - d_rgb / (2 * params.bilateral_srgb**2)
    )
    gaussian = np.exp(-d_pos / (2 * params.gaussian_sxy**2))
    return bilateral, gaussian


def _numpy_pairwise_matrix(image, params):
    """sum_m w_m kn_m with the self-term removed, float64 [N, N]."""
    total = 0.0
    for kernel, weight in zip(
        _numpy_kernels(image, params), [params.bilateral_weight, params.gaussian_weight]
    ):
        if params.normalization == "symmetric":
            d = kernel.sum(1) ** -0.5
            kernel = d[:, None] * kernel * d[None]
        total = total + weight * (kernel - np.diag(np.diag(kernel)))
    return total


def _rel_l2(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.mark.parametrize("normalization", ["symmetric", "none"])
def test_exact_messages_match_numpy_brute_force(normalization):
    image = _test_image(6, 7)
    q = _random_q((1, 6, 7, 4))
    params = crf.CRFParams(
        filter="exact", normalization=normalization, bilateral_sxy=4.0, gaussian_sxy=1.5
    )
    got = crf.pairwise_messages(q, image, params)
    want = _numpy_pairwise_matrix(image[0], params) @ np.asarray(q[0], np.float64).reshape(-1, 4)
    np.testing.assert_allclose(np.asarray(got[0]).reshape(-1, 4), want, rtol=2e-5, atol=2e-5)


def test_energy_matches_numpy_definition():
    image = _test_image(5, 6)
    params = crf.CRFParams(filter="exact", bilateral_sxy=4.0)
    rng = np.random.default_rng(3)
    unary = crf.unary_from_logits(jnp.asarray(rng.normal(size=(1, 5, 6, 3)), jnp.float32))
    q = _random_q((1, 5, 6, 3))
    got = crf.mean_field_energy(q, unary, image, params)
    q64 = np.asarray(q[0], np.float64).reshape(-1, 3)
    mu = 1.0 - np.eye(3)
    pair = _numpy_pairwise_matrix(image[0], params)
    want = (
        (q64 * np.asarray(unary[0], np.float64).reshape(-1, 3)).sum()
        + 0.5 * np.einsum("ij,ik,kl,jl->", pair, q64, mu, q64)
        + (q64 * np.log(q64)).sum()
    )
    np.testing.assert_allclose(float(got[0]), want, rtol=1e-5)


def test_gaussian_filter_matches_brute_force():
    # No bilateral term: the grid path is then the exact separable filter (truncated at 4 sigma).
    image = _test_image(20, 23)
    q = _random_q((1, 20, 23, 3))
    kw = dict(bilateral_weight=0.0, gaussian_sxy=2.5, normalization="none")
    exact = crf.pairwise_messages(q, image, crf.CRFParams(filter="exact", **kw))
    fast = crf.pairwise_messages(q, image, crf.CRFParams(filter="grid", **kw))
    np.testing.assert_allclose(np.asarray(fast), np.asarray(exact), rtol=1e-4, atol=1e-4)


# Stated accuracy of the bilateral grid against brute force (40x40 image, random Q, bilateral
# kernel only): relative L2 error of the messages <= 4.5 % and max error <= 12 % of the largest
# message with the defaults (1 cell per std, symmetric normalisation); <= 1.2 % / 4 % with 2 cells
# per std. Measured: 2.9-3.4 % / 8-10.6 % and 0.7 % / 1.8-2.2 % (also for sxy=5, srgb=20).
# Unnormalised kernels (next test): 6.6-11 % / 19-25 % at 1 cell per std, 1.4-1.8 % / 4.6 % at 2.
@pytest.mark.parametrize("sxy,srgb", [(80.0, 13.0), (10.0, 13.0)])
def test_grid_messages_match_brute_force(sxy, srgb):
    image = _test_image(40, 40)
    q = _random_q((1, 40, 40, 5))
    base = dict(bilateral_sxy=sxy, bilateral_srgb=srgb, gaussian_weight=0.0)
    exact = crf.pairwise_messages(q, image, crf.CRFParams(filter="exact", **base))
    scale = float(jnp.max(jnp.abs(exact)))
    settings = [(1.0, 0.045, 0.12), (2.0, 0.012, 0.04)] if sxy == 80 else [(1.0, 0.045, 0.12)]
    for samples, rel_tol, max_tol in settings:
        params = crf.CRFParams(
            filter="grid", grid_spatial_samples=samples, grid_range_samples=samples, **base
        )
        approx = crf.pairwise_messages(q, image, params)
        assert _rel_l2(approx, exact) < rel_tol, (samples, _rel_l2(approx, exact))
        assert float(jnp.max(jnp.abs(approx - exact))) / scale < max_tol


def test_grid_unnormalised_kernel_has_the_right_scale():
    # normalization="none" relies on the peak calibration of the grid (measured: 6.6 %).
    image = _test_image(40, 40)
    q = _random_q((1, 40, 40, 3))
    base = dict(bilateral_sxy=10.0, gaussian_weight=0.0, normalization="none")
    exact = crf.pairwise_messages(q, image, crf.CRFParams(filter="exact", **base))
    approx = crf.pairwise_messages(q, image, crf.CRFParams(filter="grid", **base))
    assert _rel_l2(approx, exact) < 0.1
    ratio = float(jnp.sum(approx) / jnp.sum(exact))
    assert 0.95 < ratio < 1.05, ratio


def _energies(unary, image, **kw):
    _, energies = crf.mean_field(unary, image, crf.CRFParams(**kw), return_energies=True)
    return np.asarray(energies[0], np.float64)


def _assert_non_increasing(energies):
    # float32 rounding of a sum over all pixels: allow 1e-6 relative.
    slack = 1e-6 * np.abs(energies).max()
    assert np.all(np.diff(energies) <= slack), np.diff(energies)
    assert energies[-1] < energies[0]


@pytest.mark.parametrize("filt", ["exact", "grid"])
def test_mean_field_lowers_energy_every_iteration(filt):
    # Guaranteed with convergent=True (module docstring: PSD kernels, Potts, step * c_i <= 1),
    # for the exact kernel and for the grid's own PSD kernel. The noisy image has pixels with
    # c_i > 1 (so the per-pixel step is active there) and c_i < 1 elsewhere.
    image = _test_image(24, 24)
    rng = np.random.default_rng(0)
    unary = crf.unary_from_logits(jnp.asarray(rng.normal(0, 1.5, (1, 24, 24, 4)), jnp.float32))
    bound = np.asarray(crf.step_bound(image, crf.CRFParams(filter=filt, bilateral_sxy=10.0), 4))
    assert bound.max() > 1.0 > bound.min()
    energies = _energies(unary, image, filter=filt, bilateral_sxy=10.0, convergent=True)
    _assert_non_increasing(energies)
    assert energies[-1] < energies[0] - 0.02 * abs(energies[0])


def test_convergent_step_fixes_oscillating_parallel_update():
    # Strong unnormalised attraction on a checkerboard unary: every pixel's neighbours prefer
    # the other label, so the plain parallel update flips all pixels together and the energy
    # goes up; the per-pixel step min(1, 1 / c_i) provably prevents that.
    yy, xx = np.mgrid[0:8, 0:8]
    checker = ((yy + xx) % 2).astype(np.float32)
    unary = crf.unary_from_logits(jnp.asarray(np.stack([checker, 1 - checker], -1)[None]))
    image = np.full((1, 8, 8, 3), 100, np.uint8)
    kw = dict(
        filter="exact",
        normalization="none",
        bilateral_weight=0.0,
        gaussian_sxy=1.0,
        gaussian_weight=5.0,
        iterations=6,
    )
    plain = _energies(unary, image, **kw)
    assert np.any(np.diff(plain) > 1.0), plain
    _assert_non_increasing(_energies(unary, image, convergent=True, **kw))


def test_convergent_step_on_grid_filter():
    image = _test_image(24, 24)
    rng = np.random.default_rng(1)
    unary = crf.unary_from_logits(jnp.asarray(rng.normal(0, 1.5, (1, 24, 24, 3)), jnp.float32))
    energies = _energies(
        unary, image, normalization="none", bilateral_sxy=10.0, convergent=True, iterations=5
    )
    _assert_non_increasing(energies)


def test_sharpens_blurred_scores_along_an_image_edge():
    # Two colour regions split at column 16; the network's score map is a smooth ramp whose
    # decision boundary sits 4 px too far right. The CRF should snap it to the colour edge.
    height, width, edge = 32, 32, 16
    rng = np.random.default_rng(0)
    image = np.zeros((1, height, width, 3), np.float32)
    image[..., :edge, :] = [60, 90, 40]
    image[..., edge:, :] = [190, 170, 200]
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    truth = np.broadcast_to(np.arange(width) >= edge, (height, width)).astype(np.int32)
    ramp = (np.arange(width, dtype=np.float32) - (edge + 4)) / 4.0
    margin = np.broadcast_to(ramp, (height, width)) + rng.normal(0, 0.3, (height, width))
    logits = jnp.asarray(np.stack([-margin / 2, margin / 2], -1)[None], jnp.float32)

    before = float(np.mean(np.argmax(np.asarray(logits[0]), -1) == truth))
    refined = crf.dense_crf(logits, image)
    after = float(np.mean(np.argmax(np.asarray(refined[0]), -1) == truth))
    assert before < 0.9, before
    assert after > 0.98, (before, after)


class DenseCrfVariantsTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_batch(self):
        images = np.concatenate([_test_image(12, 10, seed=0), _test_image(12, 10, seed=1)])
        rng = np.random.default_rng(2)
        logits = jnp.asarray(rng.normal(0, 1, (2, 12, 10, 3)), jnp.float32)
        params = crf.CRFParams(iterations=3, bilateral_sxy=8.0)

        run = self.variant(lambda x, im: crf.dense_crf(x, im, params))
        batched = run(logits, jnp.asarray(images))
        chex.assert_shape(batched, (2, 12, 10, 3))
        chex.assert_tree_all_finite(batched)
        chex.assert_trees_all_close(jnp.sum(batched, -1), jnp.ones((2, 12, 10)), atol=1e-5)
        # Each batch element is refined independently: changing element 1 leaves element 0
        # unchanged, and element 1 then changes (same shapes, so no second compilation).
        changed = run(logits.at[1].set(-logits[1]), jnp.asarray(images[[0, 0]]))
        chex.assert_trees_all_close(changed[0], batched[0], atol=1e-6)
        assert float(jnp.max(jnp.abs(changed[1] - batched[1]))) > 1e-2
        # The CRF changes the unary-only marginals.
        assert float(jnp.max(jnp.abs(batched - jax.nn.softmax(logits)))) > 1e-3


def test_general_compatibility_changes_result_and_is_checked():
    image = _test_image(8, 8)
    logits = jnp.asarray(np.random.default_rng(5).normal(0, 1, (1, 8, 8, 3)), jnp.float32)
    weak_pair = ((0.0, 0.2, 1.0), (0.2, 0.0, 1.0), (1.0, 1.0, 0.0))
    potts = crf.dense_crf(logits, image, iterations=3, filter="exact")
    general = crf.dense_crf(logits, image, iterations=3, filter="exact", compatibility=weak_pair)
    assert float(jnp.max(jnp.abs(potts - general))) > 1e-4
    repulsive = ((0.0, -1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="negative semi-definite"):
        crf.dense_crf(logits, image, compatibility=repulsive, convergent=True)
    with pytest.raises(ValueError, match="3x3"):
        crf.dense_crf(logits[..., :2], image, compatibility=weak_pair)


def test_bad_inputs_raise_clear_errors():
    image = _test_image(8, 8)
    logits = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(ValueError, match="differ in B, H, W"):
        crf.dense_crf(logits, image[:, :7])
    with pytest.raises(ValueError, match=r"images \[B, H, W, 3\]"):
        crf.dense_crf(logits, image[..., :2])
    with pytest.raises(ValueError, match="bilateral_srgb"):
        crf.CRFParams(bilateral_srgb=0.0)
    with pytest.raises(ValueError, match="filter"):
        crf.CRFParams(filter="lattice")
    with pytest.raises(ValueError, match="exceeds"):
        crf.dense_crf(jnp.zeros((1, 80, 80, 2)), np.zeros((1, 80, 80, 3), np.uint8), filter="exact")


def test_grid_operator_is_symmetric_psd_with_the_stated_diagonal():
    # The descent guarantee for filter="grid" rests on S^T B S being symmetric PSD, and the
    # self-term removal on _grid_diagonal being its exact diagonal.
    image = crf._images_to_float(jnp.asarray(_test_image(8, 9)))[0]
    params = crf.CRFParams(bilateral_sxy=3.0, bilateral_srgb=20.0)
    grid = crf._make_grid(image, params)
    n = 8 * 9
    matrix = jax.jit(lambda q: crf._grid_filter(q, grid))(jnp.eye(n, dtype=jnp.float32))
    matrix = np.asarray(matrix, np.float64)
    np.testing.assert_allclose(matrix, matrix.T, rtol=1e-5, atol=1e-6)
    eig = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
    assert eig.min() > -1e-5 * eig.max(), eig.min()
    np.testing.assert_allclose(np.diag(matrix), np.asarray(crf._grid_diagonal(grid)), rtol=1e-5)
