"""Optax optimisers and schedules from the config.

Learning-rate schedules: ``poly`` (linear warmup then ``(1 - t)**power`` decay to ``end_lr``),
``cosine`` (warmup then cosine to ``end_lr``), ``constant`` (warmup then flat), ``multistep``
(warmup then ``lr`` times ``decay_factor`` after each of ``decay_steps``: torchvision's
``MultiStepLR`` detection recipe). Weight decay skips biases and normalisation parameters
(every parameter with fewer than 2 dimensions). Frozen parameters (a ``trainable`` mask) get
no update at all: no gradient step, no weight decay, no optimiser state.
"""

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import optax

from segjax.errors import ConfigError


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """The schedule named by ``config.schedule`` over ``num_steps`` steps."""
    warmup = int(config.warmup_steps)
    decay_steps = max(num_steps - warmup, 1)
    lr, end_lr = float(config.lr), float(config.end_lr)
    if config.schedule == "poly":
        main = optax.polynomial_schedule(lr, end_lr, config.power, decay_steps)
    elif config.schedule == "cosine":
        main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr / lr if lr else 0.0)
    elif config.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif config.schedule == "multistep":
        main = _multistep(config, warmup)
    else:
        raise ConfigError(
            f"unknown config.optim.schedule {config.schedule!r}; expected poly, cosine, "
            "constant or multistep"
        )
    if warmup <= 0:
        return main
    ramp = optax.linear_schedule(lr * config.warmup_init_factor, lr, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def _multistep(config: ml_collections.ConfigDict, warmup: int) -> optax.Schedule:
    """``lr``, times ``decay_factor`` from each of ``decay_steps`` (absolute steps) on."""
    steps = [int(s) for s in config.decay_steps]
    if not steps or steps != sorted(steps) or steps[0] <= warmup:
        raise ConfigError(
            f"config.optim.decay_steps={tuple(config.decay_steps)}; the multistep schedule "
            f"needs increasing steps after the warm-up (warmup_steps={warmup})"
        )
    # join_schedules hands the main schedule the steps counted from the end of the warm-up.
    return optax.piecewise_constant_schedule(
        float(config.lr), {s - warmup: float(config.decay_factor) for s in steps}
    )


def decay_mask(params):
    """True for parameters that get weight decay: kernels, not biases or norm scales/offsets."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    config: ml_collections.ConfigDict,
    num_steps: int,
    trainable: Callable[[Any], Any] | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds ``(optimizer, schedule)`` from ``config.optim``.

    Args:
      config: ``config.optim``.
      num_steps: the run's length (the schedules' horizon).
      trainable: ``params → bool tree``: parameters marked False are frozen (their updates
        are zero and they hold no optimiser state); ``None``: everything trains.

    Raises:
      ValueError: unknown optimiser or schedule name.
    """
    schedule = learning_rate_schedule(config, num_steps)
    parts = []
    if config.clip_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
    if config.name == "sgd":
        if config.weight_decay:
            parts.append(optax.add_decayed_weights(config.weight_decay, mask=decay_mask))
        parts.append(
            optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
        )
    elif config.name == "adamw":
        parts.append(
            optax.adamw(
                schedule,
                b1=config.b1,
                b2=config.b2,
                eps=config.eps,
                weight_decay=config.weight_decay,
                mask=decay_mask,
            )
        )
    else:
        raise ConfigError(f"unknown config.optim.name {config.name!r}; expected sgd or adamw")
    tx = optax.chain(*parts)
    if trainable is not None:
        labels = lambda params: jax.tree.map(
            lambda t: "train" if t else "frozen", trainable(params)
        )
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule
