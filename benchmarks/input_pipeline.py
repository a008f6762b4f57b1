"""Training input pipeline throughput: images/s per CPU core at crop 512 on VOC-like data.

Generates VOC-like examples (500×375 JPEG photos-like images, quality 90, and palette-PNG masks
with 21 classes and a 255 border band) into a temporary folder dataset, prepares it through
``segjax.data.folder`` (not timed), then times ``segjax.input.pipeline.train_iterator``: decode →
random scale 0.5–2.0 → pad → random 512×512 crop → flip → (photometric) → normalise → batch
(``augment.train_transform``, computed crop-first). Nothing is cached, so every image is decoded
every time.

"Per core" is measured two ways: with the tf.data thread pool and TF's op pools limited to
``--threads`` (default 1), ``images/s / threads``; and images per CPU-second actually used by
the process (user + system time), which stays meaningful on a shared machine.

``--photometric`` and ``--cat-max-ratio`` set ``config.data.photometric`` / ``cat_max_ratio``;
``--colour-model hsv`` (no config key: the pipeline uses ``yiq``) is swapped into
``augment.train_transform`` for this process only.

Run:  python -m benchmarks.input_pipeline [--images 64] [--batches 40] [--threads 1]
      [--photometric [--colour-model yiq|hsv]] [--cat-max-ratio 0.75]
"""

import argparse
import functools
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from segjax import config as config_lib  # noqa: E402
from segjax import data
from segjax.data import base  # noqa: E402
from segjax.evaluation import metrics
from segjax.input import augment, pipeline

H, W = 375, 500


def voc_like_example(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like image (smooth gradients, blobs, mild noise) and a matching class mask."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    image = np.empty((H, W, 3), np.float32)
    c0, c1 = rng.uniform(0, 255, (2, 3))
    t = (xx / W + yy / H)[..., None] / 2
    image[:] = c0 * (1 - t) + c1 * t
    mask = np.zeros((H, W), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(30, 150, 2)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image[inside] = (
            rng.uniform(0, 255, 3) + 20 * np.sin(xx[inside] / rng.uniform(3, 20))[:, None]
        )
        mask[inside] = rng.integers(1, 21)
    image += rng.normal(0, 4, image.shape)
    edge = np.zeros_like(mask, bool)
    edge[1:] |= mask[1:] != mask[:-1]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    mask[edge] = metrics.IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_dataset(root: str, count: int, seed: int = 0) -> None:
    """Writes ``count`` VOC-like JPEG + palette PNG pairs to ``root/{images,masks}/train``."""
    rng = np.random.default_rng(seed)
    palette = [c for rgb in base.default_palette(256) for c in rgb]
    os.makedirs(os.path.join(root, "images", "train"))
    os.makedirs(os.path.join(root, "masks", "train"))
    for i in range(count):
        image, mask = voc_like_example(rng)
        Image.fromarray(image).save(
            os.path.join(root, "images", "train", f"{i:06d}.jpg"), quality=90
        )
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(os.path.join(root, "masks", "train", f"{i:06d}.png"))


def _time_batches(args) -> tuple[float, float, dict]:
    """``(wall s, process CPU s, last batch)`` of ``args.batches`` batches after the warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "voc_like")
        write_dataset(root, args.images)
        cfg = config_lib.base_config()
        cfg.data.name = "folder"
        cfg.data.root = root
        cfg.data.data_dir = os.path.join(tmp, "tfds")
        cfg.data.num_classes = 21
        cfg.data.crop_size = (args.crop, args.crop)
        cfg.data.scale_range = (0.5, 2.0)
        cfg.data.hflip = True
        cfg.data.photometric = args.photometric
        cfg.data.cat_max_ratio = args.cat_max_ratio
        cfg.data.cache = False
        cfg.data.num_threads = args.threads
        cfg.train.batch_size = args.batch_size
        source = data.get_source(cfg.data)
        it = pipeline.train_iterator(source, cfg)
        for _ in range(args.warmup):
            batch = next(it)
        # process_time: CPU time of every thread, at clock_gettime resolution (os.times counts
        # 10 ms ticks, which a short run may not reach).
        cpu0, t0 = time.process_time(), time.perf_counter()
        for _ in range(args.batches):
            batch = next(it)
        return time.perf_counter() - t0, time.process_time() - cpu0, batch


def run(args) -> dict:
    """Times ``args.batches`` training batches (after ``args.warmup``); returns the figures."""
    try:
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        pinned = True
    except RuntimeError:  # TF already initialised (e.g. called from a test): keep its pools
        pinned = False
    transform = augment.train_transform
    if args.colour_model != "yiq":
        augment.train_transform = functools.partial(transform, colour_model=args.colour_model)
    try:
        wall, cpu, batch = _time_batches(args)
    finally:
        augment.train_transform = transform
    n = args.batches * args.batch_size
    assert batch["image"].shape == (args.batch_size, args.crop, args.crop, 3)
    return {
        "benchmark": "segjax.input.pipeline.train_iterator",
        "crop": args.crop,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "tf_op_threads_pinned": pinned,
        "photometric": args.photometric,
        "colour_model": args.colour_model if args.photometric else None,
        "cat_max_ratio": args.cat_max_ratio,
        "images": n,
        "wall_s": round(wall, 2),
        "images_per_s": round(n / wall, 1),
        "images_per_s_per_thread": round(n / wall / args.threads, 1),
        "cpu_s": round(cpu, 2),
        "images_per_cpu_s": round(n / cpu, 1) if cpu > 0 else float("nan"),
    }


def main():
    """CLI entry point: prints the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64, help="distinct generated examples")
    parser.add_argument("--batches", type=int, default=40, help="timed batches")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1, help="tf.data and TF op threads")
    parser.add_argument("--photometric", action="store_true", help="enable photometric distortion")
    parser.add_argument("--colour-model", choices=("yiq", "hsv"), default="yiq")
    parser.add_argument("--cat-max-ratio", type=float, default=1.0, help="< 1: class-balanced crop")
    print(json.dumps(run(parser.parse_args())))


if __name__ == "__main__":
    main()
