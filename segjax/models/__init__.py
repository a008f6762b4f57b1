"""The model zoo: one explicit name → constructor table.

Every model is a pure ``flax.linen.Module``. ``module.apply(variables, images, train=False)``
takes float images ``[B, H, W, 3]`` (NHWC, already normalised) and returns a dict with ``"out"``:
float32 logits ``[B, H, W, num_classes]`` at the input resolution (models with valid
convolutions document their output size) and ``"aux"`` when the model has an auxiliary head.

Each model module exports a ``MODELS`` dict (name → constructor taking ``num_classes`` and
keyword arguments); the table below merges them explicitly, so a name can never drift from code,
and names the task (:mod:`segjax.tasks`) each module's models are trained and evaluated by.
"""

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from segjax.errors import ConfigError, UnknownNameError
from segjax.models import deeplab, fcn, lraspp, maskrcnn, pspnet, unet

# ``config.dtype`` → the compute dtype models are built in (parameters stay float32).
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the model table: the constructor and the name of its task
    (:func:`segjax.tasks.get`)."""

    build: Callable[..., nn.Module]
    task: str


def _entries(constructors: dict, task: str) -> dict[str, Entry]:
    """The ``MODELS`` dict of a model module as table rows of ``task``."""
    return {name: Entry(build, task) for name, build in constructors.items()}


_TABLE: dict[str, Entry] = {
    **_entries(unet.MODELS, task="semantic"),
    **_entries(fcn.MODELS, task="semantic"),
    **_entries(deeplab.MODELS, task="semantic"),
    **_entries(lraspp.MODELS, task="semantic"),
    **_entries(pspnet.MODELS, task="semantic"),
    **_entries(maskrcnn.MODELS, task="instance"),
}


def names() -> list[str]:
    """Returns every registered model name, sorted."""
    return sorted(_TABLE)


def _entry(name: str) -> Entry:
    """The table row of ``name``; :class:`~segjax.errors.UnknownNameError` (a ``KeyError``,
    listing the known names) for an unknown one."""
    if name not in _TABLE:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _TABLE[name]


def task_name(name: str) -> str:
    """The name of the task the model ``name`` belongs to (``"semantic"``, ``"instance"`` …),
    read from the table without building the model.

    Raises:
      KeyError: unknown name (the message lists the known ones).
    """
    return _entry(name).task


def compute_dtype(config) -> jnp.dtype:
    """The compute dtype named by ``config.dtype``.

    Raises:
      ConfigError: an unknown dtype name.
    """
    if config.dtype not in DTYPES:
        raise ConfigError(f"config.dtype {config.dtype!r} unknown; expected one of {list(DTYPES)}")
    return DTYPES[config.dtype]


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
    entry = _entry(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    return entry.build(num_classes=num_classes, **kwargs)
