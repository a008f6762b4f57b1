"""Predict segmentation maps (semantic models) or instances (Mask R-CNN) for images or folders.

    python -m segjax.predict --config configs/quickstart.py --workdir /tmp/run \\
        IMAGE_OR_FOLDER ... --output /tmp/pred [--mode slide] [--scales 0.75,1,1.25] [--flip]
    python -m segjax.predict --config configs/maskrcnn_resnet50_fpn_coco.py \\
        --checkpoint /ckpt/maskrcnn IMAGE_OR_FOLDER ... --output /tmp/pred [--score_threshold 0.5]

Outputs are written at the input's size under ``--output`` (folders keep their relative layout).
For ``a/b.jpg`` and a semantic model: ``b_labels.png`` (class ids, 8-bit grayscale),
``b_colour.png`` (the dataset's palette) and ``b_overlay.png`` (colour blended over the image).

For an instance model (:class:`segjax.models.maskrcnn.MaskRCNN`), see
:func:`segjax.tasks.instance_outputs.write_instances`:

- ``b.json``: every detection the model returns (its own score threshold, 0.05 for
  torchvision's settings, at most 100), best first, as a COCO results list: ``image_id``,
  ``category_id`` (the predicted label: for the 91-output COCO models of torchvision it *is*
  the COCO category id, :mod:`segjax.data.coco_names`), ``bbox`` ``[x, y, w, h]`` in pixels of
  the original image, ``score`` and ``segmentation`` (the mask thresholded at 0.5, COCO RLE from
  ``pycocotools.mask.encode``, ``counts`` as a string). ``image_id`` is the file name as an
  integer when it is all digits (COCO's ``000000397133.jpg`` → 397133, so the lists of a COCO
  folder concatenate into a results file for pycocotools), otherwise the output stem
  (``"folder/sub/b"``). All detections are kept because COCO AP needs the low-scored ones.
- ``b_instances.png``: 16-bit instance ids of the detections scoring at least
  ``--score_threshold`` (default 0.5, as torchvision's examples): id k is the k-th entry of
  ``b.json`` (descending score), 0 is background, masks thresholded at 0.5; where masks
  overlap the higher-scored detection keeps the pixel (later ones never overwrite earlier ones).
- ``b_overlay.png``: those instances blended over the image in one colour each
  (``--alpha``), with their boxes and ``"class score"`` labels.

Images are decoded like the dataset builders do (grayscale 8/16-bit, RGBA, CMYK, palette …);
a file that cannot be read is reported by name and the others are still processed (exit
status 1 if any failed). Instance models normalise with their own transform
(``MaskRCNN.transform``: torchvision's); ``config.data.mean``/``std`` are for semantic models.

What is written per image is the model's task's (:meth:`segjax.tasks.Task.image_writer`); this
module finds the images, decodes them and reports the failures.
"""

import os
import sys
import types

from absl import flags
from tqdm import tqdm

from segjax import cli, tasks
from segjax.data import image_io
from segjax.errors import SegjaxError

_FLAGS = types.SimpleNamespace(
    **vars(cli.define_run_flags()),
    **vars(cli.define_checkpoint_flags()),
    **vars(cli.define_inference_flags()),
    alpha=flags.DEFINE_float("alpha", 0.5, "Opacity of the colour map in the overlay."),
    score_threshold=flags.DEFINE_float(
        "score_threshold",
        0.5,
        "Instance models: minimum score of the detections in the instance PNG and the overlay "
        "(the JSON keeps every detection).",
    ),
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


def for_each_image(inputs: list[str], process, progress: bool) -> tuple[list[str], list[str]]:
    """Decodes every image of ``inputs`` and calls ``process(image, stem) → written paths``.

    A file that cannot be read or processed (a :class:`segjax.errors.SegjaxError` such as
    ``DataError``, or an ``OSError``) is reported by name on stderr and in the failures; the
    others go on. Any other exception is a bug and propagates.
    """
    items, missing = collect_inputs(inputs)
    failures = [f"{m}: no such file or directory" for m in missing]
    written = []
    bar = tqdm(items, desc="predict", unit="img", file=sys.stderr, disable=not progress)
    for path, stem in bar:
        try:
            image = image_io.decode_image(image_io.read_bytes(path), path=path)
            written += process(image, stem)
        except (SegjaxError, OSError) as e:
            message = str(e) if path in str(e) else f"{path}: {e}"
            failures.append(message)
            bar.write(f"error: {message}", file=sys.stderr)
    return written, failures


def predict_files(
    config,
    variables,
    model,
    inputs: list[str],
    output_dir: str,
    *,
    options=None,
    alpha: float = 0.5,
    score_threshold: float = 0.5,
    progress: bool = True,
) -> tuple[list[str], list[str]]:
    """Predicts every image of ``inputs`` (files or folders) and writes what the model's task
    writes per image (:meth:`segjax.tasks.Task.image_writer`): three PNGs for a semantic
    model, a COCO results JSON and two PNGs for an instance model (``score_threshold`` is
    theirs; ``options``, the semantic inference options, must then be None).

    Returns:
      ``(written, failures)``: the written paths and one ``"path: reason"`` per input that
      could not be processed.

    Raises:
      ConfigError: inference ``options`` the model's task does not take.
    """
    write = tasks.for_config(config).image_writer(
        config,
        variables,
        model,
        output_dir,
        options=options,
        alpha=alpha,
        score_threshold=score_threshold,
    )
    return for_each_image(inputs, write, progress)


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
        # Options are checked before the (slow) restore.
        options = tasks.for_config(config).inference_options(
            config, cli.define_inference_flags(), instead="--score_threshold, --alpha"
        )
        restored = cli.load_model(config, f)
        written, failures = predict_files(
            config,
            restored.variables,
            restored.model,
            inputs,
            output,
            options=options,
            alpha=f.alpha.value,
            score_threshold=f.score_threshold.value,
        )
    print(f"wrote {len(written)} files to {output}", flush=True)
    if failures:
        cli.fail(f"{len(failures)} input(s) failed: " + "; ".join(failures), code=1)


if __name__ == "__main__":
    cli.run_tool(main)
