import chex
import jax
import jax.numpy as jnp
import numpy as np

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
