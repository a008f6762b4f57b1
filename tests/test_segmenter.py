"""The segmenter skeleton (segjax.models.segmenter) on toy backbones and heads."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax.models.segmenter import FCNHead, Segmenter


class _Features(nn.Module):
    """A backbone without parameters: constant maps at strides 2 and 4, told apart by value."""

    @nn.compact
    def __call__(self, images, *, train):
        del train
        b, h, w, _ = images.shape
        return {
            "s2": jnp.full((b, -(-h // 2), -(-w // 2), 4), 2.0),
            "s4": jnp.full((b, -(-h // 4), -(-w // 4), 4), 4.0),
        }


class _Identity(nn.Module):
    """A head that returns the feature it is given (so the output shows which one it was)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, train):
        del train
        return x.astype(self.dtype)


class _Difference(nn.Module):
    """A two-feature head: ``first − second`` at the first one's size."""

    @nn.compact
    def __call__(self, first, second, *, train):
        del train
        return first - jax.image.resize(second, first.shape, "nearest")


def _run(model, images):
    variables = model.init(jax.random.key(0), images)
    return variables, model.apply(variables, images, train=False)


def _shapes(model, images):
    """``_run`` without compiling: the variables' and outputs' shapes only."""
    return jax.eval_shape(lambda k: _run(model, images), jax.random.key(0))


@pytest.mark.parametrize("size", [(33, 47), (5, 7)])
def test_logits_at_the_input_size_in_float32(size):
    images = jnp.zeros((2, *size, 3))
    model = Segmenter(_Features(), _Identity(jnp.bfloat16), head_features="s4")
    _, out = _shapes(model, images)
    assert out["out"].shape == (2, *size, 4)
    assert out["out"].dtype == jnp.float32


def test_aux_head_only_when_given():
    images = jnp.zeros((1, 9, 11, 3))
    _, plain = _shapes(Segmenter(_Features(), _Identity(), head_features="s4"), images)
    assert set(plain) == {"out"}
    model = Segmenter(
        _Features(), _Identity(), head_features="s4", aux_head=_Identity(), aux_feature="s2"
    )
    _, both = _shapes(model, images)
    assert set(both) == {"out", "aux"}
    assert both["aux"].shape == (1, 9, 11, 4)


def test_heads_receive_the_named_features_in_order():
    images = jnp.zeros((1, 9, 11, 3))
    model = Segmenter(
        _Features(), _Identity(), head_features="s2", aux_head=_Identity(), aux_feature="s4"
    )
    _, out = _run(model, images)
    # Bilinear weights sum to 1 only up to rounding, hence the tolerance on constant maps.
    np.testing.assert_allclose(out["out"], 2.0, rtol=1e-6)
    np.testing.assert_allclose(out["aux"], 4.0, rtol=1e-6)
    _, out = _run(Segmenter(_Features(), _Difference(), head_features=("s4", "s2")), images)
    np.testing.assert_allclose(out["out"], 2.0, rtol=1e-6)


class _Model(nn.Module):
    """A model built on the skeleton the way DeepLab / PSPNet / FCN-ResNet are."""

    def _head(self, x, *, train):
        x = nn.Conv(4, (1, 1), name="project")(x)
        return FCNHead(3, name="classifier")(x, train=train)

    @nn.compact
    def __call__(self, images, *, train=False):
        aux_head = FCNHead(3, name="aux_classifier")
        return Segmenter(_Features(name="backbone"), self._head, "s4", aux_head, "s2")(
            images, train=train
        )


def test_parts_keep_the_enclosing_models_parameter_paths():
    variables, out = _shapes(_Model(), jnp.zeros((1, 9, 11, 3)))
    assert set(variables["params"]) == {"project", "classifier", "aux_classifier"}
    assert set(variables["batch_stats"]) == {"classifier", "aux_classifier"}
    assert out["out"].shape == out["aux"].shape == (1, 9, 11, 3)
