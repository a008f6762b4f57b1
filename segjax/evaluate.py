"""Evaluate a checkpoint on a split: per-class table, ``eval_<split>.json``, confusion matrix PNG.

    python -m segjax.evaluate --config configs/quickstart.py --workdir /tmp/run \\
        [--checkpoint DIR] [--step N] [--split validation] [--mode whole|slide|tile] \\
        [--scales 0.5,0.75,1.0,1.25,1.5,1.75] [--flip] [--crf]

Every image of the split is counted exactly once, on any number of hosts (each process reads
its part; the stream is padded with all-ignore examples). The loop and the compiled eval step
are training's own: the model's task's (:meth:`segjax.tasks.Task.evaluate`,
:meth:`segjax.tasks.Task.compile_eval_step`), which also says what the JSON holds beyond the
summary and which files go beside it. Outputs are written to the workdir (or ``--output``) by
process 0. The training stack (optimiser, train step) is not imported.
"""

import json
import math
import os
import time
import types

import jax
from absl import flags

from segjax import checkpoint, cli, tasks
from segjax import data as data_lib

_FLAGS = types.SimpleNamespace(
    **vars(cli.define_run_flags()),
    **vars(cli.define_checkpoint_flags()),
    **vars(cli.define_inference_flags()),
    **vars(cli.define_multiprocess_flags()),
    split=flags.DEFINE_string("split", None, "Split (default: data.eval_split)."),
)


def evaluate(config, variables, mesh, options, split, *, model=None, source=None):
    """The evaluation of ``split`` by the model's task (:meth:`segjax.tasks.Task.evaluate`),
    summed over every process: for semantic models a :class:`segjax.tasks.semantic.EvalResult`
    (the confusion matrix, image count and, for data with instance ids, the object-matching
    counts), for instance models a :class:`segjax.tasks.instance.InstanceEvalResult` (COCO AP).

    Args:
      config: the run config (data, eval batch size, model).
      variables: model variables on ``mesh``.
      mesh: the device mesh (batches are split over its batch axes).
      options: what the task's ``inference_options`` gives (semantic models:
        :class:`segjax.evaluation.inference.InferenceOptions`; None for the default).
      split: split name.
      model: the model (default: built from the config).
      source: the dataset (default: ``config.data``'s).
    """
    task = tasks.for_config(config)
    model = model if model is not None else tasks.create_model(config)
    source = source if source is not None else data_lib.get_source(config.data)
    task.check_dataset(config, source.info)
    stream = task.eval_stream(
        source,
        config,
        split,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    step = task.compile_eval_step(model, config, mesh, options)
    return task.evaluate(step, variables, stream, mesh)


def _jsonable(v):
    """NaN → null (strict JSON), recursively."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def run(
    config,
    *,
    workdir: str | None = None,
    checkpoint_dir: str | None = None,
    step: int | None = None,
    split: str | None = None,
    options=None,
    output_dir: str | None = None,
) -> dict:
    """Restores the model, evaluates ``split`` and writes the results.

    Returns:
      The task's summary plus ``step``, ``split``, ``num_images``, ``class_names``; written to
      ``OUTPUT/eval_<split>.json``. Semantic models: mIoU, Dice … (and the object precision /
      recall / F1 and AJI for data with instance ids), the ``confusion_matrix`` (also drawn to
      ``OUTPUT/eval_<split>_confusion.png``) and the inference settings. Instance models: the
      COCO statistics ``bbox/AP`` … ``segm/ARl`` (:mod:`segjax.evaluation.coco_eval`), printed as
      a table.
    """
    task = tasks.for_config(config)
    split = split or config.data.eval_split
    t0 = time.time()
    restored = checkpoint.load_for_inference(
        config, workdir=workdir, checkpoint_dir=checkpoint_dir, step=step
    )
    source = data_lib.get_source(config.data)
    info = source.info
    evaluated = evaluate(
        config,
        restored.variables,
        restored.mesh,
        options,
        split,
        model=restored.model,
        source=source,
    )
    count, expected = evaluated.num_images, info.splits[split]
    if count != expected:
        raise RuntimeError(f"evaluated {count} images of split {split!r}, expected {expected}")
    summary = evaluated.summary()
    result = dict(
        summary,
        step=restored.step,
        split=split,
        num_images=count,
        checkpoint=os.path.abspath(checkpoint_dir or os.path.join(workdir, "checkpoints")),
        class_names=list(info.class_names),
        seconds=round(time.time() - t0, 2),
    )
    result.update(task.eval_record(evaluated, options))
    out = output_dir or workdir
    if jax.process_index() == 0:
        for table in task.tables(summary, info):
            print(table, flush=True)
        if out:
            _write(result, task, evaluated, info, out, split)
    return result


def _write(result: dict, task, evaluated, info, out: str, split: str) -> None:
    """Writes ``eval_<split>.json`` and the task's files beside it (the confusion-matrix PNG
    of a semantic result)."""
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, f"eval_{split}.json")
    with open(json_path, "w") as f:
        json.dump(_jsonable(result), f, indent=2)
    written = [json_path, *task.write_eval_files(evaluated, info, out, split)]
    print(f"wrote {' and '.join(written)}", flush=True)


def main(argv):
    """``python -m segjax.evaluate``: see the module docstring."""
    f = _FLAGS
    cli.require_no_arguments(argv)
    config = cli.require_config(f.config.value)
    cli.require_checkpoint_source(f)
    workdir = f.workdir.value and os.path.abspath(os.path.expanduser(f.workdir.value))
    output = cli.require_output(f, default=workdir)
    # The host split training uses, so the evaluation runs the same compiled step.
    cli.configure_host_devices(config, f.num_processes.value)
    cli.setup_runtime(f.coordinator.value, f.num_processes.value, f.process_id.value)
    with cli.clean_errors():
        options = tasks.for_config(config).inference_options(config, cli.define_inference_flags())
        run(
            config,
            workdir=workdir,
            checkpoint_dir=f.checkpoint.value,
            step=f.step.value,
            split=f.split.value,
            options=options,
            output_dir=output,
        )


if __name__ == "__main__":
    cli.run_tool(main)
