"""U-Net (Ronneberger et al. 2015).

``UNet`` is the padded form: "same" 3×3 convs with BatchNorm, any input size whose sides are
divisible by ``2**depth`` works directly and other sizes are padded by reflection and cropped
back, so the output always has the input's height and width.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.models.layers import ConvBN

Dtype = Any


class DoubleConv(nn.Module):
    """Two 3×3 conv + BN + ReLU."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        x = ConvBN(self.features, 3, dtype=self.dtype, name="conv1")(x, train=train)
        return ConvBN(self.features, 3, dtype=self.dtype, name="conv2")(x, train=train)


class UNet(nn.Module):
    """Padded U-Net with BatchNorm.

    Attributes:
      num_classes: output channels.
      width: channels of the first level; level ``i`` has ``width * 2**i``.
      depth: number of 2× downsamplings.
      dtype: compute dtype.
    """

    num_classes: int
    width: int = 64
    depth: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        b, h, w, _ = images.shape
        mult = 2**self.depth
        ph, pw = (-h) % mult, (-w) % mult
        x = images.astype(self.dtype)
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "edge"
            x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
        skips = []
        for level in range(self.depth):
            x = DoubleConv(self.width * 2**level, self.dtype, name=f"down{level}")(x, train=train)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = DoubleConv(self.width * 2**self.depth, self.dtype, name="bottom")(x, train=train)
        for level in reversed(range(self.depth)):
            feats = self.width * 2**level
            x = nn.ConvTranspose(feats, (2, 2), (2, 2), dtype=self.dtype, name=f"upconv{level}")(x)
            x = jnp.concatenate([skips[level], x], axis=-1)
            x = DoubleConv(feats, self.dtype, name=f"up{level}")(x, train=train)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(x)
        return {"out": logits[:, :h, :w].astype(jnp.float32)}


MODELS = {
    "unet": UNet,
    "unet_small": functools.partial(UNet, width=16, depth=3),
    "unet_tiny": functools.partial(UNet, width=4, depth=2),
}
