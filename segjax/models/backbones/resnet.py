"""ResNet backbones (He et al. 2016), laid out exactly as ``torchvision.models.resnet``.

Structure (v1.5, as torchvision): stride on the 3×3 conv of the bottleneck; the projection
shortcut is conv1×1(stride) + BN; ``replace_stride_with_dilation`` turns the stride of layer2/3/4
into dilation, and — as torchvision's ``_make_layer`` does — the *first* block of a dilated stage
keeps the previous dilation for its 3×3 conv while the following blocks use the new one.
``multi_grid`` (DeepLab v3) multiplies the dilation of each layer4 block: with
``multi_grid=(1, 2, 4)`` and layer4 dilation ``r`` the three blocks use ``r·(1, 2, 4)``
(the DeepLab v3 definition; any multi-grid other than all ones replaces torchvision's
"first block keeps the previous dilation" rule in layer4). All padding is explicit and
symmetric (``layers.same_padding``) so outputs match PyTorch numerically for every stride.

``__call__(x, *, train)`` returns a dict of stage features (compute dtype):
``"stem"`` (conv1 + bn1 + relu, stride 2), ``"layer1"`` (stride 4), ``"layer2"``, ``"layer3"``,
``"layer4"``. The max-pool sits between ``"stem"`` and ``"layer1"``.

Mapping to torchvision state-dict keys (mechanical; conv kernels transpose OIHW → HWIO):

=================================================  ==========================================
Flax (``params`` / ``batch_stats``)                 torchvision
=================================================  ==========================================
``conv1/kernel``                                    ``conv1.weight``
``bn1/scale``, ``bn1/bias``                         ``bn1.weight``, ``bn1.bias``
``bn1/mean``, ``bn1/var`` (batch_stats)             ``bn1.running_mean``, ``bn1.running_var``
``layer{i}_{j}/conv{k}/kernel``                     ``layer{i}.{j}.conv{k}.weight``
``layer{i}_{j}/bn{k}/…``                            ``layer{i}.{j}.bn{k}.…``
``layer{i}_{j}/downsample_conv/kernel``             ``layer{i}.{j}.downsample.0.weight``
``layer{i}_{j}/downsample_bn/…``                    ``layer{i}.{j}.downsample.1.…``
=================================================  ==========================================

(torchvision's ``fc`` classifier is not part of the backbone; ``num_batches_tracked`` has no
counterpart.)
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.models.layers import batch_norm, conv_init, same_padding

Dtype = Any

# Blocks per stage and block type for each torchvision depth.
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
BOTTLENECK_DEPTHS = frozenset({50, 101, 152})


def dilation_for_output_stride(output_stride: int) -> tuple[bool, bool, bool]:
    """Maps an output stride to ``replace_stride_with_dilation`` for (layer2, layer3, layer4).

    Args:
      output_stride: 8, 16 or 32 (the ratio of input to layer4 resolution).

    Returns:
      ``(False, True, True)`` for 8, ``(False, False, True)`` for 16, ``(False, False, False)``
      for 32.

    Raises:
      ValueError: any other output stride.
    """
    table = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
    if output_stride not in table:
        raise ConfigError(f"resnet: output_stride must be 8, 16 or 32, got {output_stride!r}")
    return table[output_stride]


def _conv(features: int, kernel: int, strides: int = 1, dilation: int = 1, *, dtype, name):
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=same_padding(kernel, dilation),
        kernel_dilation=(dilation, dilation),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=conv_init,
        name=name,
    )


def block_plan(
    stage_blocks: Sequence[int],
    replace_stride_with_dilation: Sequence[bool],
    multi_grid: Sequence[int] = (1, 1, 1),
) -> list[list[tuple[int, int]]]:
    """(stride, dilation) of the 3×3 conv of every block, stage by stage, as torchvision builds it.

    torchvision's ``_make_layer``: a dilated stage multiplies the running dilation by its
    stride (and uses stride 1); its first block keeps the *previous* dilation, the others use
    the new one. A multi-grid other than all ones sets layer4's block ``j`` to
    ``dilation * multi_grid[j]`` (DeepLab v3).

    Raises:
      ValueError: multi-grid length differs from the number of layer4 blocks.
    """
    multi_grid = tuple(multi_grid)
    use_multi_grid = any(m != 1 for m in multi_grid)
    if use_multi_grid and len(multi_grid) != stage_blocks[3]:
        raise ConfigError(
            f"resnet: multi_grid {multi_grid!r} needs one entry per layer4 block "
            f"({stage_blocks[3]} blocks)"
        )
    plan = []
    dilation = 1
    for stage, num_blocks in enumerate(stage_blocks):
        strides = 1 if stage == 0 else 2
        previous_dilation = dilation
        if stage > 0 and replace_stride_with_dilation[stage - 1]:
            dilation *= strides
            strides = 1
        stage_plan = []
        for j in range(num_blocks):
            if stage == 3 and use_multi_grid:
                block_dilation = dilation * multi_grid[j]
            else:
                block_dilation = previous_dilation if j == 0 else dilation
            stage_plan.append((strides if j == 0 else 1, block_dilation))
        plan.append(stage_plan)
    return plan


class _Block(nn.Module):
    """What torchvision's two residual blocks share: their arguments and the shortcut.

    Attributes:
      planes: inner width; the block outputs ``expansion * planes`` channels.
      strides: stride of the strided 3×3 conv (and of the projection shortcut).
      dilation: dilation (and padding) of that 3×3 conv.
      downsample: whether the shortcut is a conv1×1 + BN projection.
      dtype: compute dtype.
      norm: the normalisation factory ``norm(train, dtype, name=…)`` (see :class:`ResNet`).
    """

    planes: int
    strides: int = 1
    dilation: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32
    norm: Callable[..., nn.Module] = batch_norm

    expansion = 1

    def shortcut(self, x: jax.Array, train: bool) -> jax.Array:
        """``x``, or torchvision's ``downsample`` (conv1×1 with the block's stride + BN)."""
        if not self.downsample:
            return x
        features = self.planes * self.expansion
        x = _conv(features, 1, self.strides, dtype=self.dtype, name="downsample_conv")(x)
        return self.norm(train, self.dtype, name="downsample_bn")(x)

    def output(self, out: jax.Array, x: jax.Array, train: bool) -> jax.Array:
        """``relu(out + shortcut(x))``: the block's output, the residual stream (a method of its
        own, so that a backend rewrite can find it: ``segjax.xla_cpu.RESIDUAL_BLOCK_OUTPUTS``)."""
        return nn.relu(out + self.shortcut(x, train))


class Bottleneck(_Block):
    """torchvision's ``Bottleneck``: 1×1 → 3×3 (stride, dilation) → 1×1 (×4), each with BN."""

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        out = _conv(self.planes, 1, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(self.norm(train, self.dtype, name="bn1")(out))
        out = _conv(self.planes, 3, self.strides, self.dilation, dtype=self.dtype, name="conv2")(
            out
        )
        out = nn.relu(self.norm(train, self.dtype, name="bn2")(out))
        out = _conv(self.planes * 4, 1, dtype=self.dtype, name="conv3")(out)
        out = self.norm(train, self.dtype, name="bn3")(out)
        return self.output(out, x, train)


class BasicBlock(_Block):
    """torchvision's ``BasicBlock`` (ResNet-18/34): two 3×3 convs with BN.

    torchvision refuses dilation > 1 for this block; so do we.
    """

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.dilation > 1:
            raise ConfigError(
                f"resnet.BasicBlock: dilation {self.dilation} > 1 is not supported (as in "
                "torchvision); use depth 50/101/152 for a dilated backbone"
            )
        out = _conv(self.planes, 3, self.strides, dtype=self.dtype, name="conv1")(x)
        out = nn.relu(self.norm(train, self.dtype, name="bn1")(out))
        out = _conv(self.planes, 3, dtype=self.dtype, name="conv2")(out)
        out = self.norm(train, self.dtype, name="bn2")(out)
        return self.output(out, x, train)


class ResNet(nn.Module):
    """ResNet feature extractor with torchvision's structure and parameter names.

    Attributes:
      depth: 18, 34, 50, 101 or 152.
      replace_stride_with_dilation: for (layer2, layer3, layer4), replace the stride 2 by
        dilation (torchvision's argument). See :func:`dilation_for_output_stride`.
      multi_grid: dilation multipliers of the layer4 blocks (DeepLab v3); all ones (the
        default) is torchvision's behaviour. Must have one entry per layer4 block otherwise.
      width: channels of the stem and base planes of layer1 (64 in the paper); stage ``i``
        has ``width * 2**i`` planes. Small values give tiny test variants.
      stage_blocks: blocks per stage; ``None`` takes the depth's standard counts.
      dtype: compute dtype (parameters and BN statistics stay float32).
      norm: factory of every normalisation layer, called as ``norm(train, dtype, name=…)``;
        the default is torchvision's ``BatchNorm2d`` (:func:`segjax.models.layers.batch_norm`),
        Mask R-CNN passes its frozen BatchNorm. The layer names stay ``bn1`` … either way.
    """

    depth: int = 50
    replace_stride_with_dilation: Sequence[bool] = (False, False, False)
    multi_grid: Sequence[int] = (1, 1, 1)
    width: int = 64
    stage_blocks: Sequence[int] | None = None
    dtype: Dtype = jnp.float32
    norm: Callable[..., nn.Module] = batch_norm

    def stage_channels(self) -> dict[str, int]:
        """Channels of each returned feature map (for heads that need them before ``init``)."""
        expansion = 4 if self.depth in BOTTLENECK_DEPTHS else 1
        chans = {"stem": self.width}
        for i in range(4):
            chans[f"layer{i + 1}"] = self.width * 2**i * expansion
        return chans

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if self.depth not in STAGE_BLOCKS:
            raise ConfigError(
                f"resnet: depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth!r}"
            )
        if len(self.replace_stride_with_dilation) != 3:
            raise ConfigError(
                "resnet: replace_stride_with_dilation needs 3 booleans (layer2, layer3, layer4), "
                f"got {self.replace_stride_with_dilation!r}"
            )
        blocks = tuple(self.stage_blocks or STAGE_BLOCKS[self.depth])
        if len(blocks) != 4 or min(blocks) < 1:
            raise ConfigError(f"resnet: stage_blocks needs 4 positive counts, got {blocks!r}")
        multi_grid = tuple(self.multi_grid)
        block_cls = Bottleneck if self.depth in BOTTLENECK_DEPTHS else BasicBlock
        expansion = block_cls.expansion

        features = {}
        x = x.astype(self.dtype)
        x = _conv(self.width, 7, 2, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(self.norm(train, self.dtype, name="bn1")(x))
        features["stem"] = x
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        in_channels = self.width
        plan = block_plan(blocks, self.replace_stride_with_dilation, multi_grid)
        for stage in range(4):
            planes = self.width * 2**stage
            for j, (strides, block_dilation) in enumerate(plan[stage]):
                downsample = j == 0 and (strides != 1 or in_channels != planes * expansion)
                x = block_cls(
                    planes,
                    strides=strides,
                    dilation=block_dilation,
                    downsample=downsample,
                    dtype=self.dtype,
                    norm=self.norm,
                    name=f"layer{stage + 1}_{j}",
                )(x, train=train)
                in_channels = planes * expansion
            features[f"layer{stage + 1}"] = x
        return features


def resnet(depth: int, *, output_stride: int = 32, **kwargs) -> ResNet:
    """A ResNet of ``depth`` at ``output_stride`` (8, 16 or 32); kwargs go to :class:`ResNet`."""
    dilate = dilation_for_output_stride(output_stride)
    return ResNet(depth=depth, replace_stride_with_dilation=dilate, **kwargs)


resnet50 = functools.partial(resnet, 50)
resnet101 = functools.partial(resnet, 101)

# Tiny test variant: depth-50 (bottleneck) structure, one block per stage, 8 base channels.
TINY_KWARGS = {"depth": 50, "width": 8, "stage_blocks": (1, 1, 1, 1)}


def resnet_tiny(*, output_stride: int = 32, **kwargs) -> ResNet:
    """Tiny bottleneck ResNet for tests (width 8, one block per stage unless overridden)."""
    return resnet(**{**TINY_KWARGS, **kwargs}, output_stride=output_stride)
