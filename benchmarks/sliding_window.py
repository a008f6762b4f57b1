"""Peak memory and time of sliding-window vs whole-image prediction of a large image.

    python -m benchmarks.sliding_window [--size 2048] [--crop 512] [--tile-batch 1,4] \\
        [--model unet --width 8 --depth 3] [--no-whole]

Each measurement runs in a fresh subprocess (one CPU device) so that its peak RSS
(``ru_maxrss``) is its own. Weights are random (memory and time do not depend on them).
"""

import argparse
import json
import os
import resource
import sys
import time

from benchmarks import common


def _measure(args) -> dict:
    """One measurement (``args.mode``), in this process: compile and run time, peak RSS."""
    # Imported here: Linux keeps ru_maxrss across fork + exec, so the parent, which starts
    # every measurement, must not grow by loading JAX itself.
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np

    from segjax import models
    from segjax.evaluation import inference

    model = models.create(args.model, num_classes=args.classes, width=args.width, depth=args.depth)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: (
            (0.1 * rng.normal(size=s.shape)).astype(np.float32)
            if s.ndim > 1
            else np.ones(s.shape, np.float32)
        ),
        abstract,
    )
    logits_fn = lambda x: model.apply(variables, x)["out"]
    if args.mode == "whole":
        fn = jax.jit(logits_fn)
    else:
        stride = (2 * args.crop) // 3
        fn = jax.jit(
            functools.partial(
                inference.sliding_window,
                logits_fn,
                crop=(args.crop, args.crop),
                stride=(stride, stride),
                tile_batch=args.tile_batch,
            )
        )
    images = jnp.asarray(rng.normal(size=(1, args.size, args.size, 3)).astype(np.float32))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.time()
    compiled = fn.lower(images).compile()
    compile_s = time.time() - t0
    t0 = time.time()
    out = compiled(images)
    labels = np.asarray(jnp.argmax(out, axis=-1))
    run_s = time.time() - t0
    return {
        "mode": args.mode,
        "size": args.size,
        "crop": args.crop if args.mode == "slide" else None,
        "tile_batch": args.tile_batch if args.mode == "slide" else None,
        "output_shape": list(labels.shape),
        "compile_s": round(compile_s, 2),
        "run_s": round(run_s, 2),
        "peak_rss_mib_before": round(rss_before, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main():
    """Runs every measurement in its own subprocess and prints a table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--crop", type=int, default=512)
    p.add_argument("--tile-batch", default="1,4")
    p.add_argument("--model", default="unet")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--no-whole", action="store_true", help="skip the whole-image comparison")
    p.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    p.add_argument("--single-tile-batch", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        args.tile_batch = args.single_tile_batch
        print(json.dumps(_measure(args)), flush=True)
        return
    runs = [("slide", int(tb)) for tb in args.tile_batch.split(",")]
    if not args.no_whole:
        runs.append(("whole", 1))
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("XLA_FLAGS", None)
    results = []
    for mode, tb in runs:
        cmd = [
            "--mode", mode, "--single-tile-batch", str(tb),
            "--size", str(args.size), "--crop", str(args.crop), "--model", args.model,
            "--width", str(args.width), "--depth", str(args.depth), "--classes", str(args.classes),
        ]  # fmt: skip
        try:
            row = common.module_json(sys.executable, "sliding_window", cmd, env=env)
        except RuntimeError as e:
            print(f"{mode} tile_batch={tb}: failed\n{e}", file=sys.stderr)
            continue
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'mode':<6} {'tiles/call':>10} {'peak RSS MiB':>13} {'run s':>7} {'compile s':>10}")
    for r in results:
        tb = r["tile_batch"] if r["tile_batch"] else "-"
        print(
            f"{r['mode']:<6} {tb:>10} {r['peak_rss_mib']:>13.1f} {r['run_s']:>7.2f} "
            f"{r['compile_s']:>10.2f}"
        )


if __name__ == "__main__":
    main()
