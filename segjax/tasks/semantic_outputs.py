"""The files the tools write for semantic models.

``segjax.evaluate``: the row-normalised confusion matrix as a PNG (:func:`confusion_png`).
``segjax.predict``, for ``a/b.jpg``: ``b_labels.png`` (class ids, 8-bit grayscale),
``b_colour.png`` (the dataset's palette) and ``b_overlay.png`` (colour blended over the image),
all at the input's size (:func:`image_writer`).
"""

import os

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segjax import logs, runtime
from segjax.data import base, cityscapes
from segjax.evaluation import inference


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


def image_writer(config, variables, model, output_dir: str, *, options=None, alpha: float = 0.5):
    """``(image uint8 [H, W, 3], stem) → paths``: predicts the class map of one image with
    ``options`` (:class:`segjax.evaluation.inference.InferenceOptions`, default whole-image)
    and writes :func:`write_outputs`' three PNGs under ``output_dir``. One image at a time, on
    one device."""
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

    def write(image, stem):
        x = ((image.astype(np.float32) - mean) / std)[None]
        labels = np.asarray(jax.device_get(labels_fn(variables, x)))[0]
        return write_outputs(image, labels, palette, os.path.join(output_dir, stem), alpha)

    return write
