import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from segjax import losses


class CrossEntropyTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_reference_and_ignores_255(self):
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(2, 5, 6, 4)).astype(np.float32)
        labels = rng.integers(0, 4, (2, 5, 6))
        labels[0, :2] = 255
        loss, n = self.variant(losses.cross_entropy)(logits, labels)
        logp = jax.nn.log_softmax(logits)
        valid = labels != 255
        ref = -np.take_along_axis(np.asarray(logp), np.where(valid, labels, 0)[..., None], -1)[
            ..., 0
        ]
        np.testing.assert_allclose(loss, ref[valid].mean(), rtol=1e-5)
        assert int(n) == valid.sum()

    def test_nonfinite_logits_on_ignored_pixels_do_not_leak(self):
        logits = jnp.zeros((1, 2, 2, 3)).at[0, 0, 0].set(jnp.nan)
        labels = jnp.array([[[255, 1], [2, 0]]])
        loss, _ = losses.cross_entropy(logits, labels)
        grads = jax.grad(lambda x: losses.cross_entropy(x, labels)[0])(logits)
        chex.assert_tree_all_finite((loss, grads[0, 1:], grads[0, 0, 1]))
        np.testing.assert_allclose(loss, np.log(3.0), rtol=1e-6)

    def test_all_ignored_gives_zero_not_nan(self):
        loss, n = losses.cross_entropy(jnp.zeros((1, 3, 3, 2)), jnp.full((1, 3, 3), 255))
        assert float(loss) == 0.0 and int(n) == 0

    def test_pixel_and_class_weights(self):
        logits = jnp.array([[[[2.0, 0.0], [0.0, 2.0]]]])  # [1, 1, 2, 2]
        labels = jnp.array([[[0, 0]]])
        nll = -jax.nn.log_softmax(logits)[0, 0, :, 0]
        w = jnp.array([[[1.0, 3.0]]])
        loss, _ = losses.cross_entropy(logits, labels, weights=w)
        np.testing.assert_allclose(loss, (nll[0] + 3 * nll[1]) / 4, rtol=1e-6)
        loss_cw, _ = losses.cross_entropy(logits, labels, class_weights=jnp.array([2.0, 1.0]))
        np.testing.assert_allclose(loss_cw, nll.mean(), rtol=1e-6)


# ---- U-Net border weight map: the cropped distance transforms against the full-image ones ----

W0 = 10.0


def _exact_border_term(instances, background, w0, sigma):
    """``w0 · exp(−(d1 + d2)² / (2σ²))`` from one full-image distance transform per instance."""
    ids = [k for k in np.unique(instances) if k != background]
    distances = np.sort([ndimage.distance_transform_edt(instances != k) for k in ids], axis=0)
    return w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2.0 * sigma**2))


def _border_term(instances, background, sigma):
    """The border term alone, through the public function: zero class weights, every pixel."""
    return losses.unet_weight_map(
        instances,
        w0=W0,
        sigma=sigma,
        class_weights=[0.0, 0.0],
        background=background,
        border_on_background_only=False,
    )


def _touching_discs(seed, shape, count, radius_range):
    """Random overlapping discs painted in turn (later ones cut earlier ones, so they touch),
    with distinct sparse ids up to 65535 as annotation tools leave them."""
    rng = np.random.default_rng(seed)
    rows, cols = np.indices(shape)
    instances = np.zeros(shape, np.uint16)
    ids = rng.choice(np.arange(1, 65536), count, replace=False)
    ids[0] = 65535
    for k in ids:
        (y, x), r = rng.uniform((0, 0), shape), rng.uniform(*radius_range)
        instances[(rows - y) ** 2 + (cols - x) ** 2 <= r**2] = k
    return instances


@pytest.mark.parametrize("sigma", [2.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_border_term_matches_full_image_distance_transforms(sigma, seed):
    # Images several margins (≈ 5.3σ) wide, so most instances' grown boxes are real crops.
    shape = (90, 130) if sigma == 2.0 else (150, 170)
    instances = _touching_discs(seed, shape, count=45, radius_range=(2.0, 7.0))
    assert np.unique(instances).size > 30  # crowded, even after discs covered others
    exact = _exact_border_term(instances, 0, W0, sigma)
    fast = _border_term(instances, 0, sigma)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-6 * W0)
    # Instances are only ever dropped where far away: never above the exact map (rounding to
    # float32 keeps the order).
    assert np.all(fast <= exact.astype(np.float32))
    assert exact.min() < 1e-3 * W0 < 0.5 * W0 < exact.max()  # both regimes present


def test_border_term_with_instances_on_the_image_border():
    instances = np.full((40, 70), 65535, np.uint16)  # background id above every instance id
    instances[:, :3] = 9  # a strip along the whole left edge
    instances[:5, 20:32] = 40000  # touching the top edge
    instances[35:, 60:] = 3  # the bottom-right corner
    instances[18:22, 66:] = 12  # the right edge
    instances[15:25, 4:12] = 7  # next to the left strip, one pixel away
    exact = _exact_border_term(instances, 65535, W0, 2.0)
    fast = _border_term(instances, 65535, 2.0)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-6 * W0)
    assert fast[20, 3] > 0.5 * W0  # the one-pixel gap next to the left strip


def test_weight_map_with_no_or_one_instance_is_the_class_weight_only():
    empty = np.zeros((5, 7), np.int32)
    np.testing.assert_array_equal(losses.unet_weight_map(empty), np.ones((5, 7)))
    one = np.zeros((5, 7), np.int32)
    one[1:3, 2:6] = 40000  # 8 foreground, 27 background pixels: w_c = N / (2 N_c)
    w = losses.unet_weight_map(one, w0=W0, sigma=2.0, border_on_background_only=False)
    np.testing.assert_allclose(w, np.where(one > 0, 35 / 16, 35 / 54), rtol=1e-6)
