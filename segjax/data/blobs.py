"""Synthetic "cells": grey images of touching blobs with 16-bit instance masks.

A small stand-in for microscopy data where objects touch, for tests and for experiments on the
U-Net border weight map (``config.data.weight_map``). Every image holds roughly round or
elongated blobs on a jittered hexagonal grid, packed so that neighbours would overlap; where two
would, the pixels near their dividing line become background, leaving gaps of 1-3 pixels
between touching blobs (the thin gaps the border weights emphasise). Blobs are bright and
textured with a darker nucleus and a dark membrane along their outline, so the gaps can be seen.

:func:`write_touching_blobs` writes a folder dataset (:mod:`segjax.data.folder`) of them::

    root/images/{train,val}/blob_0000.png    8-bit grey image
    root/masks/{train,val}/blob_0000.png     16-bit PNG of instance ids (0 = background)
    root/classes.txt                         "background", "cell" (or "round", "elongated")
    root/instance_classes.json               with_classes=True: {stem: {id: 1 round | 2 elongated}}

read with ``config.data.name = "folder"``, ``config.data.mask_type = "instance"`` and, for the
two-class variant, ``config.data.instance_classes = "instance_classes.json"``. Instance ids are
distinct random values in 1..65535, not 1..K, as annotation tools leave gaps: readers must not
assume consecutive ids. NumPy only; a 256x256 image takes about 0.1 s.
"""

import json
import os

import numpy as np
from PIL import Image

from segjax.errors import ConfigError

ROUND, ELONGATED = 1, 2
_MAX_ID = 65535


def touching_blobs(
    rng: np.random.Generator,
    size: int | tuple[int, int],
    *,
    radius_range: tuple[float, float] = (7.0, 11.0),
    gap_range: tuple[int, int] = (1, 3),
    fill: float = 0.85,
    min_area: int = 12,
) -> tuple[np.ndarray, np.ndarray, dict[int, int]]:
    """One synthetic image of touching blobs.

    Args:
      rng: the random generator (all randomness comes from it).
      size: ``H`` or ``(H, W)`` in pixels.
      radius_range: range of the blobs' mean radius in pixels.
      gap_range: inclusive range of the background gap, in pixels, left between two blobs that
        would overlap (drawn per pair of neighbours).
      fill: fraction of grid sites that hold a blob (the rest leave background holes).
      min_area: blobs left with fewer pixels after the gaps are cut are dropped.

    Returns:
      ``(image, instances, classes)``: ``uint8 [H, W]`` grey image, ``uint16 [H, W]`` instance
      ids (0 = background; no two instances touch, even diagonally), and ``{id: class}`` with
      class 1 for round and 2 for elongated blobs.
    """
    height, width = (size, size) if isinstance(size, int) else size
    blobs = _random_blobs(rng, height, width, radius_range, fill)
    d1, d2, arg1, arg2, r1 = _nearest_two(blobs, height, width, gap_range[1] + 2.0)
    # One gap per pair of blobs, symmetric, so both sides of a shared border agree.
    n = len(blobs)
    gaps = rng.integers(gap_range[0], gap_range[1] + 1, (n + 1, n + 1))
    gaps = np.triu(gaps) + np.triu(gaps, 1).T
    pair_gap = gaps[arg1, arg2]
    # d2 - d1 is twice the distance to the dividing line between the two nearest blobs.
    inside = (d1 < 0) & (d2 - d1 >= pair_gap)
    labels = np.where(inside, arg1, 0)
    labels = _separate_diagonal_contacts(labels)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    labels[areas[labels] < min_area] = 0

    kept = np.flatnonzero(areas >= min_area)
    kept = kept[kept > 0]
    ids = np.zeros(n + 1, np.int64)
    ids[kept] = np.sort(rng.choice(_MAX_ID, kept.size, replace=False) + 1)
    instances = ids[labels].astype(np.uint16)
    classes = {int(ids[k]): blobs[k - 1]["cls"] for k in kept}
    # Distance to the blob's own edge: its outline, or the gap on a shared border.
    edge = np.minimum(-d1, (d2 - d1 - pair_gap) / 2.0)
    image = _render(rng, labels, blobs, edge, r1)
    return image, instances, classes


def _random_blobs(rng, height, width, radius_range, fill) -> list[dict]:
    """Blob centres on a jittered hexagonal grid packed so that neighbours overlap."""
    mean_radius = float(np.mean(radius_range))
    spacing = 1.7 * mean_radius  # < 2 radii: neighbours overlap and get a cut gap
    blobs = []
    rows = int(height / (spacing * 0.866)) + 2
    cols = int(width / spacing) + 2
    for row in range(rows):
        for col in range(cols):
            if rng.random() >= fill:
                continue
            cy = (row - 0.5) * spacing * 0.866 + rng.uniform(-0.15, 0.15) * spacing
            cx = (col - 0.5 + 0.5 * (row % 2)) * spacing + rng.uniform(-0.15, 0.15) * spacing
            radius = rng.uniform(*radius_range)
            cls = ROUND if rng.random() < 0.5 else ELONGATED
            ratio = rng.uniform(1.0, 1.15) if cls == ROUND else rng.uniform(1.5, 1.8)
            blobs.append(
                {
                    "centre": (cy, cx),
                    "axes": (radius * np.sqrt(ratio), radius / np.sqrt(ratio)),
                    "angle": rng.uniform(0, np.pi),
                    "level": rng.uniform(0.55, 0.85),
                    "cls": cls,
                }
            )
    return blobs


def _ellipse_distance(blob, ys, xs) -> tuple[np.ndarray, np.ndarray]:
    """``(signed distance in pixels to the ellipse outline (negative inside), normalised radius
    (1 on the outline))`` at the pixel coordinates ``ys, xs``; the distance is the first-order
    estimate ``(r - 1) / |grad r|``, exact for circles and close near any outline."""
    cy, cx = blob["centre"]
    a, b = blob["axes"]
    cos, sin = np.cos(blob["angle"]), np.sin(blob["angle"])
    u = (xs - cx) * cos + (ys - cy) * sin
    v = -(xs - cx) * sin + (ys - cy) * cos
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2)
    return (r - 1.0) * r / np.maximum(grad, 1e-9), r


def _nearest_two(blobs, height, width, reach):
    """Per pixel: the signed distances to the nearest and second-nearest blob, their 1-based
    indices (0 = none) and the normalised radius in the nearest blob. Each blob is evaluated
    only in its bounding window, enlarged by ``reach``: pixels farther away can neither be
    inside it nor near its border."""
    far = 1e9  # finite, so differences of two "no blob" distances stay 0, not NaN
    d1 = np.full((height, width), far)
    d2 = np.full((height, width), far)
    r1 = np.full((height, width), far)
    arg1 = np.zeros((height, width), np.int64)
    arg2 = np.zeros((height, width), np.int64)
    for index, blob in enumerate(blobs, start=1):
        cy, cx = blob["centre"]
        extent = max(blob["axes"]) + reach
        y0, y1 = max(int(cy - extent), 0), min(int(cy + extent) + 2, height)
        x0, x1 = max(int(cx - extent), 0), min(int(cx + extent) + 2, width)
        if y0 >= y1 or x0 >= x1:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        d, r = _ellipse_distance(blob, ys, xs)
        w = (slice(y0, y1), slice(x0, x1))
        nearer = d < d1[w]
        second = ~nearer & (d < d2[w])
        d2[w] = np.where(nearer, d1[w], np.where(second, d, d2[w]))
        arg2[w] = np.where(nearer, arg1[w], np.where(second, index, arg2[w]))
        d1[w] = np.where(nearer, d, d1[w])
        arg1[w] = np.where(nearer, index, arg1[w])
        r1[w] = np.where(nearer, r, r1[w])
    return d1, d2, arg1, arg2, r1


def _separate_diagonal_contacts(labels: np.ndarray) -> np.ndarray:
    """``labels`` with no two different blobs 8-adjacent: of two touching pixels the one of the
    higher label becomes background (a thin cut gap can leave diagonal contacts)."""
    labels = labels.copy()
    h, w = labels.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = labels[: h - dy, max(-dx, 0) : w - max(dx, 0)]
        b = labels[dy:, max(dx, 0) : w + min(dx, 0) or None]
        touching = (a > 0) & (b > 0) & (a != b)
        clear_a, clear_b = touching & (a > b), touching & (b > a)
        a[clear_a] = 0  # a and b are views: this clears pixels of labels in place
        b[clear_b] = 0
    return labels


def _smooth(field: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``field`` through the FFT (periodic borders; fine for noise)."""
    fy = np.fft.fftfreq(field.shape[0])[:, None]
    fx = np.fft.rfftfreq(field.shape[1])[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))
    return np.fft.irfft2(np.fft.rfft2(field) * kernel, s=field.shape)


def _render(rng, labels, blobs, edge, radius) -> np.ndarray:
    """The grey image: textured blobs with a darker nucleus (``radius``, the normalised radius
    in the blob, below 0.4) and a dark membrane (``edge`` below 1.5 pixels), on a noisy
    background, slightly blurred."""
    h, w = labels.shape
    inside = labels > 0
    levels = np.array([0.25] + [b["level"] for b in blobs])
    texture = _smooth(rng.normal(size=(h, w)), 1.5)
    texture *= 0.07 / max(texture.std(), 1e-9)
    value = levels[labels] + np.where(inside, texture - 0.18 * (radius < 0.4), 0.0)
    membrane = np.where(inside, np.clip(1.0 - edge / 1.5, 0.0, 1.0), 0.0)
    value = value * (1.0 - membrane) + 0.08 * membrane
    value = _smooth(value, 0.7) + rng.normal(scale=0.03, size=(h, w))
    return np.clip(np.round(value * 255.0), 0, 255).astype(np.uint8)


def write_touching_blobs(
    root: str | os.PathLike,
    *,
    num_images: int,
    size: int | tuple[int, int],
    seed: int,
    val_fraction: float = 0.25,
    with_classes: bool = False,
    **blob_options,
) -> dict[str, list[str]]:
    """Writes a folder dataset of :func:`touching_blobs` images under ``root`` (layout in the
    module docstring).

    Args:
      root: dataset directory (created; existing files of the same names are overwritten).
      num_images: images in total; ``round(val_fraction * num_images)`` (at least 1 when
        ``num_images >= 2``) go to ``val``, the rest to ``train``.
      size: ``H`` or ``(H, W)`` of every image.
      seed: image ``i`` is drawn from ``np.random.default_rng([seed, i])``, so the same
        arguments write the same files.
      val_fraction: fraction of images in the ``val`` split.
      with_classes: also write ``instance_classes.json`` (1 = round, 2 = elongated blob) and
        name three classes in ``classes.txt``; otherwise every blob is class 1, ``"cell"``.
      **blob_options: keyword arguments of :func:`touching_blobs` (``radius_range``,
        ``gap_range``, ``fill``, ``min_area``).

    Returns:
      split → the stems written to it.

    Raises:
      ValueError: ``num_images < 1`` or ``val_fraction`` outside ``[0, 1)``.
    """
    if num_images < 1 or not 0 <= val_fraction < 1:
        raise ConfigError(
            f"write_touching_blobs: num_images={num_images}, val_fraction={val_fraction}; "
            "expected num_images >= 1 and 0 <= val_fraction < 1"
        )
    num_val = min(max(round(val_fraction * num_images), int(num_images >= 2)), num_images - 1)
    num_val = num_val if val_fraction > 0 else 0
    root = os.fspath(root)
    written: dict[str, list[str]] = {"train": [], "val": []}
    table: dict[str, dict[str, int]] = {}
    for i in range(num_images):
        split = "val" if i >= num_images - num_val else "train"
        stem = f"blob_{i:04d}"
        image, instances, classes = touching_blobs(
            np.random.default_rng([seed, i]), size, **blob_options
        )
        for sub, array in (("images", image), ("masks", instances)):
            os.makedirs(os.path.join(root, sub, split), exist_ok=True)
            Image.fromarray(array).save(os.path.join(root, sub, split, f"{stem}.png"))
        table[stem] = {str(k): v for k, v in sorted(classes.items())}
        written[split].append(stem)
    names = ("background", "round", "elongated") if with_classes else ("background", "cell")
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    if with_classes:
        with open(os.path.join(root, "instance_classes.json"), "w") as f:
            json.dump(table, f, indent=1)
    return {split: stems for split, stems in written.items() if stems}
