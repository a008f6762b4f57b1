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

import sys  # noqa: E402
import types  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from segjax import cli, inference, logs, ops  # noqa: E402
from segjax.data import base, cityscapes, image_io  # noqa: E402

_FLAGS = types.SimpleNamespace(
    **vars(cli.define_run_flags()),
    **vars(cli.define_checkpoint_flags()),
    **vars(cli.define_inference_flags()),
    alpha=flags.DEFINE_float("alpha", 0.5, "Opacity of the colour map in the overlay."),
)


def collect_inputs(inputs: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """Expands files and folders into ``(path, output stem)`` pairs.

    Folders are searched recursively for image files; the stem keeps the path relative to the
    folder (so equal names in different sub-folders do not collide).

    Returns:
      ``(items, missing)``: the images and the inputs that do not exist.
    """
    items, missing = [], []
    for given in inputs:
        if os.path.isdir(given):
            folder = os.path.basename(os.path.normpath(given))
            for rel in image_io.find_files(given, image_io.IMAGE_EXTENSIONS):
                items.append(
                    (os.path.join(given, rel), os.path.join(folder, os.path.splitext(rel)[0]))
                )
        elif os.path.isfile(given):
            items.append((given, os.path.splitext(os.path.basename(given))[0]))
        else:
            missing.append(given)
    return items, missing


def palette_for(config) -> list[tuple[int, int, int]]:
    """Colours of the config's classes, without preparing the dataset: ``config.data.palette``
    when the config has one, the dataset's fixed palette (Cityscapes), else the VOC colour map."""
    num_classes = config.model.num_classes
    if "palette" in config.data and config.data.palette:
        return [tuple(int(c) for c in rgb) for rgb in config.data.palette]
    if config.data.name == "cityscapes":
        return [tuple(c) for c in cityscapes.PALETTE]
    return list(base.default_palette(num_classes))


def write_outputs(image, labels, palette, stem_path: str, alpha: float = 0.5) -> list[str]:
    """Writes ``<stem>_labels.png``, ``<stem>_colour.png`` and ``<stem>_overlay.png``."""
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
    options = options or inference.InferenceOptions()
    mean = np.asarray(config.data.mean, np.float32)
    std = np.asarray(config.data.std, np.float32)
    predictor = inference.make_predictor(model, options, mean=tuple(mean), std=tuple(std))
    labels_fn = ops.jit(
        lambda v, x: jax.numpy.argmax(predictor(v, x), axis=-1).astype("uint8"), config
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
    """``python -m segjax.predict``: see the module docstring."""
    f = _FLAGS
    config = cli.require_config(f.config.value)
    inputs = argv[1:]
    if not inputs:
        cli.fail("no inputs: give image files or folders after the flags")
    cli.require_checkpoint_source(f)
    output = cli.require_output(f)
    cli.setup_runtime()
    with cli.clean_errors():
        options = cli.inference_options(config, f)
        restored = cli.load_model(config, f)
        written, failures = predict_files(
            config,
            restored.variables,
            restored.model,
            inputs,
            output,
            options=options,
            alpha=f.alpha.value,
        )
    print(f"wrote {len(written)} files to {output}", flush=True)
    if failures:
        cli.fail(f"{len(failures)} input(s) failed: " + "; ".join(failures), code=1)


if __name__ == "__main__":
    cli.run_tool(main)
