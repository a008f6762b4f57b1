"""The segmentation tasks behind one interface (:class:`~segjax.tasks.base.Task`).

A model's row in the model table names its task (:func:`segjax.models.task_name`), so the task
of a config is known without building anything: :func:`for_config`. :func:`create_model` builds
the config's model as its task configures it. Adding a task is one module under ``tasks/`` with
a :class:`Task` subclass, its entry in :data:`_TASKS` and its models' rows in the model table
(docs/TASKS.md).
"""

import flax.linen as nn
import ml_collections

from segjax import models
from segjax.errors import UnknownNameError
from segjax.tasks.base import EvalResult, Task
from segjax.tasks.instance import InstanceTask
from segjax.tasks.semantic import SemanticTask

_TASKS: dict[str, Task] = {task.name: task for task in (SemanticTask(), InstanceTask())}


def names() -> list[str]:
    """Every registered task name, sorted."""
    return sorted(_TASKS)


def get(name: str) -> Task:
    """The task registered as ``name``.

    Raises:
      UnknownNameError: no task has that name (the message lists the known ones).
    """
    if name not in _TASKS:
        raise UnknownNameError(f"unknown task {name!r}; known tasks: {', '.join(names())}")
    return _TASKS[name]


def for_config(config: ml_collections.ConfigDict) -> Task:
    """The task of ``config.model.name`` (its row in the model table); builds no model.

    Raises:
      KeyError: unknown model name (the message lists the known ones).
    """
    return get(models.task_name(config.model.name))


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The model of ``config.model`` in the config's compute dtype
    (:func:`segjax.models.compute_dtype`), as its task configures it (instance models resize
    images as ``config.data.instances`` says)."""
    model = models.create(
        config.model.name,
        num_classes=config.model.num_classes,
        dtype=models.compute_dtype(config),
        **config.model.kwargs.to_dict(),
    )
    return for_config(config).configure_model(model, config)


__all__ = [
    "EvalResult",
    "InstanceTask",
    "SemanticTask",
    "Task",
    "create_model",
    "for_config",
    "get",
    "names",
]
