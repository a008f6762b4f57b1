"""Jitted Mask R-CNN inference and a host loop over images of mixed sizes.

:func:`inference_fn` is the one compiled forward pass (padded batch in, padded detections out),
jitted by :func:`segjax.runtime.jit` with a config's backend settings. :func:`predict_images`
runs it over a list of images: each image goes to its own bucket
(:meth:`ImageTransform.bucket_for` of one image, so batches never need the mixed-orientation
fallback), batches are filled to a fixed ``batch_size`` by repeating the last image, and the
results are stripped of padding and optionally pasted at the original size. Compiles: at most
one per bucket used (five by default) for the model, plus one mask paste per distinct original
size rounded up to 256.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from segjax import runtime
from segjax.models.maskrcnn.model import MaskRCNN
from segjax.models.maskrcnn.transform import check_image, paste_masks


def inference_fn(
    model: MaskRCNN, config: Any = None, **jit_kwargs
) -> Callable[..., dict[str, jax.Array]]:
    """``fn(variables, images, image_sizes, original_sizes) -> detections``, jitted.

    Args:
      model: the module.
      config: whose ``runtime`` backend settings to compile with: a root ConfigDict, its
        ``runtime`` block, or None for the defaults (:func:`segjax.runtime.jit`).
      **jit_kwargs: passed to ``jax.jit`` (``in_shardings`` …); without them the inputs'
        shardings are followed (a batch sharded over a mesh stays sharded).

    Returns:
      The jitted function; its output is the model's dict (``boxes`` in original pixels).
    """

    def forward(variables, images, image_sizes, original_sizes):
        return model.apply(variables, images, image_sizes, original_sizes, train=False)

    return runtime.jit(forward, config, **jit_kwargs)


def _unpad(detections: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    keep = detections["valid"][i]
    return {k: v[i][keep] for k, v in detections.items() if k != "valid"}


def predict_images(
    model: MaskRCNN,
    variables: Any,
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 1,
    paste: bool = True,
    fn: Callable | None = None,
) -> list[dict[str, np.ndarray]]:
    """Detections of each image as plain NumPy arrays (valid ones only, descending score).

    Args:
      model: the module (its ``transform`` resizes and buckets the images).
      variables: its variables.
      images: ``[H, W, 3]`` uint8 or float in [0, 1], any sizes.
      batch_size: images per compiled call (a fixed size: short batches are filled).
      paste: paste the masks at the original size (``masks [N, H, W]`` probabilities);
        otherwise ``masks`` are the 28×28 ones.
      fn: a function from :func:`inference_fn` (reuse it to keep its compilation cache).

    Returns:
      One dict per image: ``boxes [N, 4]`` (original pixels), ``scores [N]``, ``labels [N]``,
      ``masks``.

    Raises:
      DataError: an image is not ``[H, W, 3]`` uint8 / float (the message gives its index).
    """
    fn = fn or inference_fn(model)
    transform = model.transform
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        check_image(image, i)  # before batching, so the error names the image's own index
        size = transform.resized_size_of(np.shape(image))
        groups.setdefault(transform.bucket_for([size]), []).append(i)
    results: list[dict[str, np.ndarray] | None] = [None] * len(images)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            filled = chunk + [chunk[-1]] * (batch_size - len(chunk))
            batch = transform([images[i] for i in filled])
            out = jax.device_get(
                fn(variables, batch["images"], batch["image_sizes"], batch["original_sizes"])
            )
            for j, i in enumerate(chunk):
                result = _unpad(out, j)
                if paste:
                    result["masks"] = paste_masks(
                        result["masks"], result["boxes"], batch["original_sizes"][j]
                    )
                results[i] = result
    return results
