"""Tests of segjax.benchmark and of the matmul weight-gradient convolution in models.layers."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import benchmark
from segjax.models import layers

DN = ("NHWC", "HWIO", "NHWC")

# (input NHWC, kernel HWIO, strides, padding, rhs_dilation, groups)
CASES = {
    "3x3 d1": ((2, 7, 7, 4), (3, 3, 4, 5), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "3x3 d2": ((2, 8, 8, 4), (3, 3, 4, 6), (1, 1), ((2, 2), (2, 2)), (2, 2), 1),
    "3x3 s2 odd": ((1, 9, 7, 3), (3, 3, 3, 4), (2, 2), ((1, 1), (1, 1)), (1, 1), 1),
    "7x7 s2 asym": ((1, 10, 10, 3), (7, 7, 3, 4), (2, 2), ((3, 2), (2, 3)), (1, 1), 1),
    "depthwise d2": ((2, 6, 6, 4), (3, 3, 1, 4), (1, 1), ((2, 2), (2, 2)), (2, 2), 4),
    "depthwise x2": ((1, 6, 6, 3), (3, 3, 1, 6), (2, 2), ((1, 1), (1, 1)), (1, 1), 3),
    "grouped 1x1": ((2, 5, 5, 6), (1, 1, 3, 4), (1, 1), ((0, 0), (0, 0)), (1, 1), 2),
    "grouped 3x3": ((1, 5, 5, 6), (3, 3, 2, 6), (1, 1), ((1, 1), (1, 1)), (1, 1), 3),
    "dense 128": ((1, 4, 4, 128), (3, 3, 128, 8), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "dead taps d8": ((1, 6, 6, 4), (3, 3, 4, 5), (1, 1), ((8, 8), (8, 8)), (8, 8), 1),
    "dead rows d5": ((1, 4, 12, 4), (3, 3, 4, 5), (1, 1), ((5, 5), (5, 5)), (5, 5), 1),
    "1x1 s2 wide→narrow": ((2, 7, 7, 12), (1, 1, 12, 5), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),
    "1x1 narrow→wide": ((2, 5, 5, 3), (1, 1, 3, 8), (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    "winograd odd": ((1, 7, 5, 512), (3, 3, 512, 64), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "winograd d3 asym": ((1, 9, 8, 512), (3, 3, 512, 64), (1, 1), ((3, 2), (1, 3)), (3, 3), 1),
    "winograd 2048": ((1, 4, 4, 2048), (3, 3, 2048, 64), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
}


def _arrays(x_shape, k_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=k_shape), jnp.float32)
    return x, k


def _reference(x, k, strides, padding, dilation, groups):
    return jax.lax.conv_general_dilated(
        x, k, strides, padding, rhs_dilation=dilation, dimension_numbers=DN,
        feature_group_count=groups,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_taps_weight_grad_matches_xla(dtype):
    """The per-tap weight gradient equals XLA's on every case, whichever operand it transposes
    (input or output gradient, by channel count), also where _use_taps keeps XLA's; float64
    stays float64 (no float32 accumulation)."""
    with jax.enable_x64(dtype == jnp.float64):
        for name, case in CASES.items():
            _check_taps_weight_grad(name, *case, dtype=dtype)


def _check_taps_weight_grad(name, x_shape, k_shape, strides, padding, dilation, groups, dtype):
    x, k = (a.astype(dtype) for a in _arrays(x_shape, k_shape))
    conv = functools.partial(
        _reference, strides=strides, padding=padding, dilation=dilation, groups=groups
    )
    y, vjp = jax.vjp(functools.partial(conv, x), k)
    dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), dtype)
    want = vjp(dy)[0]
    got = layers._taps_weight_grad(x, dy, k.shape, strides, padding, dilation, groups, k.dtype)
    chex.assert_shape(got, k.shape)
    chex.assert_type(got, dtype)
    tol = 1e-4 if dtype == jnp.float32 else 1e-10
    chex.assert_trees_all_close(got, want, rtol=tol, atol=tol, custom_message=name)


@pytest.mark.parametrize(
    "shape, padding, d",
    [
        ((2, 7, 5, 3), ((1, 1), (1, 1)), 1),  # odd sizes: partial 2×2 output blocks
        ((1, 8, 8, 2), ((0, 0), (0, 0)), 1),  # VALID
        ((1, 9, 11, 2), ((2, 2), (2, 2)), 2),
        ((1, 10, 7, 2), ((4, 1), (0, 3)), 3),  # asymmetric padding, atrous
        ((1, 12, 12, 2), ((12, 12), (12, 12)), 12),  # rate as large as the map
    ],
)
def test_winograd_conv_is_exact(shape, padding, d):
    """Winograd F(2×2, 3×3) equals the direct convolution (float64: only rounding differs),
    forward and both gradients."""
    with jax.enable_x64(True):
        x, k = (a.astype(jnp.float64) for a in _arrays(shape, (3, 3, shape[-1], 4)))
        ref = functools.partial(
            _reference, strides=(1, 1), padding=padding, dilation=(d, d), groups=1
        )
        wino = lambda x, k: layers._winograd_conv(x, k, padding, d)
        chex.assert_trees_all_close(wino(x, k), ref(x, k), rtol=1e-12, atol=1e-12)
        loss = lambda f: jax.grad(lambda x, k: jnp.sum(jnp.sin(f(x, k))), (0, 1))(x, k)
        chex.assert_trees_all_close(loss(wino), loss(ref), rtol=1e-12, atol=1e-12)


def test_winograd_routing():
    """Dense stride-1 3×3 convs from 512 input channels take the Winograd custom VJP."""
    for name in ("winograd odd", "winograd d3 asym", "winograd 2048"):
        x_shape, k_shape, strides, padding, dilation, groups = CASES[name]
        assert layers._use_winograd(x_shape, k_shape, strides, padding, dilation, groups), name
    for name in ("dense 128", "3x3 s2 odd", "grouped 3x3"):
        x_shape, k_shape, strides, padding, dilation, groups = CASES[name]
        assert not layers._use_winograd(x_shape, k_shape, strides, padding, dilation, groups)


class FastConvTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_value_and_gradients_match_lax(self):
        for name, (x_shape, k_shape, strides, padding, dilation, groups) in CASES.items():
            x, k = _arrays(x_shape, k_shape)
            k = k / np.sqrt(np.prod(k_shape[:3]))  # unit-variance outputs, as with He init

            def loss(conv, x, k, strides=strides, padding=padding, d=dilation, g=groups):
                y = conv(
                    x, k, strides, padding, rhs_dilation=d, dimension_numbers=DN,
                    feature_group_count=g,
                )  # fmt: skip
                return jnp.sum(jnp.sin(y)), y

            fast = self.variant(jax.value_and_grad(
                lambda x, k: loss(layers.conv_general_dilated_fast, x, k), (0, 1), has_aux=True
            ))  # fmt: skip
            (_, y), grads = fast(x, k)
            (_, y_ref), grads_ref = jax.value_and_grad(
                lambda x, k: loss(jax.lax.conv_general_dilated, x, k), (0, 1), has_aux=True
            )(x, k)
            chex.assert_trees_all_close(y, y_ref, rtol=1e-4, atol=1e-4, custom_message=name)
            chex.assert_trees_all_close(grads, grads_ref, rtol=1e-4, atol=1e-4, custom_message=name)

    def test_string_padding_and_fallthrough(self):
        x, k = _arrays((1, 7, 7, 3), (3, 3, 3, 2))
        for padding in ("SAME", "VALID"):
            got = layers.conv_general_dilated_fast(x, k, (2, 2), padding, dimension_numbers=DN)
            want = jax.lax.conv_general_dilated(x, k, (2, 2), padding, dimension_numbers=DN)
            chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
        # Input dilation with string padding falls through to lax (which rejects it).
        with pytest.raises(ValueError, match="String padding"):
            layers.conv_general_dilated_fast(
                x, k, (1, 1), "SAME", lhs_dilation=(2, 2), dimension_numbers=DN
            )

    @chex.variants(with_jit=True, without_jit=True)
    def test_transposed_conv_gradients_match_lax(self):
        """Input-dilated convs (lax.conv_transpose): weight gradient from dy slices."""
        cases = {  # input, kernel, lhs_dilation, padding, groups
            "4x4/2 torch p1": ((2, 5, 5, 3), (4, 4, 3, 4), (2, 2), ((2, 2), (2, 2)), 1),
            "3x3/2 asym": ((1, 4, 6, 2), (3, 3, 2, 3), (2, 2), ((1, 2), (2, 1)), 1),
            "4x4/3 no pad": ((1, 3, 3, 2), (4, 4, 2, 2), (3, 3), ((0, 0), (0, 0)), 1),
            "depthwise 4x4/2": ((1, 4, 4, 3), (4, 4, 1, 3), (2, 2), ((2, 2), (2, 2)), 3),
            "4x4/2 wide→narrow": ((1, 4, 4, 6), (4, 4, 6, 2), (2, 2), ((2, 2), (2, 2)), 1),
        }
        for name, (x_shape, k_shape, dil, padding, groups) in cases.items():
            x, k = _arrays(x_shape, k_shape)

            def loss(conv, x, k, dil=dil, padding=padding, g=groups):
                y = conv(
                    x, k, (1, 1), padding, lhs_dilation=dil, dimension_numbers=DN,
                    feature_group_count=g,
                )  # fmt: skip
                return jnp.sum(jnp.sin(y))

            got = self.variant(jax.grad(
                lambda x, k: loss(layers.conv_general_dilated_fast, x, k), (0, 1)
            ))(x, k)  # fmt: skip
            want = jax.grad(lambda x, k: loss(jax.lax.conv_general_dilated, x, k), (0, 1))(x, k)
            chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4, custom_message=name)

    def test_dead_taps_are_cropped(self):
        k = jnp.ones((3, 3, 4, 5))
        cropped, padding = layers._crop_dead_taps((6, 6), k, (1, 1), ((8, 8), (8, 8)), (8, 8))
        chex.assert_shape(cropped, (1, 1, 4, 5))
        self.assertEqual(padding, ((0, 0), (0, 0)))
        kept, padding = layers._crop_dead_taps((32, 32), k, (1, 1), ((12, 12), (12, 12)), (12, 12))
        chex.assert_shape(kept, (3, 3, 4, 5))
        self.assertEqual(padding, ((12, 12), (12, 12)))


def test_live_fraction_of_atrous_convs():
    # ASPP on a 32×32 map: rate 1 wastes only the border, rate 36 keeps the centre tap alone.
    np.testing.assert_allclose(layers._live_fraction((32, 32), (3, 3), ((1, 1),) * 2, (1, 1)),
                               (94 / 96) ** 2)  # fmt: skip
    np.testing.assert_allclose(layers._live_fraction((32, 32), (3, 3), ((12, 12),) * 2, (12, 12)),
                               ((32 + 20 + 20) / 96) ** 2)  # fmt: skip
    np.testing.assert_allclose(layers._live_fraction((32, 32), (3, 3), ((36, 36),) * 2, (36, 36)),
                               1 / 9)  # fmt: skip


class _TinyNet(nn.Module):
    """Every conv kind a segmentation model uses (strided, atrous, depthwise, 1×1), small."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, images, *, train=False):
        x = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name="stem")(images)
        x = nn.Conv(8, (3, 3), padding=((2, 2), (2, 2)), kernel_dilation=(2, 2), name="atrous")(x)
        x = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=8, name="dw")(x)
        x = nn.Conv(self.num_classes, (1, 1), name="head")(nn.relu(x))
        return {"out": jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2).astype(jnp.float32)}


def test_fast_conv_backward_context_same_params_and_grads():
    model = _TinyNet()
    x, _ = _arrays((2, 8, 8, 3), (1, 1, 1, 1))
    variables = model.init(jax.random.key(0), x)
    loss = lambda params: jnp.mean(jnp.sin(model.apply({"params": params}, x)["out"]))
    want = jax.jit(jax.grad(loss))(variables["params"])
    with layers.fast_conv_backward(enabled=True):
        lowered = jax.jit(jax.grad(loss)).lower(variables["params"])
        with_ctx = jax.eval_shape(model.init, jax.random.key(0), x)
    chex.assert_trees_all_equal_shapes(with_ctx["params"], variables["params"])
    chex.assert_trees_all_close(lowered.compile()(variables["params"]), want, rtol=1e-4, atol=1e-5)
    # The convs really went through conv_general_dilated_fast (1×1 head → dot_general).
    assert "dot_general" in lowered.as_text()
    assert nn.Conv(4, (3, 3)).conv_general_dilated is None  # nothing leaks out of the context


def test_run_jax_tiny_model_figures():
    result = benchmark.run_jax(
        _TinyNet(), batch=2, size=16, steps=1, num_classes=3, peak=(1e11, "test peak")
    )
    figures = ("compile_s", "step_ms", "train_img_s", "eval_img_s", "flops_per_step", "mfu")
    for key in (*figures, "executed_flops_per_step"):
        assert np.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["peak_memory_bytes"] > 0
    assert result["peak_flops"] == 1e11 and result["peak_source"] == "test peak"
    np.testing.assert_allclose(
        result["mfu"], result["flops_per_step"] / (result["step_ms"] / 1e3) / 1e11, rtol=1e-6
    )
    assert result["conv_backward"] == "taps" and result["model"] == "_TinyNet"
    assert result["devices"] == 2  # batch 2 split over 2 of the 8 test devices
    assert np.isfinite(result["loss"])
    np.testing.assert_allclose(result["train_img_s"], 2 / (result["step_ms"] / 1e3), rtol=1e-6)


def test_run_jax_rejects_unknown_conv_backward():
    with pytest.raises(ValueError, match="conv_backward"):
        benchmark.run_jax(_TinyNet(), batch=1, size=8, conv_backward="cudnn")


def test_torch_python_error_without_torch(monkeypatch):
    monkeypatch.delenv("SEGJAX_TORCH_PYTHON", raising=False)
    monkeypatch.setattr(benchmark.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="torch and torchvision"):
        benchmark.torch_python(None)
    assert benchmark.torch_python("/some/python") == "/some/python"


def test_run_torch_unknown_model():
    with pytest.raises(KeyError, match="no torchvision equivalent"):
        benchmark.run_torch("unet_small", 1, 8)


def test_random_batch_labels():
    images, labels = benchmark.random_batch(2, 16, 5)
    chex.assert_shape(images, (2, 16, 16, 3))
    assert set(np.unique(labels)) <= set(range(5)) | {255}
    assert (labels == 255).any() and (labels < 5).any()


@pytest.mark.torch
def test_run_torch_lraspp_small():
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    result = benchmark.run_torch("lraspp_mobilenet_v3_large", 1, 32, steps=1, num_classes=3)
    assert result["train_img_s"] > 0 and result["eval_img_s"] > 0
    assert np.isfinite(result["loss"])


def test_profile_step_attributes_time_to_layers():
    """benchmarks/profile_step.py traces a real step and names the layers its ops belong to."""
    from benchmarks import profile_step

    wall_ms, rows, by_kind = profile_step.main(
        ["--model", "unet_small", "--batch", "2", "--size", "32", "--top", "3"]
    )
    assert wall_ms > 0 and rows and all(ms >= 0 for ms, *_ in rows)
    assert sum(by_kind.values()) > 0
    # Forward and backward ops of the model's layers are told apart by their op_name.
    op_names = [op for *_, op in rows]
    assert any("jvp(UNet)" in op and "transpose(" not in op for op in op_names)
    assert any("transpose(jvp(UNet))" in op for op in op_names)
