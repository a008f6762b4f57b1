"""Tests for segjax.models.backbones.resnet."""

import pathlib
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from absl.testing import parameterized

from segjax import xla_cpu
from segjax.models.backbones import resnet
from tests.helpers import abstract_variables, compiled_computations, num_params, random_variables


# torchvision's published totals minus the ImageNet fc layer (2048·1000 + 1000, or 512·1000 +
# 1000 for ResNet-18/34): the backbone has no classifier.
@pytest.mark.parametrize(
    "depth, total, fc",
    [
        (18, 11_689_512, 513_000),
        (34, 21_797_672, 513_000),
        (50, 25_557_032, 2_049_000),
        (101, 44_549_160, 2_049_000),
        (152, 60_192_808, 2_049_000),
    ],
)
def test_param_count_matches_torchvision(depth, total, fc):
    assert num_params(resnet.ResNet(depth=depth)) == total - fc


def test_param_names_map_to_torchvision_keys():
    variables = jax.eval_shape(
        lambda: resnet.ResNet(depth=50).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    )
    params = variables["params"]
    assert set(params["layer1_0"]) == {
        "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn",
    }  # fmt: skip
    assert "downsample_conv" not in params["layer1_1"]
    assert sorted(k for k in params if k.startswith("layer3_")) == sorted(
        f"layer3_{j}" for j in range(6)
    )
    chex.assert_shape(params["layer2_0"]["conv2"]["kernel"], (3, 3, 128, 128))
    chex.assert_shape(params["layer2_0"]["downsample_conv"]["kernel"], (1, 1, 256, 512))
    assert set(variables["batch_stats"]["bn1"]) == {"mean", "var"}


def test_block_plan_follows_torchvision_make_layer():
    blocks = resnet.STAGE_BLOCKS[50]
    # Output stride 8: layer3 dilation 2 (first block keeps 1), layer4 dilation 4 (first keeps 2).
    plan = resnet.block_plan(blocks, (False, True, True))
    assert plan[1] == [(2, 1), (1, 1), (1, 1), (1, 1)]
    assert plan[2] == [(1, 1)] + [(1, 2)] * 5
    assert plan[3] == [(1, 2), (1, 4), (1, 4)]
    plan16 = resnet.block_plan(blocks, (False, False, True))
    assert plan16[2][0] == (2, 1) and plan16[3] == [(1, 1), (1, 2), (1, 2)]
    # DeepLab v3 multi-grid at output stride 16: layer4 rates 2·(1, 2, 4).
    plan_mg = resnet.block_plan(blocks, (False, False, True), (1, 2, 4))
    assert plan_mg[3] == [(1, 2), (1, 4), (1, 8)]
    with pytest.raises(ValueError, match="multi_grid"):
        resnet.block_plan(blocks, (False, False, True), (1, 2))


def test_module_applies_the_planned_dilations():
    """Records every 3×3 conv the module runs and compares with the block plan."""
    model = resnet.resnet_tiny(output_stride=8, stage_blocks=(1, 2, 2, 3), multi_grid=(1, 2, 4))
    seen = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Conv) and module.name == "conv2":
            seen.append((module.strides[0], module.kernel_dilation[0], module.padding[0][0]))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    plan = resnet.block_plan((1, 2, 2, 3), (False, True, True), (1, 2, 4))
    expected = [(s, d, d) for stage in plan for s, d in stage]
    assert seen == expected


@pytest.mark.parametrize(
    "output_stride, size, expected",
    # PyTorch size arithmetic: floor((n + 2p - k) / s) + 1 at each strided layer.
    [(32, 64, (32, 16, 8, 4, 2)), (16, 65, (33, 17, 9, 5, 5)), (8, 37, (19, 10, 5, 5, 5))],
)
def test_feature_shapes(output_stride, size, expected):
    model = resnet.resnet_tiny(output_stride=output_stride)
    out = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, size, size, 3)))[0]
    )
    chans = model.stage_channels()
    for name, side in zip(("stem", "layer1", "layer2", "layer3", "layer4"), expected):
        chex.assert_shape(out[name], (2, side, side, chans[name]))


def test_output_stride_helper_rejects_unknown():
    assert resnet.dilation_for_output_stride(16) == (False, False, True)
    with pytest.raises(ValueError, match="output_stride"):
        resnet.dilation_for_output_stride(4)


def test_basic_block_refuses_dilation():
    model = resnet.ResNet(depth=18, width=8, replace_stride_with_dilation=(False, True, True))
    with pytest.raises(ValueError, match="dilation"):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))


# Backward pass and BatchNorm statistics updates of the backbone are tested through
# FCN-ResNet in tests/test_fcn.py (one compile instead of two).


class ResNetVariantsTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_forward_finite(self):
        model = resnet.resnet_tiny(output_stride=8)
        x = jax.random.normal(jax.random.key(1), (1, 17, 17, 3))
        variables = random_variables(model, x)
        feats = self.variant(lambda v, x: model.apply(v, x, train=False))(variables, x)
        chex.assert_shape(feats["layer4"], (1, 3, 3, 256))
        chex.assert_tree_all_finite(feats)


def test_bfloat16_compute_keeps_float32_params():
    model = resnet.resnet_tiny(dtype=jnp.bfloat16)
    x = jnp.ones((1, 32, 32, 3))
    feats, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
    assert feats["layer4"].dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


def test_gemm_path_computes_the_residual_stream_once():
    """Under the CPU path each block's output is stored once (``xla_cpu.materialize``, applied by
    the scope's interceptor; the model calls no backend code): no fusion of the compiled backward
    recomputes the residual adds of two blocks."""
    model = resnet.resnet_tiny(stage_blocks=(1, 1, 4, 1))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = random_variables(model, x)

    def loss(params):
        feats, _ = model.apply(
            {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(feats["layer4"] ** 2)

    with xla_cpu.conv_impl_scope("gemm"):
        bodies, text = compiled_computations(jax.grad(loss), variables["params"])
    block_add = r'op_name="[^"]*/(layer\d_\d+)/\1\.output/add"'
    residual_adds = [set(re.findall(block_add, body)) for body in bodies]
    assert max(len(blocks) for blocks in residual_adds) == 1
    assert text.count(" conditional(") == 2 * 7  # one per block, forward and backward


def test_scope_materializes_block_outputs_the_model_calls_no_backend_code():
    """One ``cond`` per block under the CPU path's scope (``xla_cpu.RESIDUAL_BLOCK_OUTPUTS``),
    none under ``"xla"``; traced only (``make_jaxpr`` of abstract inputs), nothing compiles."""
    model = resnet.resnet_tiny()
    x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    variables = abstract_variables(model, x)

    def conds(impl):  # a new function each time: make_jaxpr caches traces per function
        with xla_cpu.conv_impl_scope(impl):
            jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, x)
        return str(jaxpr).count(" cond[")

    assert (conds("gemm"), conds("xla")) == (4, 0)
    source = pathlib.Path(resnet.__file__).read_text()
    assert "xla_cpu." not in source.replace("segjax.xla_cpu.RESIDUAL_BLOCK_OUTPUTS", "")
    assert "materialize" not in source
