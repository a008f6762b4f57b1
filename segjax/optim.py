"""Optax optimisers and schedules from the config.

Learning-rate schedules: ``poly`` (linear warmup then ``(1 - t)**power`` decay to ``end_lr``),
``cosine`` (warmup then cosine to ``end_lr``), ``constant`` (warmup then flat). Weight decay
skips biases and normalisation parameters (every parameter with fewer than 2 dimensions).
"""

import jax
import ml_collections
import optax


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
    else:
        raise ValueError(
            f"unknown config.optim.schedule {config.schedule!r}; expected poly, cosine or constant"
        )
    if warmup <= 0:
        return main
    ramp = optax.linear_schedule(lr * config.warmup_init_factor, lr, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def decay_mask(params):
    """True for parameters that get weight decay: kernels, not biases or norm scales/offsets."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    config: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds ``(optimizer, schedule)`` from ``config.optim``.

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
        raise ValueError(f"unknown config.optim.name {config.name!r}; expected sgd or adamw")
    return optax.chain(*parts), schedule
