"""The files ``segjax.predict`` writes for instance models, and :func:`detect`, the Python API
of instance prediction.

For ``a/b.jpg`` (:func:`write_instances`):

- ``b.json``: every detection the model returns (its own score threshold, 0.05 for
  torchvision's settings, at most 100), best first, as a COCO results list (``image_id``
  from :func:`image_id_for`, ``category_id``, ``bbox``, ``score``, ``segmentation`` RLE);
- ``b_instances.png``: 16-bit instance ids of the detections scoring at least the score
  threshold, id k the k-th entry of ``b.json``, 0 background;
- ``b_overlay.png``: those instances blended over the image, with boxes and labels.
"""

import json
import os
from collections.abc import Sequence

import jax
import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from segjax.data import coco_names, image_io
from segjax.errors import ConfigError, DataError
from segjax.evaluation import visualize
from segjax.evaluation.coco_eval import MASK_CHUNK, MASK_THRESHOLD, coco_results
from segjax.models import maskrcnn


def class_names_for(config) -> list[str]:
    """Display names of the config's classes: ``config.data.class_names`` when it has them,
    COCO's 91 (:data:`segjax.data.coco_names.CATEGORIES`) for a 91-class model, else
    ``"class k"``.

    Raises:
      ConfigError: ``config.data.class_names`` does not have one name per class.
    """
    num_classes = config.model.num_classes
    given = [str(n) for n in config.data.class_names]
    if given and len(given) != num_classes:
        raise ConfigError(
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
      ConfigError: ``model`` is not an instance model.
      DataError: an image cannot be decoded or is not RGB.
    """
    if not isinstance(model, maskrcnn.MaskRCNN):
        raise ConfigError(
            f"segjax.tasks.instance_outputs.detect: {type(model).__name__} is not an instance "
            "model (MaskRCNN)"
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
        raise DataError(
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


def image_writer(
    config,
    variables,
    model,
    output_dir: str,
    *,
    score_threshold: float = 0.5,
    alpha: float = 0.5,
    fn=None,
):
    """``(image uint8 [H, W, 3], stem) → paths``: detects the instances of one image with an
    instance ``model`` and writes :func:`write_instances`' three files under ``output_dir``,
    one image at a time on one device. The model compiles once per padded-size bucket used,
    with ``config.runtime``'s backend settings, unless ``fn``
    (:func:`segjax.models.maskrcnn.inference_fn` of ``model``, with its compilation cache) is
    given."""
    fn = fn or maskrcnn.inference_fn(model, config)
    variables = jax.device_put(jax.device_get(variables), jax.local_devices()[0])
    names = class_names_for(config)

    def write(image, stem):
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

    return write
