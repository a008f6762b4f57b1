"""The model zoo: one explicit name → constructor table.

Every model is a pure ``flax.linen.Module``. ``module.apply(variables, images, train=False)``
takes float images ``[B, H, W, 3]`` (NHWC, already normalised) and returns a dict with ``"out"``:
float32 logits ``[B, H, W, num_classes]`` at the input resolution (models with valid
convolutions document their output size) and ``"aux"`` when the model has an auxiliary head.

Each model module exports a ``MODELS`` dict (name → constructor taking ``num_classes`` and
keyword arguments); the table below merges them explicitly, so a name can never drift from code.
"""

from collections.abc import Callable

import flax.linen as nn

from segjax.errors import ConfigError, UnknownNameError
from segjax.models import deeplab, fcn, lraspp, maskrcnn, pspnet, unet

_TABLE: dict[str, Callable[..., nn.Module]] = {
    **unet.MODELS,
    **fcn.MODELS,
    **deeplab.MODELS,
    **lraspp.MODELS,
    **pspnet.MODELS,
    **maskrcnn.MODELS,
}


def names() -> list[str]:
    """Returns every registered model name, sorted."""
    return sorted(_TABLE)


def create(name: str, *, num_classes: int, **kwargs) -> nn.Module:
    """Builds the model registered as ``name``.

    Args:
      name: a name from :func:`names`.
      num_classes: number of output classes (logit channels).
      **kwargs: model-specific options (``dtype``, ``output_stride`` …).

    Returns:
      A ``flax.linen.Module``.

    Raises:
      KeyError: unknown name (the message lists the known ones).
    """
    if name not in _TABLE:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(names())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    return _TABLE[name](num_classes=num_classes, **kwargs)
