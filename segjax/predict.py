"""Predict segmentation maps (semantic models) or instances (Mask R-CNN) for images or folders.

    python -m segjax.predict --config configs/quickstart.py --workdir /tmp/run \\
        IMAGE_OR_FOLDER ... --output /tmp/pred [--mode slide] [--scales 0.75,1,1.25] [--flip]
    python -m segjax.predict --config configs/maskrcnn_resnet50_fpn_coco.py \\
        --checkpoint /ckpt/maskrcnn IMAGE_OR_FOLDER ... --output /tmp/pred [--score_threshold 0.5]

Outputs are written at the input's size under ``--output`` (folders keep their relative layout).
For ``a/b.jpg`` and a semantic model: ``b_labels.png`` (class ids, 8-bit grayscale),
``b_colour.png`` (the dataset's palette) and ``b_overlay.png`` (colour blended over the image).

For an instance model (:class:`segjax.models.maskrcnn.MaskRCNN`), see :func:`write_instances`:

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
"""

import json
import os
import sys
import types
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags
from PIL import Image
from pycocotools import mask as coco_mask
from tqdm import tqdm

from segjax import cli, logs, runtime, trainer
from segjax.data import base, cityscapes, coco_names, image_io
from segjax.evaluation import inference, visualize
from segjax.evaluation.coco_eval import MASK_CHUNK, MASK_THRESHOLD, coco_results
from segjax.models import maskrcnn

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


def _for_each_image(inputs: list[str], process, progress: bool) -> tuple[list[str], list[str]]:
    """Decodes every image of ``inputs`` and calls ``process(image, stem) → written paths``.

    A file that cannot be read or processed (``ValueError``, of which ``DataError`` is one, or
    ``OSError``) is reported by name on stderr and in the failures; the others go on.
    """
    items, missing = collect_inputs(inputs)
    failures = [f"{m}: no such file or directory" for m in missing]
    written = []
    bar = tqdm(items, desc="predict", unit="img", file=sys.stderr, disable=not progress)
    for path, stem in bar:
        try:
            image = image_io.decode_image(image_io.read_bytes(path), path=path)
            written += process(image, stem)
        except (ValueError, OSError) as e:
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
    """Predicts every image of ``inputs`` (files or folders) and writes three outputs each:
    three PNGs for a semantic model, or for an instance model :func:`predict_instance_files`'s
    JSON and two PNGs (``score_threshold`` is theirs; ``options`` must then be None).

    Returns:
      ``(written, failures)``: the written paths and one ``"path: reason"`` per input that
      could not be processed.

    Raises:
      ValueError: inference ``options`` given for an instance model.
    """
    if is_instance_model(model):
        if options is not None:
            raise ValueError(
                f"segjax.predict: inference options {options} are for semantic models; "
                f"{type(model).__name__} predicts whole images"
            )
        return predict_instance_files(
            config,
            variables,
            model,
            inputs,
            output_dir,
            score_threshold=score_threshold,
            alpha=alpha,
            progress=progress,
        )
    options = options or inference.InferenceOptions()
    mean = np.asarray(config.data.mean, np.float32)
    std = np.asarray(config.data.std, np.float32)
    predictor = inference.make_predictor(model, options, mean=tuple(mean), std=tuple(std))
    labels_fn = runtime.jit(
        lambda v, x: jax.numpy.argmax(predictor(v, x), axis=-1).astype("uint8"), config
    )
    # One image at a time: the whole model on one device (no replicated work on the others).
    variables = jax.device_put(jax.device_get(variables), jax.local_devices()[0])
    palette = palette_for(config)

    def process(image, stem):
        x = ((image.astype(np.float32) - mean) / std)[None]
        labels = np.asarray(jax.device_get(labels_fn(variables, x)))[0]
        return write_outputs(image, labels, palette, os.path.join(output_dir, stem), alpha)

    return _for_each_image(inputs, process, progress)


# --------------------------------------------------------------------------- instance models


def is_instance_model(model) -> bool:
    """Whether ``model`` predicts instances (boxes, labels, masks) rather than a class map."""
    return isinstance(model, maskrcnn.MaskRCNN)


def class_names_for(config) -> list[str]:
    """Display names of the config's classes: ``config.data.class_names`` when it has them,
    COCO's 91 (:data:`segjax.data.coco_names.CATEGORIES`) for a 91-class model, else
    ``"class k"``.

    Raises:
      ValueError: ``config.data.class_names`` does not have one name per class.
    """
    num_classes = config.model.num_classes
    given = [str(n) for n in config.data.class_names]
    if given and len(given) != num_classes:
        raise ValueError(
            f"config.data.class_names has {len(given)} names; expected one per class "
            f"(config.model.num_classes={num_classes})"
        )
    if given:
        return given
    if num_classes == coco_names.NUM_CLASSES:
        return list(coco_names.CATEGORIES)
    return [f"class {k}" for k in range(num_classes)]


def _as_image(image) -> np.ndarray:
    """An array as given, or a path decoded to ``uint8 [H, W, 3]`` like the dataset builders."""
    if isinstance(image, str | os.PathLike):
        path = os.fspath(image)
        return image_io.decode_image(image_io.read_bytes(path), path=path)
    return np.asarray(image)


def detect(
    model, variables, images: Sequence, *, batch_size: int = 1, paste: bool = True, fn=None
) -> list[dict]:
    """Instances of each image as plain NumPy arrays: the Python API of the instance path.

    Wraps :func:`segjax.models.maskrcnn.predict_images` (images bucketed to a few padded sizes,
    one compilation per bucket used).

    Args:
      model: an instance model (:class:`segjax.models.maskrcnn.MaskRCNN`).
      variables: its variables.
      images: ``[H, W, 3]`` uint8 (or float in [0, 1]) arrays of any sizes, or paths of image
        files (decoded by :mod:`segjax.data.image_io`: grayscale, RGBA, 16-bit … become RGB).
      batch_size: images per compiled call.
      paste: paste the masks at each image's size (float32 ``[N, H, W]``: 100 masks of a
        12-megapixel photo take 4.8 GB); otherwise return the model's 28×28 masks over each
        box (paste them with :func:`segjax.models.maskrcnn.paste_masks`, a few at a time).
      fn: :func:`segjax.models.maskrcnn.inference_fn` of ``model`` to reuse (its compilation
        cache); default a new one.

    Returns:
      One dict per image, detections best first: ``boxes`` float32 ``[N, 4]`` (x1, y1, x2, y2
      in the image's pixels), ``scores`` ``[N]``, ``labels`` int32 ``[N]`` and ``masks``
      float32 probabilities (threshold at :data:`MASK_THRESHOLD`).

    Raises:
      ValueError: ``model`` is not an instance model.
      DataError: an image cannot be decoded or is not RGB.
    """
    if not is_instance_model(model):
        raise ValueError(
            f"segjax.predict.detect: {type(model).__name__} is not an instance model (MaskRCNN)"
        )
    arrays = [_as_image(im) for im in images]
    results = maskrcnn.predict_images(
        model, variables, arrays, batch_size=batch_size, paste=paste, fn=fn
    )
    out = []
    for result in results:
        order = np.argsort(-result["scores"], kind="stable")
        out.append({k: np.asarray(v)[order] for k, v in result.items()})
    return out


def _paint_and_encode(detections: dict, image_hw, score_threshold: float):
    """``(instance ids uint16 [H, W], one COCO RLE per detection)`` of detections listed best
    first with 28×28 masks, which are pasted :data:`MASK_CHUNK` at a time.

    Detection k (0-based) gets id k + 1 if its score is at least ``score_threshold``; a pixel
    is in its mask above :data:`MASK_THRESHOLD`; where masks overlap, the earlier (higher
    scored) detection keeps the pixel; 0 is background.

    Raises:
      ValueError: more detections than a 16-bit PNG can number.
    """
    scores = detections["scores"]
    if len(scores) > image_io.INSTANCE_ID_MAX:
        raise ValueError(
            f"{len(scores)} detections; at most {image_io.INSTANCE_ID_MAX} fit a 16-bit PNG"
        )
    ids = np.zeros(tuple(image_hw), np.uint16)
    rles = []
    for start in range(0, len(scores), MASK_CHUNK):
        part = slice(start, start + MASK_CHUNK)
        probs = maskrcnn.paste_masks(detections["masks"][part], detections["boxes"][part], image_hw)
        for k, mask in enumerate(probs > MASK_THRESHOLD, start):
            rles.append(_encode_and_paint(mask, ids, k + 1 if scores[k] >= score_threshold else 0))
    return ids, rles


def _encode_and_paint(mask: np.ndarray, ids: np.ndarray, instance_id: int) -> dict:
    """The COCO RLE of ``mask`` (bool ``[H, W]``); paints ``instance_id`` (0: none) into the
    unpainted pixels of ``ids`` under it.

    Only the mask's bounding rectangle is copied: pycocotools encodes a Fortran-ordered uint8
    image, and transposing a whole 12-megapixel mask for each of 100 small objects would cost
    seconds.
    """
    fortran = np.zeros(mask.shape, np.uint8, order="F")
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size:
        c0, c1 = cols[0], cols[-1] + 1
        rows = np.flatnonzero(mask[:, c0:c1].any(axis=1))
        r0, r1 = rows[0], rows[-1] + 1
        region = mask[r0:r1, c0:c1]
        fortran[r0:r1, c0:c1] = region
        if instance_id:
            unpainted = ids[r0:r1, c0:c1]  # a view: assigning through it paints ``ids``
            unpainted[region & (unpainted == 0)] = instance_id
    return coco_mask.encode(fortran)


def image_id_for(stem: str) -> int | str:
    """The ``image_id`` of an output stem: the file name as an integer when it is all digits
    (COCO's ``000000397133`` → 397133), otherwise the stem with ``/`` separators."""
    name = os.path.basename(stem)
    if name.isascii() and name.isdigit():
        return int(name)
    return stem.replace(os.sep, "/")


def write_instances(
    image: np.ndarray,
    detections: dict,
    names: Sequence[str],
    stem_path: str,
    image_id: int | str,
    *,
    score_threshold: float = 0.5,
    alpha: float = 0.5,
) -> list[str]:
    """Writes ``<stem>.json``, ``<stem>_instances.png`` (16-bit) and ``<stem>_overlay.png`` of
    one image's detections (module docstring), given best first with 28×28 masks as
    ``detect(..., paste=False)`` returns them: they are pasted a few at a time, so that memory
    stays at a few full-size masks whatever the image size."""
    os.makedirs(os.path.dirname(stem_path) or ".", exist_ok=True)
    ids, rles = _paint_and_encode(detections, image.shape[:2], score_threshold)
    paths = [f"{stem_path}.json", f"{stem_path}_instances.png", f"{stem_path}_overlay.png"]
    with open(paths[0], "w") as f:
        json.dump(coco_results(detections, rles, image_id), f)
    Image.fromarray(ids).save(paths[1])  # uint16 → a 16-bit grayscale PNG
    overlay = visualize.instance_overlay(image, ids, detections, names, score_threshold, alpha)
    Image.fromarray(overlay).save(paths[2])
    return paths


def predict_instance_files(
    config,
    variables,
    model,
    inputs: list[str],
    output_dir: str,
    *,
    score_threshold: float = 0.5,
    alpha: float = 0.5,
    progress: bool = True,
    fn=None,
) -> tuple[list[str], list[str]]:
    """Detects the instances of every image of ``inputs`` (files or folders) with an instance
    ``model`` and writes :func:`write_instances`' three files each, one image at a time on one
    device. The model compiles once per padded-size bucket used, with ``config.runtime``'s
    backend settings, unless ``fn`` (:func:`segjax.models.maskrcnn.inference_fn`
    of ``model``, with its compilation cache) is given.

    Returns:
      ``(written, failures)`` as :func:`predict_files`.
    """
    fn = fn or maskrcnn.inference_fn(model, config)
    variables = jax.device_put(jax.device_get(variables), jax.local_devices()[0])
    names = class_names_for(config)

    def process(image, stem):
        detections = detect(model, variables, [image], paste=False, fn=fn)[0]
        return write_instances(
            image,
            detections,
            names,
            os.path.join(output_dir, stem),
            image_id_for(stem),
            score_threshold=score_threshold,
            alpha=alpha,
        )

    return _for_each_image(inputs, process, progress)


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
        # Options are checked before the (slow) restore; building the module costs nothing.
        options = None
        if is_instance_model(trainer.create_model(config)):
            cli.require_no_semantic_flags(config.model.name, "--score_threshold, --alpha")
        else:
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
            score_threshold=f.score_threshold.value,
        )
    print(f"wrote {len(written)} files to {output}", flush=True)
    if failures:
        cli.fail(f"{len(failures)} input(s) failed: " + "; ".join(failures), code=1)


if __name__ == "__main__":
    cli.run_tool(main)
