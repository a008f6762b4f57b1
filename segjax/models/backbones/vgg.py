"""VGG16 (Simonyan & Zisserman 2015) with fc6/fc7 convolutionalised, as FCN uses it.

fc6 is a 7×7 conv with 4096 channels and fc7 a 1×1 conv with 4096 channels, each followed by
ReLU and dropout (rate 0.5, ``"dropout"`` rng). Max pools are 2×2 / 2 with Caffe's rounding up
(``ceil_mode``), so odd sizes lose no pixels.

Two alignments (``paper_alignment``):

* ``True`` — the FCN reference: conv1_1 is padded by 100 and fc6 is a *valid* 7×7 conv, so any
  input size gives a score map of at least 1×1 and the heads crop with fixed offsets.
* ``False`` — "aligned": conv1_1 padded by 1 and fc6 padded by 3 (same size), so feature ``i``
  of the stride-``s`` map is centred on input pixel ``s·i + (s − 1)/2``.

``__call__(x, *, train)`` returns a dict: ``"pool3"`` (stride 8), ``"pool4"`` (stride 16),
``"pool5"`` (stride 32) and, with ``include_fc``, ``"fc7"`` (after ReLU and dropout).

Mapping to torchvision ``vgg16`` state-dict keys (conv kernels OIHW → HWIO):

==================================  ==============================================
Flax                                 torchvision
==================================  ==============================================
``features_{i}/kernel``, ``bias``    ``features.{i}.weight``, ``bias`` — i in 0, 2, 5, 7, 10, 12,
                                     14, 17, 19, 21, 24, 26, 28 (conv1_1 … conv5_3)
``fc6/kernel``, ``bias``             ``classifier.0.weight`` reshaped ``[4096, 512, 7, 7]`` → HWIO
``fc7/kernel``, ``bias``             ``classifier.3.weight`` reshaped ``[4096, 4096, 1, 1]`` → HWIO
==================================  ==============================================
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.models.layers import conv_init

Dtype = Any

# VGG16 "D" configuration: channels per conv, "M" for a max pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip

# torchvision: Linear layers normal(0, 0.01), bias 0 (convs: ``layers.conv_init``, bias 0).
fc_init = nn.initializers.normal(0.01)


def max_pool_ceil(x: jax.Array) -> jax.Array:
    """2×2 / 2 max pool rounding the output size up (Caffe, PyTorch ``ceil_mode=True``)."""
    ph, pw = x.shape[1] % 2, x.shape[2] % 2
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding=((0, ph), (0, pw)))


class VGG16(nn.Module):
    """Convolutionalised VGG16 feature extractor.

    Attributes:
      width: channels of the first block (64); block ``i`` has ``width * min(2**i, 8)``.
      fc_features: channels of fc6/fc7 (4096).
      include_fc: build fc6/fc7 and return ``"fc7"``.
      paper_alignment: pad conv1_1 by 100 and make fc6 valid (FCN reference); otherwise pad
        conv1_1 by 1 and fc6 by 3.
      dropout_rate: dropout after fc6 and fc7.
      cfg: layer configuration (VGG16 by default; the pool indices must stay five).
      dtype: compute dtype.
    """

    width: int = 64
    fc_features: int = 4096
    include_fc: bool = True
    paper_alignment: bool = True
    dropout_rate: float = 0.5
    cfg: Sequence[int | str] = VGG16_CFG
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        if sum(1 for c in self.cfg if c == "M") != 5:
            raise ConfigError(f"vgg: cfg needs exactly five max pools, got {self.cfg!r}")
        x = x.astype(self.dtype)
        features = {}
        num_pools = 0
        first = True
        for index, item in enumerate(self.cfg):
            if item == "M":
                x = max_pool_ceil(x)
                num_pools += 1
                if num_pools >= 3:
                    features[f"pool{num_pools}"] = x
                continue
            channels = int(item) * self.width // 64
            pad = 100 if (first and self.paper_alignment) else 1
            first = False
            # ``index`` follows torchvision's ``features`` Sequential (conv, relu, …, pool).
            x = nn.Conv(
                channels,
                (3, 3),
                padding=((pad, pad), (pad, pad)),
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=conv_init,
                name=f"features_{self._torch_index(index)}",
            )(x)
            x = nn.relu(x)
        if self.include_fc:
            fc = functools.partial(
                nn.Conv,
                self.fc_features,
                dtype=self.dtype,
                param_dtype=jnp.float32,
                kernel_init=fc_init,
            )
            pad = 0 if self.paper_alignment else 3
            x = nn.relu(fc((7, 7), padding=((pad, pad), (pad, pad)), name="fc6")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.relu(fc((1, 1), name="fc7")(x))
            features["fc7"] = x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return features

    def _torch_index(self, cfg_index: int) -> int:
        # Each conv occupies two slots (conv, ReLU) and each pool one in torchvision's Sequential.
        return sum(1 if c == "M" else 2 for c in self.cfg[:cfg_index])


# Tiny test variant: same layer structure, 8× fewer channels, fc6/fc7 with 32 channels.
TINY_KWARGS = {"width": 8, "fc_features": 32}


def vgg16(**kwargs) -> VGG16:
    """Full VGG16 (138M-parameter torchvision network minus its fc8 classifier)."""
    return VGG16(**kwargs)


def vgg16_tiny(**kwargs) -> VGG16:
    """Tiny VGG16 for tests (width 8, fc 32)."""
    return VGG16(**{**TINY_KWARGS, **kwargs})
