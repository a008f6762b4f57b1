"""The :class:`Task` interface: everything that differs between segmentation tasks.

The trainer (:mod:`segjax.trainer`), the input pipeline and the tools (``segjax.evaluate``,
``segjax.predict``) own the loop, the state, sharding, checkpoints, logs and files; they call a
task for the rest and never ask which task it is. A model's row in the model table
(:func:`segjax.models.task_name`) names its task; :func:`segjax.tasks.for_config` looks it up.
docs/TASKS.md lists which methods a new task implements.
"""

import abc
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import flax.linen as nn
import jax
import ml_collections


class EvalResult(Protocol):
    """What :meth:`Task.evaluate` returns (each task has its own class with more fields)."""

    num_images: int  # real (not padding) images evaluated, over all processes
    examples: list  # up to ``keep_preds`` local examples, for :meth:`Task.write_images`

    def summary(self) -> dict:
        """The metrics by name (what ``metrics.jsonl`` and ``eval_<split>.json`` hold)."""


# Writes one decoded image's prediction files: ``(image uint8 [H, W, 3], output stem without
# extension) → written paths``.
ImageWriter = Callable[[Any, str], list[str]]


class Task(abc.ABC):
    """One segmentation task (semantic, instance …); stateless, one instance per task.

    Abstract methods are what a new task implements; the others have defaults that suit a
    task without the feature (no frozen layers, no host-side batch counts, no extra files).
    """

    name: str  # the name model table rows give (:func:`segjax.models.task_name`)

    # ---------------------------------------------------------------- model and data

    @abc.abstractmethod
    def check_dataset(self, config: ml_collections.ConfigDict, info) -> None:
        """Raises :class:`segjax.errors.ConfigError` when the dataset (``info``:
        :class:`segjax.data.base.DatasetInfo`) does not fit the model of ``config``."""

    def configure_model(self, model: nn.Module, config: ml_collections.ConfigDict) -> nn.Module:
        """``model`` (just built from the table) set up for ``config``; default unchanged."""
        del config
        return model

    @abc.abstractmethod
    def init_variables(
        self, model: nn.Module, config: ml_collections.ConfigDict, rng: jax.Array
    ) -> dict:
        """Fresh variables ``{"params", "batch_stats"}`` (pure: ``jax.eval_shape`` traces it)."""

    # ---------------------------------------------------------------- training

    @abc.abstractmethod
    def train_stream(
        self,
        source,
        config: ml_collections.ConfigDict,
        *,
        start_step: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> Iterator[dict]:
        """Endless iterator of this process's host batches from ``start_step`` on
        (:func:`segjax.input.pipeline.train_iterator` with the task's transform)."""

    @abc.abstractmethod
    def loss_fn(self, model: nn.Module, config: ml_collections.ConfigDict) -> Callable:
        """``(params, batch_stats, batch, rng) → (loss, (batch_stats, terms))``; ``terms`` a
        dict of named scalars logged beside the loss. Build (and validate) the loss now, so a
        bad loss config fails before anything compiles."""

    @property
    @abc.abstractmethod
    def loss_fields(self) -> tuple[str, ...]:
        """Batch fields the loss reads besides ``image``."""

    def loss_inputs(self, batch: dict) -> dict:
        """The fields of ``batch`` the loss reads (``image`` and :attr:`loss_fields`): what
        goes to the devices and into the train step."""
        fields = ("image", *self.loss_fields)
        return {k: v for k, v in batch.items() if k in fields}

    def trainable(self, model: nn.Module) -> Callable | None:
        """``None`` (every parameter trains, the default) or ``params → bool tree``."""
        del model

    def batch_counts(self, host_batch: dict) -> dict[str, int]:
        """Host-side counts of a training batch, summed between log lines and reported by
        :meth:`count_lines`; default none."""
        del host_batch
        return {}

    def count_lines(self, counts: dict[str, int], config: ml_collections.ConfigDict) -> list[str]:
        """Log lines for the :meth:`batch_counts` summed since the last log line."""
        del counts, config
        return []

    # ---------------------------------------------------------------- evaluation

    @abc.abstractmethod
    def eval_stream(self, source, config, split: str, *, process_index=0, process_count=1):
        """This process's evaluation batches of ``split`` (re-iterable, every image counted
        once over all processes)."""

    @abc.abstractmethod
    def compile_eval_step(self, model, config, mesh, options=None) -> Callable:
        """The jitted ``(variables, batch) → device outputs`` that :meth:`evaluate` consumes:
        the one used by in-training evaluation and by ``segjax.evaluate``. ``options``: what
        :meth:`inference_options` returned."""

    @abc.abstractmethod
    def evaluate(self, eval_step, variables, stream, mesh, keep_preds: int = 0) -> EvalResult:
        """Runs ``eval_step`` over every batch of ``stream`` and returns the result, summed
        over every process, keeping up to ``keep_preds`` examples for pictures."""

    @abc.abstractmethod
    def log_line(self, summary: dict) -> str:
        """The headline numbers of an evaluation summary (one line)."""

    @abc.abstractmethod
    def tables(self, summary: dict, info) -> list[str]:
        """The tables printed after training and by ``segjax.evaluate``."""

    @abc.abstractmethod
    def write_images(self, logger, step: int, examples: list, info, config) -> None:
        """Pictures of the kept ``examples`` to TensorBoard (:class:`segjax.logs.MetricLogger`)."""

    def eval_record(self, result: EvalResult, options) -> dict:
        """Fields ``eval_<split>.json`` holds beyond the summary; default none."""
        del result, options
        return {}

    def write_eval_files(self, result: EvalResult, info, out: str, split: str) -> list[str]:
        """Writes the files ``segjax.evaluate`` adds beside ``eval_<split>.json`` into
        ``out``; returns their paths (default none)."""
        del result, info, out, split
        return []

    # ---------------------------------------------------------------- inference tools

    @abc.abstractmethod
    def inference_options(self, config, flags, *, instead: str = ""):
        """The options :meth:`compile_eval_step` and :meth:`image_writer` take, from the
        values of :func:`segjax.cli.define_inference_flags` (``flags``, absl flag holders);
        raises :class:`segjax.errors.ConfigError` naming the given flags the task does not
        read (``instead``: the tool's flags that do apply, for the message)."""

    @abc.abstractmethod
    def image_writer(
        self,
        config,
        variables,
        model,
        output_dir: str,
        *,
        options=None,
        alpha: float = 0.5,
        score_threshold: float = 0.5,
    ) -> ImageWriter:
        """What ``segjax.predict`` writes per image: ``(image, stem) → written paths`` under
        ``output_dir`` (``alpha``: overlay opacity; ``score_threshold``: for tasks with
        scored detections)."""
