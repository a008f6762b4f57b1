"""Tests of the XLA:CPU switch: ``xla_cpu.conv_impl_scope``, ``xla_cpu.compiler_options``,
``xla_cpu.materialize`` and the jit wrapper ``runtime.jit``."""

import types

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segjax import models, runtime, xla_cpu
from segjax.xla_cpu import scope
from tests.helpers import compiled_computations


class _ConvKinds(nn.Module):
    """Strided, atrous, depthwise, grouped and 1×1 convs: every dispatch path but Winograd."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name="strided")(x)
        x = nn.Conv(8, (3, 3), padding=((2, 2), (2, 2)), kernel_dilation=(2, 2), name="atrous")(x)
        x = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=8, name="dw")(x)
        x = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=2, name="grouped")(x)
        return nn.Conv(3, (1, 1), name="pointwise")(nn.relu(x))


class _Pointwise(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(4, (1, 1))(x)


def _config(conv_impl="auto", cpu_scheduler="memory"):
    return ml_collections.ConfigDict({"conv_impl": conv_impl, "cpu_scheduler": cpu_scheduler})


def _images(shape=(2, 8, 8, 3), seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _pointwise_hlo(conv_impl, platform=None):
    model, x = _Pointwise(), _images()
    params = model.init(jax.random.key(0), x)["params"]
    apply = lambda params, x: model.apply({"params": params}, x)
    return runtime.jit(apply, _config(conv_impl), platform=platform).lower(params, x).as_text()


def test_unknown_conv_impl_names_the_setting_and_the_choices():
    for bad in ("taps", "fast", ""):
        with pytest.raises(
            ValueError, match=f"config.runtime.conv_impl={bad!r}: expected one of 'auto'"
        ):
            xla_cpu.conv_impl_scope(bad).__enter__()
        with pytest.raises(ValueError, match="config.runtime.conv_impl"):
            runtime.jit(jnp.sin, _config(bad))
    assert xla_cpu.CONV_IMPLS == ("auto", "gemm", "xla")


def test_auto_is_gemm_on_cpu_and_xla_elsewhere():
    assert jax.default_backend() == "cpu"
    with xla_cpu.conv_impl_scope() as impl:
        assert impl == "gemm"
    for platform, want in (("cpu", "gemm"), ("tpu", "xla"), ("gpu", "xla")):
        with xla_cpu.conv_impl_scope("auto", platform) as impl:
            assert impl == want, platform
    with xla_cpu.conv_impl_scope("gemm", "tpu") as impl:  # an explicit choice wins on any platform
        assert impl == "gemm"


def test_runtime_jit_traces_the_chosen_conv_impl():
    """A 1×1 conv under runtime.jit is a dot with "gemm" ("auto" on CPU) and XLA's conv with "xla"
    (or "auto" for a TPU)."""
    for conv_impl, platform, gemm in (
        ("gemm", None, True),
        ("auto", None, True),
        ("xla", None, False),
        ("auto", "tpu", False),
    ):
        hlo = _pointwise_hlo(conv_impl, platform)
        assert ("convolution" not in hlo) == gemm, (conv_impl, platform)
        assert ("dot_general" in hlo) == gemm, (conv_impl, platform)


def test_inner_scope_wins_and_nothing_leaks():
    model, x = _Pointwise(), _images()
    params = model.init(jax.random.key(0), x)["params"]

    def trace():  # a new function each time: make_jaxpr caches traces per function
        return str(jax.make_jaxpr(lambda params: model.apply({"params": params}, x))(params))

    with xla_cpu.conv_impl_scope("gemm"):
        with xla_cpu.conv_impl_scope("xla"):
            inner = trace()
        outer = trace()
    after = trace()
    assert "conv_general_dilated" in inner and "conv_general_dilated" not in outer
    assert "conv_general_dilated" in after
    assert nn.Conv(4, (3, 3)).conv_general_dilated is None


def test_gemm_scope_same_params_and_grads():
    """Under "gemm" every conv kind keeps its parameters and gives XLA's gradients."""
    model, x = _ConvKinds(), _images()
    variables = model.init(jax.random.key(0), x)
    loss = lambda params: jnp.mean(jnp.sin(model.apply({"params": params}, x)))
    want = jax.jit(jax.grad(loss))(variables["params"])
    lowered = runtime.jit(jax.grad(loss), _config("gemm")).lower(variables["params"])
    with xla_cpu.conv_impl_scope("gemm"):
        with_scope = jax.eval_shape(model.init, jax.random.key(0), x)
    chex.assert_trees_all_equal_shapes(with_scope["params"], variables["params"])
    chex.assert_trees_all_close(lowered.compile()(variables["params"]), want, rtol=1e-4, atol=1e-5)
    assert "dot_general" in lowered.as_text()  # the 1×1 conv really became a matmul


def test_conv_impls_agree_on_unet_gradients():
    """The GEMM rewrites (CPU default) give XLA's loss and gradients of a U-Net train pass."""
    model = models.create("unet", num_classes=4, width=2, depth=1)
    x = _images((2, 8, 8, 3))
    variables = model.init(jax.random.key(0), x, train=False)

    def loss(params):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(jnp.sin(out["out"]))

    results, custom_calls = {}, {}
    for impl in ("gemm", "xla"):
        grad_fn = runtime.jit(jax.value_and_grad(loss), _config(impl))
        results[impl] = grad_fn(variables["params"])
        custom_calls[impl] = str(grad_fn.trace(variables["params"]).jaxpr).count("custom_vjp")
    # Every 3×3 conv of the U-Net takes a custom-VJP path under "gemm" only (its up-conv
    # has one under both).
    assert custom_calls["gemm"] > custom_calls["xla"], custom_calls
    chex.assert_trees_all_close(results["gemm"], results["xla"], rtol=1e-4, atol=1e-6)


def test_compiler_options_per_scheduler_and_platform():
    assert xla_cpu.compiler_options("xla") is None
    memory = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
    assert xla_cpu.compiler_options() == xla_cpu.compiler_options("memory") == memory
    assert xla_cpu.compiler_options("concurrency") == {
        "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"
    }
    assert xla_cpu.compiler_options("memory", platform="tpu") is None
    with pytest.raises(ValueError, match="config.runtime.cpu_scheduler='fifo'"):
        xla_cpu.compiler_options("fifo")


def test_runtime_jit_passes_compiler_options_to_xla(monkeypatch):
    """runtime.jit hands compiler_options(config.runtime.cpu_scheduler) to XLA: an unknown option is
    rejected at compile time, and every scheduler gives the same numbers."""
    x = _images()
    monkeypatch.setattr(
        xla_cpu, "compiler_options", lambda *a, **k: {"xla_cpu_no_such_option": "1"}
    )
    with pytest.raises(Exception, match="No such compile option"):
        runtime.jit(jnp.sin, _config())(x)
    monkeypatch.undo()
    model = _ConvKinds()
    params = model.init(jax.random.key(0), x)["params"]
    grad = jax.grad(lambda params: jnp.mean(jnp.sin(model.apply({"params": params}, x))))
    results = {s: runtime.jit(grad, _config("gemm", s))(params) for s in ("memory", "concurrency")}
    want = runtime.jit(grad, _config("gemm", "xla"))(params)
    chex.assert_trees_all_close(results["memory"], want, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(results["concurrency"], want, rtol=1e-6, atol=1e-7)


def test_runtime_jit_reads_any_object_and_forwards_jit_kwargs():
    config = types.SimpleNamespace(conv_impl="gemm", cpu_scheduler="memory")
    double = runtime.jit(lambda x: 2 * x, config, static_argnums=())
    assert double.__name__ == "<lambda>"  # functools.wraps: the jitted function keeps its name
    np.testing.assert_array_equal(double(jnp.arange(3.0)), [0.0, 2.0, 4.0])
    donating = runtime.jit(lambda x: x + 1, config, donate_argnums=0)
    np.testing.assert_array_equal(donating(jnp.arange(3.0)), [1.0, 2.0, 3.0])


class _ResidualBlock(nn.Module):
    """``x = relu(x·w·1.1 + 0.1 + x)``: a residual stream XLA may recompute per consumer."""

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.normal(0.25), (x.shape[-1], x.shape[-1]))
        return self.output(x @ w * 1.1 + 0.1, x)

    def output(self, y, x):
        return jnp.maximum(y + x, 0.0)


class _ResidualStream(nn.Module):
    @nn.compact
    def __call__(self, x):
        for i in range(4):
            x = _ResidualBlock(name=f"block{i}")(x)
        return jnp.sum(x @ self.variables["params"]["block0"]["w"])


def _most_maxima_in_one_fusion(fn, *args):
    """The largest number of ``maximum`` ops (one per block) any computation of ``fn``'s compiled
    HLO holds, and the number of conditionals."""
    bodies, text = compiled_computations(fn, *args)
    return max(body.count(" maximum(") for body in bodies), text.count(" conditional(")


def test_materialize_stops_xla_recomputing_a_residual_stream(monkeypatch):
    """The CPU path's interceptor stores each listed residual block's output once."""
    model, x = _ResidualStream(), _images((64, 16))
    params = model.init(jax.random.key(0), x)["params"]

    def grads():  # a new function each time: jit caches traces per function, not per scope
        return jax.grad(lambda params, x: model.apply({"params": params}, x), argnums=(0, 1))

    # Without it, one fusion recomputes all four blocks (the failure materialize exists for).
    assert _most_maxima_in_one_fusion(grads(), params, x) == (4, 0)
    plain = jax.jit(grads())(params, x)
    block = (__name__, "_ResidualBlock", "output")
    monkeypatch.setattr(scope, "RESIDUAL_BLOCK_OUTPUTS", (*scope.RESIDUAL_BLOCK_OUTPUTS, block))
    with xla_cpu.conv_impl_scope("gemm"):
        most, conditionals = _most_maxima_in_one_fusion(grads(), params, x)
    stored = runtime.jit(grads(), _config("gemm"))(params, x)
    assert most == 1 and conditionals == 8  # 4 forward, 4 on the cotangent
    chex.assert_trees_all_equal(stored, plain)  # bit for bit


def test_materialize_is_the_identity_off_the_cpu_path_and_for_nan():
    x = jnp.array([[jnp.nan, 1.0], [2.0, -3.0]])
    with xla_cpu.conv_impl_scope("xla"):
        assert xla_cpu.materialize(x) is x
    with xla_cpu.conv_impl_scope("gemm"):
        np.testing.assert_array_equal(jax.jit(xla_cpu.materialize)(x), x)  # the x * 1 branch
        np.testing.assert_array_equal(jax.jit(xla_cpu.materialize)(x[1:]), x[1:])
        assert xla_cpu.materialize(x[:0]).shape == (0, 2)
