"""Predict segmentation maps for images or folders of images.

    python -m segjax.predict --config configs/quickstart.py --workdir /tmp/run \\
        IMAGE_OR_FOLDER ... --output /tmp/pred [--mode slide] [--scales 0.75,1,1.25] [--flip]

For every input ``a/b.jpg`` three PNGs at the input's size are written under ``--output``
(folders keep their relative layout): ``b_labels.png`` (class ids, 8-bit grayscale),
``b_colour.png`` (the dataset's palette) and ``b_overlay.png`` (colour blended over the image).
Images are decoded like the dataset builders do (grayscale 8/16-bit, RGBA, CMYK, palette …);
a file that cannot be read is reported by name and the others are still processed (exit
status 1 if any failed).
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
        "checkpoint", None, "A checkpoints/ directory or a variables checkpoint."
    )
    step = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    output = flags.DEFINE_string("output", None, "Output directory.")
    mode = flags.DEFINE_enum("mode", "whole", ["whole", "slide", "tile"], "Inference strategy.")
    crop = flags.DEFINE_list("crop", None, "Sliding-window crop h,w (default: data.crop_size).")
    stride = flags.DEFINE_list("stride", None, "Sliding-window stride h,w (default: 2/3 of crop).")
    tile_batch = flags.DEFINE_integer("tile_batch", 4, "Tile positions per model call.")
    tile_size = flags.DEFINE_integer("tile_size", 388, "Overlap-tile output side (--mode tile).")
    scales = flags.DEFINE_string("scales", "1.0", "Comma-separated test-time scales.")
    flip = flags.DEFINE_bool("flip", False, "Add horizontally flipped predictions.")
    crf = flags.DEFINE_bool("crf", False, "Refine with the dense CRF (segjax.crf).")
    alpha = flags.DEFINE_float("alpha", 0.5, "Opacity of the colour map in the overlay.")
    return types.SimpleNamespace(**locals())


def collect_inputs(inputs: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Expands files and folders into ``(path, output stem)`` pairs.

    Folders are searched recursively for image files; the stem keeps the path relative to the
    folder (so equal names in different sub-folders do not collide).

    Returns:
      ``(items, missing)``: the images and the inputs that do not exist.
    """
    from segjax.data import image_io

    items, missing = [], []
    for given in inputs:
        if os.path.isdir(given):
            base = os.path.basename(os.path.normpath(given))
            for rel in image_io.find_files(given, image_io.IMAGE_EXTENSIONS):
                items.append(
                    (os.path.join(given, rel), os.path.join(base, os.path.splitext(rel)[0]))
                )
        elif os.path.isfile(given):
            items.append((given, os.path.splitext(os.path.basename(given))[0]))
        else:
            missing.append(given)
    return items, missing


def palette_for(config) -> list[tuple[int, int, int]]:
    """Colours of the config's classes, without preparing the dataset: ``config.data.palette``
    when the config has one, the dataset's fixed palette (Cityscapes), else the VOC colour map."""
    from segjax.data import base

    num_classes = config.model.num_classes
    if "palette" in config.data and config.data.palette:
        return [tuple(int(c) for c in rgb) for rgb in config.data.palette]
    if config.data.name == "cityscapes":
        from segjax.data import cityscapes

        return [tuple(c) for c in cityscapes.PALETTE]
    return list(base.default_palette(num_classes))


def write_outputs(image, labels, palette, stem_path: str, alpha: float = 0.5) -> list[str]:
    """Writes ``<stem>_labels.png``, ``<stem>_colour.png`` and ``<stem>_overlay.png``."""
    import numpy as np
    from PIL import Image

    from segjax import logs

    os.makedirs(os.path.dirname(stem_path) or ".", exist_ok=True)
    colour = logs.colorize(labels, palette)
    overlay = (1 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    paths = [f"{stem_path}_labels.png", f"{stem_path}_colour.png", f"{stem_path}_overlay.png"]
    Image.fromarray(labels.astype(np.uint8), mode="L").save(paths[0])
    Image.fromarray(colour).save(paths[1])
    Image.fromarray(np.clip(np.round(overlay), 0, 255).astype(np.uint8)).save(paths[2])
    return paths


def predict_files(
    config,
    variables,
    model,
    inputs: list[str],
    output_dir: str,
    *,
    options=None,
    alpha: float = 0.5,
    progress: bool = True,
) -> tuple[list[str], list[str]]:
    """Predicts every image of ``inputs`` (files or folders) and writes three PNGs each.

    Returns:
      ``(written, failures)``: the written paths and one ``"path: reason"`` per input that
      could not be processed.
    """
    import sys

    import jax
    import numpy as np
    from tqdm import tqdm

    from segjax import inference, trainer
    from segjax.data import image_io

    options = options or inference.InferenceOptions()
    mean = np.asarray(config.data.mean, np.float32)
    std = np.asarray(config.data.std, np.float32)
    predictor = inference.make_predictor(model, options, mean=tuple(mean), std=tuple(std))
    labels_fn = jax.jit(
        lambda v, x: jax.numpy.argmax(predictor(v, x), axis=-1).astype("uint8"),
        compiler_options=trainer.compiler_options(config.cpu_scheduler),
    )
    # One image at a time: the whole model on one device (no replicated work on the others).
    variables = jax.device_put(jax.device_get(variables), jax.local_devices()[0])
    palette = palette_for(config)
    items, missing = collect_inputs(inputs)
    failures = [f"{m}: no such file or directory" for m in missing]
    written = []
    bar = tqdm(items, desc="predict", unit="img", file=sys.stderr, disable=not progress)
    for path, stem in bar:
        try:
            image = image_io.decode_image(image_io.read_bytes(path), path=path)
            x = ((image.astype(np.float32) - mean) / std)[None]
            labels = np.asarray(jax.device_get(labels_fn(variables, x)))[0]
            written += write_outputs(image, labels, palette, os.path.join(output_dir, stem), alpha)
        except (ValueError, OSError) as e:  # image_io.DataError is a ValueError
            message = str(e) if path in str(e) else f"{path}: {e}"
            failures.append(message)
            bar.write(f"error: {message}", file=sys.stderr)
    return written, failures


def main(argv):
    f = _FLAGS
    from segjax import cli

    config = cli.require_config(f.config.value, "--config")
    inputs = argv[1:]
    if not inputs:
        cli.fail("no inputs: give image files or folders after the flags")
    if not f.workdir.value and not f.checkpoint.value:
        cli.fail("give --workdir (its checkpoints/) or --checkpoint DIR")
    if not f.output.value:
        cli.fail("--output is required")
    output = cli.require_workdir(f.output.value)
    cli.setup_runtime()
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
        trainer, variables, _ = inference.load_variables(
            config,
            workdir=f.workdir.value,
            checkpoint_dir=f.checkpoint.value,
            step=f.step.value,
        )
        written, failures = predict_files(
            config,
            variables,
            trainer.model,
            inputs,
            output,
            options=options,
            alpha=f.alpha.value,
        )
    print(f"wrote {len(written)} files to {output}", flush=True)
    if failures:
        cli.fail(f"{len(failures)} input(s) failed: " + "; ".join(failures), code=1)


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(main, flags_parser=lambda argv: __import__("segjax.cli").cli.parse_flags(argv))
