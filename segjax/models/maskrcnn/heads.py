"""The RoI heads' networks: torchvision's ``TwoMLPHead``, ``FastRCNNPredictor``,
``MaskRCNNHeads`` and ``MaskRCNNPredictor``. They act on pooled RoI features
``[..., ph, pw, C]`` (any leading dims: ``[B, K]`` for a batch).

Flax ↔ torchvision (``roi_heads.`` prefix; conv kernels OIHW → HWIO, Linear ``[out, in]`` → Dense
``[in, out]``):

=============================================  ==================================================
Flax                                            torchvision
=============================================  ==================================================
``box_head/fc6/{kernel,bias}`` [7, 7, C, 1024]  ``box_head.fc6.{weight,bias}`` [1024, C·7·7]: a
                                                Linear on the (C, H, W)-flattened RoI, stored as
                                                the equivalent 7×7 conv (reshape to OIHW → HWIO)
``box_head/fc7/…`` (Dense)                      ``box_head.fc7.…``
``box_predictor/{cls_score,bbox_pred}/…``       ``box_predictor.{cls_score,bbox_pred}.…`` (Linear)
``mask_head/mask_fcn{1..4}/…``                  ``mask_head.mask_fcn{1..4}.…`` (≥ 0.13:
                                                ``mask_head.{0..3}.0.…``)
``mask_predictor/conv5_mask/kernel``            ``mask_predictor.conv5_mask.weight`` [in, out, 2, 2]
[2, 2, out, in] (HWOI) and ``bias``             (ConvTranspose2d; a conv's OIHW → HWIO transpose)
``mask_predictor/mask_fcn_logits/…``            ``mask_predictor.mask_fcn_logits.…``
=============================================  ==================================================
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import conv_init

Dtype = Any

# torch.nn.Linear's default weight initialisation (kaiming_uniform_ with a = √5: U(±1/√fan_in)).
linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _flat_rois(x: jax.Array, trailing: int) -> tuple[jax.Array, tuple[int, ...]]:
    """``x`` with its leading dims (all but ``trailing``) merged into one, and those dims."""
    lead = x.shape[: x.ndim - trailing]
    return x.reshape(-1, *x.shape[x.ndim - trailing :]), lead


class DenseOverRoI(nn.Module):
    """A Linear layer on whole ``[N, ph, pw, C]`` RoIs, its kernel stored as a ``ph×pw`` conv's.

    The kernel ``[ph, pw, C, F]`` is torchvision's Linear weight ``[F, C·ph·pw]`` (which acts
    on the (C, H, W)-flattened RoI) reshaped to OIHW and transposed to HWIO — the layout of
    segjax's VGG fc6 — and the layer runs as one matmul (as a VALID ph×pw convolution XLA:CPU
    took 12× longer for torchvision's 1000 RoIs).

    Attributes:
      features: output width F.
      dtype: compute dtype.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, rois: jax.Array) -> jax.Array:
        n, ph, pw, c = rois.shape
        kernel = self.param("kernel", linear_init, (ph, pw, c, self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = rois.astype(self.dtype).reshape(n, ph * pw * c)
        y = x @ kernel.astype(self.dtype).reshape(ph * pw * c, self.features)
        return y + bias.astype(self.dtype)


class TwoMLPHead(nn.Module):
    """``fc6`` on the whole ``ph×pw×C`` RoI + ReLU, ``fc7`` + ReLU: ``[..., ph, pw, C] → [..., R]``.

    Attributes:
      representation_size: width of both layers (1024).
      dtype: compute dtype.
    """

    representation_size: int = 1024
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, rois: jax.Array) -> jax.Array:
        x, lead = _flat_rois(rois, 3)
        x = nn.relu(DenseOverRoI(self.representation_size, dtype=self.dtype, name="fc6")(x))
        x = nn.Dense(
            self.representation_size,
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=linear_init,
            name="fc7",
        )(x)
        return nn.relu(x).reshape(*lead, -1)


class FastRCNNPredictor(nn.Module):
    """Class logits ``[..., num_classes]`` and per-class box deltas ``[..., 4·num_classes]``.

    Attributes:
      num_classes: classes including the background (91 for COCO).
      dtype: compute dtype (outputs are float32).
    """

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        def dense(features, name):
            return nn.Dense(
                features,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=linear_init,
                name=name,
            )

        class_logits = dense(self.num_classes, "cls_score")(x)
        box_regression = dense(4 * self.num_classes, "bbox_pred")(x)
        return class_logits.astype(jnp.float32), box_regression.astype(jnp.float32)


class MaskRCNNHeads(nn.Module):
    """Four 3×3 convs + ReLU (``mask_fcn1`` … ``mask_fcn4``) on ``[..., 14, 14, C]`` RoIs.

    Attributes:
      layers: output channels of each conv ((256, 256, 256, 256)).
      dtype: compute dtype.
    """

    layers: tuple[int, ...] = (256, 256, 256, 256)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, rois: jax.Array) -> jax.Array:
        x, lead = _flat_rois(rois, 3)
        for i, features in enumerate(self.layers, start=1):
            x = nn.Conv(
                features,
                (3, 3),
                padding=((1, 1), (1, 1)),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=conv_init,
                name=f"mask_fcn{i}",
            )(x)
            x = nn.relu(x)
        return x.reshape(*lead, *x.shape[1:])


class ConvTranspose2x2(nn.Module):
    """PyTorch's ``ConvTranspose2d(C, F, 2, stride=2)``: ``[N, H, W, C] → [N, 2H, 2W, F]``.

    With kernel = stride the output pixels ``(2i + a, 2j + b)`` each come from input pixel
    ``(i, j)`` alone, so the layer is one einsum and a reshape (no overlap-add). The kernel is
    stored HWOI (``kernel[a, b, o, c] = torch_weight[c, o, a, b]``), so torchvision's weight maps
    with the same transpose as a conv's.

    Attributes:
      features: output channels.
      dtype: compute dtype.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_channels = x.shape[-1]
        # torch's kaiming_normal_(mode="fan_out") on [in, out, 2, 2] has fan_out = in·4, which
        # is what flax's fan_out (last dim × receptive field) gives for this HWOI kernel.
        kernel = self.param("kernel", conv_init, (2, 2, self.features, in_channels), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        y = jnp.einsum("nhwc,aboc->nhawbo", x, kernel.astype(self.dtype))
        n, h, _, w, _, f = y.shape
        return y.reshape(n, 2 * h, 2 * w, f) + bias.astype(self.dtype)


class MaskRCNNPredictor(nn.Module):
    """``conv5_mask`` (transposed 2×2, stride 2) + ReLU, 1×1 ``mask_fcn_logits``: per-class logits.

    ``[..., 14, 14, C] → [..., 28, 28, num_classes]`` float32.

    Attributes:
      num_classes: classes including the background.
      dim_reduced: channels of ``conv5_mask`` (256).
      dtype: compute dtype.
    """

    num_classes: int
    dim_reduced: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, rois: jax.Array) -> jax.Array:
        x, lead = _flat_rois(rois, 3)
        x = nn.relu(ConvTranspose2x2(self.dim_reduced, dtype=self.dtype, name="conv5_mask")(x))
        x = nn.Conv(
            self.num_classes,
            (1, 1),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=conv_init,
            name="mask_fcn_logits",
        )(x)
        return x.astype(jnp.float32).reshape(*lead, *x.shape[1:])
