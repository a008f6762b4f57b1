"""The Mask R-CNN backbone: ResNet with frozen BatchNorm, and the feature pyramid on C2–C5.

torchvision's ``resnet_fpn_backbone``: a ResNet ``body`` whose BatchNorms are
``FrozenBatchNorm2d`` (affine and statistics fixed: buffers, not parameters), the stage outputs
C2–C5 (``layer1`` … ``layer4``) fed to a ``FeaturePyramidNetwork`` with 256 channels, plus the
extra ``"pool"`` level ``P6 = max_pool2d(P5, kernel 1, stride 2)`` that only the RPN uses.

Flax ↔ torchvision names (mechanical; conv kernels OIHW → HWIO):

=================================================  ==========================================
Flax                                                torchvision
=================================================  ==========================================
``params/body/…`` (convs, as :mod:`resnet`)          ``backbone.body.…``
``batch_stats/body/…/bn*/{scale,bias,mean,var}``     ``backbone.body.….{weight,bias,running_mean,
                                                    running_var}`` (frozen BN buffers)
``params/fpn/inner_blocks_{i}/{kernel,bias}``       ``backbone.fpn.inner_blocks.{i}.{weight,bias}``
``params/fpn/layer_blocks_{i}/{kernel,bias}``       ``backbone.fpn.layer_blocks.{i}.{weight,bias}``
=================================================  ==========================================

(torchvision ≥ 0.13 stores the FPN convs as ``inner_blocks.{i}.0.…`` and loads the older
``inner_blocks.{i}.…`` keys too.)
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segjax.models.backbones import resnet

Dtype = Any

# torchvision's FeaturePyramidNetwork initialisation: kaiming_uniform_(a=1), zero bias.
fpn_init = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")

# The stage features the pyramid is built on, in increasing depth (C2 … C5).
PYRAMID_STAGES = ("layer1", "layer2", "layer3", "layer4")


class FrozenBatchNorm(nn.Module):
    """torchvision's ``FrozenBatchNorm2d``: ``y = x·scale + shift`` with fixed statistics.

    ``scale = weight · rsqrt(running_var + eps)``, ``shift = bias − running_mean · scale``. All
    four vectors live in the ``batch_stats`` collection (they are buffers in torchvision, not
    parameters, so ``params`` counts what torchvision's ``parameters()`` counts); nothing ever
    updates them, in training or not. Initialised to the identity (1, 0, 0, 1).

    Attributes:
      eps: added to the variance; torchvision's default 1e-5, its COCO_V1 detection weights run
        with 0 (``overwrite_eps``).
      dtype: compute dtype (the statistics stay float32).
    """

    eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]

        def stat(name, init):
            return self.variable("batch_stats", name, init, (features,), jnp.float32).value

        weight = stat("scale", jnp.ones)
        bias = stat("bias", jnp.zeros)
        mean = stat("mean", jnp.zeros)
        var = stat("var", jnp.ones)
        scale = weight * jax.lax.rsqrt(var + self.eps)
        shift = bias - mean * scale
        return x.astype(self.dtype) * scale.astype(self.dtype) + shift.astype(self.dtype)


def _frozen_norm(train: bool, dtype: Dtype, *, eps: float, name: str | None = None) -> nn.Module:
    """A :class:`FrozenBatchNorm` in the ``norm(train, dtype, name=…)`` form ResNet calls."""
    del train  # frozen: the same affine map in training and inference
    return FrozenBatchNorm(eps=eps, dtype=dtype, name=name)


def frozen_batch_norm(eps: float = 1e-5):
    """The ``norm`` factory of a :class:`~segjax.models.backbones.resnet.ResNet` with frozen BN."""
    return functools.partial(_frozen_norm, eps=eps)


def resize_nearest(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """Nearest resize of NHWC ``x`` to ``size`` = (H, W), as PyTorch's ``mode="nearest"``.

    PyTorch takes source index ``min(floor(dst · (in / out)), in − 1)`` with the ratio in float
    (not the half-pixel rule of ``jax.image.resize``); the indices are static, so this is a
    gather of constant rows and columns (for the FPN's exact ×2 it is a repeat).
    """

    def source_indices(n_in: int, n_out: int) -> np.ndarray:
        if n_in == n_out:
            return np.arange(n_out)
        ratio = np.float32(n_in) / np.float32(n_out)
        index = np.floor(np.arange(n_out, dtype=np.float32) * ratio).astype(np.int64)
        return np.minimum(index, n_in - 1)

    h, w = size
    rows = source_indices(x.shape[1], h)
    cols = source_indices(x.shape[2], w)
    return x[:, rows][:, :, cols]


class FeaturePyramid(nn.Module):
    """torchvision's ``FeaturePyramidNetwork`` with the ``LastLevelMaxPool`` extra block.

    Lateral 1×1 "inner" convs bring every input to ``out_channels``; top-down, the coarser
    merged map is resized (nearest, to the lateral's size) and added; a 3×3 "layer" conv
    smooths each merged map. The extra level is ``P5[:, ::2, ::2]`` (max-pool with kernel 1,
    stride 2).

    Attributes:
      out_channels: channels of every pyramid level (256 in torchvision).
      dtype: compute dtype.
    """

    out_channels: int = 256
    dtype: Dtype = jnp.float32

    def _conv(self, kernel: int, name: str) -> nn.Conv:
        pad = (kernel - 1) // 2
        return nn.Conv(
            self.out_channels,
            (kernel, kernel),
            padding=((pad, pad), (pad, pad)),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=fpn_init,
            name=name,
        )

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
        """``(P2, …, P5, P6)`` from ``(C2, …, C5)`` (each NHWC, increasing stride)."""
        n = len(features)
        last_inner = self._conv(1, f"inner_blocks_{n - 1}")(features[-1])
        results = [self._conv(3, f"layer_blocks_{n - 1}")(last_inner)]
        for i in range(n - 2, -1, -1):
            lateral = self._conv(1, f"inner_blocks_{i}")(features[i])
            last_inner = lateral + resize_nearest(last_inner, lateral.shape[1:3])
            results.insert(0, self._conv(3, f"layer_blocks_{i}")(last_inner))
        results.append(results[-1][:, ::2, ::2])
        return tuple(results)


class ResNetFPN(nn.Module):
    """torchvision's ``BackboneWithFPN`` over a frozen-BN ResNet: images → ``(P2, …, P6)``.

    Attributes:
      depth: ResNet depth (50 for ``maskrcnn_resnet50_fpn``).
      width: ResNet base width (64; small values give test variants).
      stage_blocks: ResNet blocks per stage (``None``: the depth's standard counts).
      fpn_channels: channels of the pyramid (256).
      bn_eps: frozen-BN epsilon (1e-5; 0 for torchvision's COCO_V1 Mask R-CNN weights).
      dtype: compute dtype.
    """

    depth: int = 50
    width: int = 64
    stage_blocks: Sequence[int] | None = None
    fpn_channels: int = 256
    bn_eps: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, ...]:
        body = resnet.ResNet(
            depth=self.depth,
            width=self.width,
            stage_blocks=self.stage_blocks,
            dtype=self.dtype,
            norm=frozen_batch_norm(self.bn_eps),
            name="body",
        )
        stages = body(images, train=False)
        return FeaturePyramid(self.fpn_channels, dtype=self.dtype, name="fpn")(
            [stages[k] for k in PYRAMID_STAGES]
        )
