"""Pictures of predictions: instances blended over an image with labelled boxes.

Used by ``segjax.predict`` (overlay files) and by training's TensorBoard images of instance
models (:mod:`segjax.tasks.instance`), so both draw detections the same way.
"""

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def paint_instances(masks: np.ndarray) -> np.ndarray:
    """Instance ids ``uint16 [H, W]`` of boolean ``masks [N, H, W]`` listed best first: id k + 1
    for mask k, where masks overlap the earlier one keeps the pixel, 0 is background."""
    ids = np.zeros(masks.shape[1:], np.uint16)
    for k in range(len(masks) - 1, -1, -1):  # the best last, so it ends on top
        ids[masks[k]] = k + 1
    return ids


def instance_colours(n: int) -> np.ndarray:
    """``n`` distinct colours ``uint8 [n, 3]``: hues a golden-ratio turn apart, so detections
    next to each other in score order differ clearly."""
    hues = (np.arange(n) * 0.618034) % 1.0
    return np.array(
        [[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.8, 1.0)] for h in hues], np.uint8
    ).reshape(n, 3)


def instance_overlay(
    image: np.ndarray,
    ids: np.ndarray,
    detections: dict,
    names: Sequence[str],
    score_threshold: float,
    alpha: float = 0.5,
) -> np.ndarray:
    """``image`` with the instances of ``ids`` blended in (opacity ``alpha``, colour k for id
    k + 1) and every detection scoring at least ``score_threshold`` boxed and labelled
    ``"name score"``."""
    colours = instance_colours(len(detections["scores"]))
    out = image.astype(np.float32)
    fg = ids > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[ids[fg].astype(np.int64) - 1]
    canvas = Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
    selected = np.flatnonzero(detections["scores"] >= score_threshold)
    draw_labelled_boxes(canvas, detections, selected, colours, names)
    return np.asarray(canvas)


def draw_labelled_boxes(canvas: Image.Image, detections, selected, colours, names) -> None:
    """Draws the ``selected`` detections' boxes and ``"name score"`` tags onto ``canvas``."""
    draw = ImageDraw.Draw(canvas)
    side = min(canvas.size)
    width = max(1, round(side / 250))
    font = ImageFont.load_default(size=max(10, side // 40))
    for k in selected[::-1]:  # the best last, so that its box and tag end on top
        x1, y1, x2, y2 = (float(v) for v in detections["boxes"][k])
        colour = tuple(int(c) for c in colours[k])
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        label = int(detections["labels"][k])
        name = names[label] if 0 <= label < len(names) else f"class {label}"
        text = f"{name} {detections['scores'][k]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        # The tag sits on the box's top edge, inside the image when the box touches the top.
        tag_y = y1 - (bottom - top) - 2 if y1 >= (bottom - top) + 2 else y1
        draw.rectangle([x1, tag_y, x1 + right - left + 2, tag_y + bottom - top + 2], fill=colour)
        draw.text((x1 + 1 - left, tag_y + 1 - top), text, fill=(0, 0, 0), font=font)
