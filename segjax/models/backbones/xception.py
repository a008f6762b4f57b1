"""Aligned Xception-65 (DeepLab v3+, Chen et al. 2018), as TF DeepLab's ``xception_65``.

Differences from the ImageNet Xception, as in the paper: all max-pools are replaced by strided
depthwise-separable convs; there are 16 middle-flow units instead of 8; every 3×3 depthwise
conv is followed by BatchNorm, and the pointwise conv by BatchNorm. Units are pre-activation
(ReLU before each separable conv) except the last exit-flow unit, which applies ReLU after the
depthwise and after the pointwise conv (``activation_fn_in_separable_conv=True``).

Layout (channels of the three separable convs of each unit, shortcut, stride):

- root: ``entry_flow_conv1_1`` 3×3/2 → 32, ``entry_flow_conv1_2`` 3×3 → 64 (conv + BN + ReLU)
- ``entry_flow_block1`` [128, 128, 128], 1×1 conv shortcut, stride 2
- ``entry_flow_block2`` [256, 256, 256], conv shortcut, stride 2 (its second separable conv is the
  decoder's low-level feature, stride 4)
- ``entry_flow_block3`` [728, 728, 728], conv shortcut, stride 2
- ``middle_flow_unit{1..16}`` [728, 728, 728], identity shortcut
- ``exit_flow_block1`` [728, 1024, 1024], conv shortcut, stride 2
- ``exit_flow_block2`` [1536, 1536, 2048], no shortcut, ReLU inside the separable convs

Output stride (8, 16 or 32) follows TF DeepLab's ``stack_blocks_dense``: once the running stride
equals the target, the unit's stride becomes 1 and the atrous rate of the *following* units grows
by that stride (the unit itself keeps the previous rate). ``multi_grid`` multiplies the rates of
the three separable convs of ``exit_flow_block2``.

Names map to TF DeepLab checkpoints as ``entry_flow_block1/separable_conv1/depthwise/conv`` ↔
``xception_65/entry_flow/block1/unit_1/xception_module/separable_conv1_depthwise``;
``…/pointwise/…`` ↔ ``…_pointwise``; ``shortcut`` ↔ ``…/shortcut``; ``middle_flow_unit{k}`` ↔
``middle_flow/block1/unit_{k}``. (TF uses BN eps 1e-3; ours follows the torchvision defaults.)

Parameters (features only): 37,867,312 at width 1.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.models.layers import ConvBN, SeparableConvBN

Dtype = Any

# (name, channels of the three separable convs, shortcut type, stride) — TF DeepLab xception_65.
ENTRY_FLOW = (
    ("entry_flow_block1", (128, 128, 128), "conv", 2),
    ("entry_flow_block2", (256, 256, 256), "conv", 2),
    ("entry_flow_block3", (728, 728, 728), "conv", 2),
)
MIDDLE_FLOW = ((728, 728, 728), "sum", 1)
EXIT_FLOW = (
    ("exit_flow_block1", (728, 1024, 1024), "conv", 2),
    ("exit_flow_block2", (1536, 1536, 2048), "none", 1),
)


class XceptionUnit(nn.Module):
    """Three 3×3 depthwise-separable convs (the last one strided) plus a shortcut.

    Attributes:
      depths: output channels of the three separable convs.
      shortcut: ``"conv"`` (1×1 conv + BN, strided), ``"sum"`` (identity) or ``"none"``.
      strides: stride of the third separable conv (and of the conv shortcut).
      rates: atrous rate of each of the three depthwise convs.
      act_in_separable: ReLU after depthwise and pointwise convs instead of before each
        separable conv.
      dtype: compute dtype.

    Returns (``__call__``): ``(output, output of the second separable conv)``.
    """

    depths: Sequence[int]
    shortcut: str = "conv"
    strides: int = 1
    rates: Sequence[int] = (1, 1, 1)
    act_in_separable: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        if self.shortcut not in ("conv", "sum", "none"):
            raise ValueError(f"XceptionUnit: shortcut must be conv/sum/none, got {self.shortcut!r}")
        act = nn.relu if self.act_in_separable else None
        y, second = x, x
        for i in range(3):
            if not self.act_in_separable:
                y = nn.relu(y)
            y = SeparableConvBN(
                self.depths[i],
                3,
                strides=self.strides if i == 2 else 1,
                dilation=self.rates[i],
                act_depthwise=self.act_in_separable,
                act=act,
                dtype=self.dtype,
                name=f"separable_conv{i + 1}",
            )(y, train=train)
            if i == 1:
                second = y
        if self.shortcut == "conv":
            y = y + ConvBN(
                self.depths[-1], 1, self.strides, act=None, dtype=self.dtype, name="shortcut"
            )(x, train=train)
        elif self.shortcut == "sum":
            y = y + x
        return y, second


class Xception65(nn.Module):
    """Aligned Xception-65 feature extractor.

    Attributes:
      output_stride: 8, 16 or 32.
      multi_grid: rate multipliers of the three separable convs of ``exit_flow_block2``.
      width_mult: channel multiplier (tiny test variants); widths are ``max(8, int(c * w))``.
      middle_units: number of middle-flow units (16 in Xception-65).
      dtype: compute dtype.

    Returns (``__call__``): dict with ``"low"`` (stride 4, 256 channels: second separable conv of
    ``entry_flow_block2``), ``"entry"`` (entry-flow output), ``"middle"`` (middle-flow output,
    728 channels) and ``"out"`` (2048 channels).
    """

    output_stride: int = 16
    multi_grid: Sequence[int] = (1, 1, 1)
    width_mult: float = 1.0
    middle_units: int = 16
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if self.output_stride not in (8, 16, 32):
            raise ConfigError(
                f"Xception65: output_stride must be 8, 16 or 32, got {self.output_stride}"
            )
        if len(self.multi_grid) != 3:
            raise ConfigError(f"Xception65: multi_grid needs 3 entries, got {self.multi_grid!r}")
        ch = lambda c: max(8, int(c * self.width_mult))
        x = x.astype(self.dtype)
        x = ConvBN(ch(32), 3, 2, dtype=self.dtype, name="entry_flow_conv1_1")(x, train=train)
        x = ConvBN(ch(64), 3, dtype=self.dtype, name="entry_flow_conv1_2")(x, train=train)

        units = [(n, d, s, st) for n, d, s, st in ENTRY_FLOW]
        units += [(f"middle_flow_unit{k + 1}", *MIDDLE_FLOW) for k in range(self.middle_units)]
        units += [(n, d, s, st) for n, d, s, st in EXIT_FLOW]
        feats = {}
        current_stride, rate = 2, 1
        for name, depths, shortcut, stride in units:
            if current_stride == self.output_stride:
                unit_stride, unit_rate = 1, rate
                rate *= stride
            else:
                unit_stride, unit_rate = stride, 1
                current_stride *= stride
            last = name == "exit_flow_block2"
            rates = tuple(unit_rate * m for m in self.multi_grid) if last else (unit_rate,) * 3
            x, second = XceptionUnit(
                tuple(ch(d) for d in depths),
                shortcut,
                unit_stride,
                rates,
                act_in_separable=last,
                dtype=self.dtype,
                name=name,
            )(x, train=train)
            if name == "entry_flow_block2":
                feats["low"] = second
            elif name == "entry_flow_block3":
                feats["entry"] = x
            elif name.startswith("middle_flow"):
                feats["middle"] = x
        feats["out"] = x
        return feats
