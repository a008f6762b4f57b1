"""U-Net (Ronneberger et al. 2015).

``UNet`` is the padded form: "same" 3×3 convs with BatchNorm, any input size whose sides are
divisible by ``2**depth`` works directly and other sizes are padded by reflection and cropped
back, so the output always has the input's height and width.

``UNetOriginal`` is the paper's network: valid (unpadded) 3×3 convs with bias and ReLU, 2×2 max
pools, 2×2 up-convolutions halving the channels, crop-and-concatenate of the contracting
features, no BatchNorm, dropout at the end of the contracting path; 572×572 in → 388×388 out
(:func:`unet_original_output_size`). With ``mirror_pad=True`` it predicts any input size at
that size (one mirror-padded tile), which is what a trainer expecting the input resolution
needs. :func:`overlap_tile_predict` is the paper's overlap-tile strategy for large images:
tiles of valid output, each predicted from its mirror-extended context.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.models.layers import ConvBN
from segjax.ops.resample import max_pool2x2, upconv2x2

Dtype = Any


class UpConv2x2(nn.Module):
    """``nn.ConvTranspose(features, (2, 2), (2, 2))`` with the same parameters (``kernel``
    ``[2, 2, in, out]``, ``bias``), computed by :func:`segjax.ops.resample.upconv2x2` (fast
    backward pass)."""

    features: int
    dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (2, 2, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        y = upconv2x2(x.astype(self.dtype), kernel.astype(self.dtype))
        return y + bias.astype(self.dtype)


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
            x = max_pool2x2(x)
        x = DoubleConv(self.width * 2**self.depth, self.dtype, name="bottom")(x, train=train)
        for level in reversed(range(self.depth)):
            feats = self.width * 2**level
            x = UpConv2x2(feats, self.dtype, name=f"upconv{level}")(x)
            x = jnp.concatenate([skips[level], x], axis=-1)
            x = DoubleConv(feats, self.dtype, name=f"up{level}")(x, train=train)
        logits = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, name="classifier")(x)
        return {"out": logits[:, :h, :w].astype(jnp.float32)}


# The paper: Gaussian weights with standard deviation sqrt(2 / N), N = k·k·C_in (He normal).
unet_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def unet_original_output_size(input_size: int, depth: int = 4) -> int:
    """Output side of :class:`UNetOriginal` for an input side (572 → 388 at depth 4).

    Raises:
      ValueError: a size that some 2×2 max pool would have to split unevenly, or too small.
    """
    size = input_size
    for level in range(depth):
        size -= 4
        if size < 2 or size % 2:
            raise ConfigError(
                f"unet_original: input size {input_size} gives an odd or empty map ({size}) "
                f"before pool {level + 1}; valid sizes are {unet_original_input_size(4, depth)} "
                f"+ {2**depth}·k"
            )
        size //= 2
    size -= 4
    if size < 1:
        raise ConfigError(f"unet_original: input size {input_size} is too small at depth {depth}")
    for _ in range(depth):
        size = 2 * size - 4
    if size < 1:
        raise ConfigError(f"unet_original: input size {input_size} is too small at depth {depth}")
    return size


def unet_original_input_size(min_output_size: int, depth: int = 4) -> int:
    """Smallest valid input side whose output side is at least ``min_output_size``."""
    # Output o = 2**depth · b − 4·(2**depth − 1) for a bottom map of side b ≥ 1.
    mult = 2**depth
    bottom = max(1, math.ceil((min_output_size + 4 * (mult - 1)) / mult))
    while mult * bottom - 4 * (mult - 1) < 1:
        bottom += 1
    return mult * (bottom + 4) + 4 * (mult - 1)


def unet_original_margin(depth: int = 4) -> int:
    """Context lost on each side by the valid convolutions (92 px at depth 4)."""
    return 6 * 2**depth - 4


def _center_crop(x: jax.Array, height: int, width: int) -> jax.Array:
    top = (x.shape[1] - height) // 2
    left = (x.shape[2] - width) // 2
    return x[:, top : top + height, left : left + width]


def mirror_pad(x: jax.Array, pads: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """Mirror-pads the spatial axes of NHWC ``x`` (reflection without repeating the edge).

    Pads wider than the image reflect repeatedly (the mirrored image is mirrored again), so any
    pad works for images of at least 2 pixels; a 1-pixel axis is repeated.
    """
    (top, bottom), (left, right) = pads
    for axis, (before, after) in ((1, (top, bottom)), (2, (left, right))):
        if x.shape[axis] == 1:
            widths = [(0, 0)] * x.ndim
            widths[axis] = (before, after)
            x = jnp.pad(x, widths, mode="edge")
            continue
        while before or after:
            step_before = min(before, x.shape[axis] - 1)
            step_after = min(after, x.shape[axis] - 1)
            widths = [(0, 0)] * x.ndim
            widths[axis] = (step_before, step_after)
            x = jnp.pad(x, widths, mode="reflect")
            before -= step_before
            after -= step_after
    return x


class ValidDoubleConv(nn.Module):
    """Two valid 3×3 convs with bias, each followed by ReLU (each shrinks the map by 2)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for name in ("conv1", "conv2"):
            x = nn.Conv(
                self.features,
                (3, 3),
                padding="VALID",
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=unet_conv_init,
                name=name,
            )(x)
            x = nn.relu(x)
        return x


class UNetOriginal(nn.Module):
    """The original U-Net: valid convs, crop-and-concat, no BatchNorm.

    With ``width=64, depth=4`` it has 31,030,658 parameters for 1 input channel and 2 classes.

    Attributes:
      num_classes: output channels.
      width: channels of the first level (64); level ``i`` has ``width * 2**i``.
      depth: number of 2× downsamplings (4).
      dropout_rate: dropout on the last two contracting levels ("drop-out layers at the end of
        the contracting path"); ``"dropout"`` rng when training.
      mirror_pad: ``False`` (paper): the output is the valid centre, side
        :func:`unet_original_output_size` (388 for 572) and the input side must be valid.
        ``True``: any input size; the input is mirror-padded by :func:`unet_original_margin`
        (plus up to a valid size) and the output has the input's height and width.
      dtype: compute dtype.
    """

    num_classes: int
    width: int = 64
    depth: int = 4
    dropout_rate: float = 0.5
    mirror_pad: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        height, width = images.shape[1:3]
        x = images.astype(self.dtype)
        if self.mirror_pad:
            margin = unet_original_margin(self.depth)
            out_h = unet_original_input_size(height, self.depth) - 2 * margin
            out_w = unet_original_input_size(width, self.depth) - 2 * margin
            pads = ((margin, margin + out_h - height), (margin, margin + out_w - width))
            x = mirror_pad(x, pads)
        for side in x.shape[1:3]:
            unet_original_output_size(side, self.depth)  # raises on an invalid size
        skips = []
        for level in range(self.depth):
            x = ValidDoubleConv(self.width * 2**level, self.dtype, name=f"down{level}")(x)
            if level == self.depth - 1:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            skips.append(x)
            x = max_pool2x2(x)
        x = ValidDoubleConv(self.width * 2**self.depth, self.dtype, name="bottom")(x)
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        for level in reversed(range(self.depth)):
            feats = self.width * 2**level
            x = UpConv2x2(feats, self.dtype, unet_conv_init, name=f"upconv{level}")(x)
            skip = _center_crop(skips[level], x.shape[1], x.shape[2])
            x = jnp.concatenate([skip, x], axis=-1)
            x = ValidDoubleConv(feats, self.dtype, name=f"up{level}")(x)
        logits = nn.Conv(
            self.num_classes,
            (1, 1),
            dtype=self.dtype,
            param_dtype=jnp.float32,
            kernel_init=unet_conv_init,
            name="classifier",
        )(x)
        if self.mirror_pad:
            logits = logits[:, :height, :width]
        return {"out": logits.astype(jnp.float32)}


def overlap_tile_predict(
    predict_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    *,
    tile_size: int,
    margin: int,
    tiles_per_call: int | None = None,
) -> jax.Array:
    """The U-Net overlap-tile strategy: seamless prediction of an image of any size.

    The image is mirror-padded by ``margin`` on every side (and up to a whole number of tiles
    at the bottom/right); each ``tile_size``² block of the output is predicted from the
    ``(tile_size + 2·margin)``² input window around it, so every output pixel sees its full
    context and tiles meet without seams. Pure and jit-able (shapes are static).

    Args:
      predict_fn: maps ``[N, tile_size + 2·margin, same, C]`` images to
        ``[N, tile_size, tile_size, K]`` outputs (e.g. ``UNetOriginal`` logits; with the paper's
        sizes ``tile_size=388, margin=92`` and input tiles 572).
      images: ``[B, H, W, C]``, any ``H, W ≥ 1``.
      tile_size: side of the output tile.
      margin: context on each side (:func:`unet_original_margin` for ``UNetOriginal``).
      tiles_per_call: tiles per ``predict_fn`` call (``None`` = all tiles at once).

    Returns:
      ``[B, H, W, K]`` predictions.

    Raises:
      ValueError: ``predict_fn`` returned a wrong shape, or bad sizes.
    """
    if tile_size < 1 or margin < 0:
        raise ConfigError(f"overlap_tile_predict: tile_size {tile_size}, margin {margin} invalid")
    batch, height, width, _ = images.shape
    rows, cols = -(-height // tile_size), -(-width // tile_size)
    padded = mirror_pad(
        images,
        (
            (margin, margin + rows * tile_size - height),
            (margin, margin + cols * tile_size - width),
        ),
    )
    window = tile_size + 2 * margin
    tiles = [
        padded[:, r * tile_size : r * tile_size + window, c * tile_size : c * tile_size + window]
        for r in range(rows)
        for c in range(cols)
    ]
    tiles = jnp.concatenate(tiles, axis=0)  # [rows·cols·B, window, window, C], tile-major
    chunk = tiles.shape[0] if tiles_per_call is None else max(1, tiles_per_call)
    outputs = []
    for start in range(0, tiles.shape[0], chunk):
        out = predict_fn(tiles[start : start + chunk])
        expected = (min(chunk, tiles.shape[0] - start), tile_size, tile_size)
        if tuple(out.shape[:3]) != expected:
            raise ValueError(
                f"overlap_tile_predict: predict_fn returned {tuple(out.shape)}, expected "
                f"{expected} + (K,) for input tiles of {window}x{window}"
            )
        outputs.append(out)
    out = jnp.concatenate(outputs, axis=0)
    out = out.reshape(rows, cols, batch, tile_size, tile_size, out.shape[-1])
    out = out.transpose(2, 0, 3, 1, 4, 5).reshape(
        batch, rows * tile_size, cols * tile_size, out.shape[-1]
    )
    return out[:, :height, :width]


def unet_original_tile_geometry(tile_size: int = 388, depth: int = 4) -> tuple[int, int]:
    """``(tile_size, margin)`` for :func:`overlap_tile_predict` with :class:`UNetOriginal`.

    ``tile_size`` is rounded up to a valid output side (388 stays 388; input tiles are 572).
    """
    margin = unet_original_margin(depth)
    out = unet_original_input_size(tile_size, depth) - 2 * margin
    return out, margin


MODELS = {
    "unet": UNet,
    "unet_small": functools.partial(UNet, width=16, depth=3),
    "unet_tiny": functools.partial(UNet, width=4, depth=2),
    "unet_original": UNetOriginal,
    "unet_original_tiny": functools.partial(UNetOriginal, width=4, depth=2),
}
