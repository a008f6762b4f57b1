"""Evaluate a checkpoint on a split: per-class table, ``eval_<split>.json``, confusion matrix PNG.

    python -m segjax.evaluate --config configs/quickstart.py --workdir /tmp/run \\
        [--checkpoint DIR] [--step N] [--split validation] [--mode whole|slide|tile] \\
        [--scales 0.5,0.75,1.0,1.25,1.5,1.75] [--flip] [--crf]

Every image of the split is counted exactly once, on any number of hosts (each process reads
its part; the stream is padded with all-ignore examples). Outputs are written to the workdir
(or ``--output``) by process 0.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import types  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402


def _define_flags():
    """The command-line flags (defined only when run as a program, so the module can be
    imported next to other segjax tools)."""
    config = config_flags.DEFINE_config_file(
        "config", None, "Path to a config file (optionally file.py:arg).", lock_config=True
    )
    workdir = flags.DEFINE_string("workdir", None, "Run directory (checkpoints/ inside it).")
    checkpoint = flags.DEFINE_string(
        "checkpoint",
        None,
        "A checkpoints/ dir or a variables checkpoint (default: workdir's).",
    )
    step = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    split = flags.DEFINE_string("split", None, "Split (default: data.eval_split).")
    output = flags.DEFINE_string("output", None, "Where to write results (default: the workdir).")
    mode = flags.DEFINE_enum("mode", "whole", ["whole", "slide", "tile"], "Inference strategy.")
    crop = flags.DEFINE_list("crop", None, "Sliding-window crop h,w (default: data.crop_size).")
    stride = flags.DEFINE_list("stride", None, "Sliding-window stride h,w (default: 2/3 of crop).")
    tile_batch = flags.DEFINE_integer("tile_batch", 4, "Tile positions per model call.")
    tile_size = flags.DEFINE_integer("tile_size", 388, "Overlap-tile output side (--mode tile).")
    scales = flags.DEFINE_string("scales", "1.0", "Comma-separated test-time scales.")
    flip = flags.DEFINE_bool("flip", False, "Add horizontally flipped predictions.")
    crf = flags.DEFINE_bool("crf", False, "Refine with the dense CRF (segjax.crf).")
    coordinator = flags.DEFINE_string(
        "coordinator_address", "", "Multi-process: address of process 0 (host:port)."
    )
    num_processes = flags.DEFINE_integer("num_processes", 0, "Multi-process: number of processes.")
    process_id = flags.DEFINE_integer("process_id", -1, "Multi-process: index of this process.")
    return types.SimpleNamespace(**locals())


def evaluate(config, variables, mesh, options, split, *, model=None, source=None):
    """Confusion matrix (int64 ``[C, C]``, summed over all processes) of ``split``.

    Args:
      config: the run config (data, eval batch size, model).
      variables: model variables on ``mesh``.
      mesh: the device mesh (batches are split over its batch axes).
      options: :class:`segjax.inference.InferenceOptions`.
      split: split name.
      model: the model (default: built from the config).
      source: the dataset (default: ``config.data``'s).

    Returns:
      ``(cm, num_images)``: the confusion matrix and the number of real images counted (all
      processes).
    """
    import jax
    import numpy as np

    from segjax import data as data_lib
    from segjax import inference, input_pipeline, metrics, sharding
    from segjax import trainer as trainer_lib

    model = model if model is not None else trainer_lib.create_model(config)
    source = source if source is not None else data_lib.get_source(config.data)
    num_classes = config.model.num_classes
    if source.info.num_classes != num_classes:
        raise ValueError(
            f"config.model.num_classes={num_classes} but dataset {source.info.name!r} has "
            f"{source.info.num_classes} classes"
        )
    stream = input_pipeline.eval_stream(
        source,
        config,
        split,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    predictor = inference.make_predictor(
        model, options, mean=tuple(config.data.mean), std=tuple(config.data.std)
    )

    def step(variables, batch):
        scores = predictor(variables, batch["image"])
        preds = jax.numpy.argmax(scores, axis=-1)
        # Padding examples are all-ignore already; the mask makes this explicit.
        labels = jax.numpy.where(batch["valid"][:, None, None], batch["mask"], 255)
        return metrics.confusion_matrix(labels, preds, num_classes), batch["valid"].sum()

    repl = sharding.replicated(mesh)
    options = trainer_lib.compiler_options(config.cpu_scheduler)
    step = jax.jit(step, out_shardings=(repl, repl), compiler_options=options)
    cm = np.zeros((num_classes, num_classes), np.int64)
    count = 0
    for batch in stream:
        step_cm, n = step(variables, sharding.host_to_global(dict(batch), mesh))
        cm += np.asarray(jax.device_get(step_cm), np.int64)
        count += int(jax.device_get(n))
    return cm, count


def confusion_png(cm, class_names, path: str, cell: int = 0) -> None:
    """Writes the row-normalised confusion matrix (rows: ground truth) as a heat-map PNG with
    class names and per-cell percentages (Pillow only)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

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
    import math

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
      The summary (:func:`segjax.metrics.summarize`) plus ``step``, ``split``,
      ``num_images``, ``confusion_matrix`` and the inference settings; also written to
      ``OUTPUT/eval_<split>.json`` together with ``OUTPUT/eval_<split>_confusion.png``.
    """
    import dataclasses
    import json
    import time

    import jax

    from segjax import data as data_lib
    from segjax import inference, metrics

    options = options or inference.InferenceOptions()
    split = split or config.data.eval_split
    t0 = time.time()
    trainer, variables, step = inference.load_variables(
        config, workdir=workdir, checkpoint_dir=checkpoint_dir, step=step
    )
    source = data_lib.get_source(config.data)
    info = source.info
    cm, count = evaluate(
        config, variables, trainer.mesh, options, split, model=trainer.model, source=source
    )
    expected = info.splits[split]
    if count != expected:
        raise RuntimeError(f"evaluated {count} images of split {split!r}, expected {expected}")
    summary = metrics.summarize(cm)
    result = dict(
        summary,
        step=step,
        split=split,
        num_images=count,
        checkpoint=os.path.abspath(checkpoint_dir or os.path.join(workdir, "checkpoints")),
        inference=dataclasses.asdict(options),
        class_names=list(info.class_names),
        confusion_matrix=cm.tolist(),
        seconds=round(time.time() - t0, 2),
    )
    out = output_dir or workdir
    if jax.process_index() == 0:
        print(metrics.format_table(summary, info.class_names), flush=True)
        if out:
            os.makedirs(out, exist_ok=True)
            json_path = os.path.join(out, f"eval_{split}.json")
            with open(json_path, "w") as f:
                json.dump(_jsonable(result), f, indent=2)
            png_path = os.path.join(out, f"eval_{split}_confusion.png")
            confusion_png(cm, info.class_names, png_path)
            print(f"wrote {json_path} and {png_path}", flush=True)
    return result


def main(argv):
    f = _FLAGS
    from segjax import cli

    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.require_config(f.config.value, "--config")
    if not f.workdir.value and not f.checkpoint.value:
        cli.fail("give --workdir (its checkpoints/) or --checkpoint DIR")
    workdir = f.workdir.value and os.path.abspath(os.path.expanduser(f.workdir.value))
    output = f.output.value or workdir
    if not output:
        cli.fail("--output is required with --checkpoint and no --workdir")
    output = cli.require_workdir(output)
    cli.setup_runtime(f.coordinator.value, f.num_processes.value, f.process_id.value)
    from segjax import inference

    with cli.clean_errors():
        options = inference.options_for(
            config,
            mode=f.mode.value,
            crop=f.crop.value,
            stride=f.stride.value,
            tile_batch=f.tile_batch.value,
            tile_size=f.tile_size.value,
            scales=f.scales.value,
            flip=f.flip.value,
            crf=f.crf.value,
        )
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
    _FLAGS = _define_flags()
    app.run(main, flags_parser=lambda argv: __import__("segjax.cli").cli.parse_flags(argv))
