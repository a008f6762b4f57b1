"""What differs between semantic and instance segmentation, behind one small interface.

The trainer (:mod:`segjax.trainer`) and ``segjax.evaluate`` own the loop, the state, sharding,
checkpoints and logs; a task supplies the rest (DESIGN.md):

- ``check_dataset(config, info)``: the dataset fits the model (classes, task);
- ``init_variables(model, config, rng)``: ``{"params", "batch_stats"}``;
- ``loss_fn(model, config)``: ``(params, batch_stats, batch, rng) → (loss, (batch_stats,
  terms))``, ``terms`` a dict of named scalars logged beside the loss; ``loss_fields``: the
  batch fields it reads besides ``image``;
- ``trainable(model)``: ``None`` (everything trains) or ``params → bool tree``;
- ``eval_stream``, ``compile_eval_step``, ``evaluate`` (the one evaluation loop, returning a
  result with ``summary()``, ``num_images`` and ``examples``);
- ``log_line(summary)``, ``tables(summary, info)``, ``write_images(logger, step, examples,
  info, config)``: what is logged, printed and shown in TensorBoard.

The config chooses the task through its model: :func:`for_model`.
"""

from segjax.models.maskrcnn import MaskRCNN
from segjax.tasks.instance import InstanceTask
from segjax.tasks.semantic import SemanticTask

Task = SemanticTask | InstanceTask


def for_model(model) -> Task:
    """The task of ``model``: instance segmentation for Mask R-CNN, semantic otherwise."""
    return InstanceTask() if isinstance(model, MaskRCNN) else SemanticTask()


__all__ = ["InstanceTask", "SemanticTask", "Task", "for_model"]
