"""Evaluate a checkpoint on a split: per-class table, ``eval_<split>.json``, confusion matrix PNG.

    python -m segjax.evaluate --config configs/quickstart.py --workdir /tmp/run \\
        [--checkpoint DIR] [--step N] [--split validation] [--mode whole|slide|tile] \\
        [--scales 0.5,0.75,1.0,1.25,1.5,1.75] [--flip] [--crf]

Every image of the split is counted exactly once, on any number of hosts (each process reads
its part; the stream is padded with all-ignore examples). The loop and the compiled eval step
are training's own (:func:`segjax.trainer.evaluate`, :func:`segjax.trainer.compile_eval_step`).
Outputs are written to the workdir (or ``--output``) by process 0.
"""

import dataclasses
import json
import math
import os
import time
import types

import jax
import numpy as np
from absl import flags
from PIL import Image, ImageDraw, ImageFont

from segjax import cli, tasks, trainer
from segjax import data as data_lib
from segjax.evaluation import inference

_FLAGS = types.SimpleNamespace(
    **vars(cli.define_run_flags()),
    **vars(cli.define_checkpoint_flags()),
    **vars(cli.define_inference_flags()),
    **vars(cli.define_multiprocess_flags()),
    split=flags.DEFINE_string("split", None, "Split (default: data.eval_split)."),
)


def evaluate(config, variables, mesh, options, split, *, model=None, source=None):
    """The evaluation of ``split`` by the model's task (:mod:`segjax.tasks`), summed over
    every process: for semantic models a :class:`segjax.tasks.semantic.EvalResult` (the
    confusion matrix, image count and, for data with instance ids, the object-matching counts),
    for instance models a :class:`segjax.tasks.instance.InstanceEvalResult` (COCO AP).

    Args:
      config: the run config (data, eval batch size, model).
      variables: model variables on ``mesh``.
      mesh: the device mesh (batches are split over its batch axes).
      options: :class:`segjax.evaluation.inference.InferenceOptions` (semantic models).
      split: split name.
      model: the model (default: built from the config).
      source: the dataset (default: ``config.data``'s).
    """
    model = model if model is not None else trainer.create_model(config)
    source = source if source is not None else data_lib.get_source(config.data)
    trainer.check_dataset(config, source.info, model)
    task = tasks.for_model(model)
    stream = task.eval_stream(
        source,
        config,
        split,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    step = trainer.compile_eval_step(model, config, mesh, options)
    return task.evaluate(step, variables, stream, mesh)


def confusion_png(cm, class_names, path: str, cell: int = 0) -> None:
    """Writes the row-normalised confusion matrix (rows: ground truth) as a heat-map PNG with
    class names and per-cell percentages (Pillow only)."""
    cm = np.asarray(cm, np.float64)
    n = cm.shape[0]
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    font = ImageFont.load_default()
    cell = cell or max(12, min(48, 1200 // max(n, 1)))
    label_w = 8 + 7 * max(len(str(c)) for c in class_names)
    top = label_w
    size = (label_w + n * cell + 10, top + n * cell + 30)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for i in range(n):
        for j in range(n):
            v = norm[i, j]
            # white → dark blue
            colour = tuple(int(255 - v * (255 - c)) for c in (8, 48, 107))
            x0, y0 = label_w + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline="#ddd")
            if cell >= 28:
                draw.text(
                    (x0 + 3, y0 + cell // 2 - 5),
                    f"{100 * v:.0f}",
                    fill="white" if v > 0.5 else "black",
                    font=font,
                )
    for i, name in enumerate(class_names):
        draw.text((4, top + i * cell + cell // 2 - 5), str(name), fill="black", font=font)
        # column labels, rotated
        label = Image.new("RGBA", (label_w, 12), (255, 255, 255, 0))
        ImageDraw.Draw(label).text((2, 0), str(name), fill="black", font=font)
        label = label.rotate(90, expand=True)
        img.paste(label, (label_w + i * cell + cell // 2 - 6, top - label.size[1]), label)
    draw.text(
        (4, top + n * cell + 8),
        "rows: ground truth, columns: prediction (% of row)",
        fill="black",
        font=font,
    )
    img.save(path)


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
      COCO statistics ``bbox/AP`` … ``segm/ARl`` (:mod:`segjax.evaluation.coco_eval`), printed as a
      table.
    """
    options = options or inference.InferenceOptions()
    split = split or config.data.eval_split
    t0 = time.time()
    restored = trainer.load_for_inference(
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
    semantic = isinstance(evaluated, tasks.semantic.EvalResult)
    if semantic:
        result.update(
            inference=dataclasses.asdict(options),
            confusion_matrix=evaluated.confusion_matrix.tolist(),
        )
    out = output_dir or workdir
    if jax.process_index() == 0:
        for table in tasks.for_model(restored.model).tables(summary, info):
            print(table, flush=True)
        if out:
            _write(result, evaluated if semantic else None, info, out, split)
    return result


def _write(result: dict, semantic, info, out: str, split: str) -> None:
    """Writes ``eval_<split>.json`` and, for a semantic result, the confusion-matrix PNG."""
    os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, f"eval_{split}.json")
    with open(json_path, "w") as f:
        json.dump(_jsonable(result), f, indent=2)
    if semantic is None:
        print(f"wrote {json_path}", flush=True)
        return
    png_path = os.path.join(out, f"eval_{split}_confusion.png")
    confusion_png(semantic.confusion_matrix, info.class_names, png_path)
    print(f"wrote {json_path} and {png_path}", flush=True)


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
        options = None
        if tasks.for_model(trainer.create_model(config)).name == "instance":
            cli.require_no_semantic_flags(config.model.name)
        else:
            options = cli.inference_options(config, f)
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
