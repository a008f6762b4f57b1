"""Dense-CRF benchmark: wall time and peak memory of ``segjax.crf.dense_crf`` on this CPU.

Run (from the repository root):

    /work/venv/bin/python -m benchmarks.crf                      # 1 x 512 x 512 x 21, defaults
    /work/venv/bin/python -m benchmarks.crf --size 256 --classes 21 --batch 2 --repeats 3

Prints compile time, the median steady-state time per call, time per image and per iteration,
and memory: XLA's planned temporary buffer size for the compiled call and the process's peak
resident set size (``ru_maxrss``, which also counts JAX/XLA itself; the baseline before the
first call is printed alongside so the difference is visible).
"""

import argparse
import dataclasses
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from segjax import crf


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(batch: int, size: int, classes: int):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((batch, size, size, 3), np.float32)
    image[..., 0] = np.where(xx + 0.5 * yy > 0.6 * size, 200, 40)
    image[..., 1] = np.where((yy - size / 2) ** 2 + (xx - size / 3) ** 2 < (size / 4) ** 2, 180, 60)
    image[..., 2] = 128 + 60 * np.sin(xx / 17.0)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    logits = rng.normal(0, 1, (batch, size, size, classes)).astype(np.float32)
    return jnp.asarray(logits), jnp.asarray(image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid-spatial-samples", type=float, default=1.0)
    parser.add_argument("--grid-range-samples", type=float, default=1.0)
    args = parser.parse_args()

    params = crf.CRFParams(
        iterations=args.iterations,
        grid_spatial_samples=args.grid_spatial_samples,
        grid_range_samples=args.grid_range_samples,
    )
    logits, images = _inputs(args.batch, args.size, args.classes)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    print(f"input {args.batch}x{args.size}x{args.size}x{args.classes}, {params}")
    rss_before = _rss_mib()

    fn = jax.jit(lambda x, im: crf.mean_field(crf.unary_from_logits(x), im, params))
    start = time.perf_counter()
    compiled = fn.lower(logits, images).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    temp_mib = getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20 if mem else float("nan")

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = compiled(logits, images)
        out.block_until_ready()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    per_image = median / args.batch
    per_iter = per_image / max(args.iterations, 1)
    print(f"compile {compile_s:.1f} s; run times {', '.join(f'{t:.2f}' for t in times)} s")
    print(
        f"RESULT median {median:.2f} s/call, {per_image:.2f} s/image, "
        f"{per_iter * 1e3:.0f} ms/iteration/image (includes grid set-up and normalisation)"
    )
    print(
        f"MEMORY XLA temp buffers {temp_mib:.0f} MiB; peak RSS {_rss_mib():.0f} MiB "
        f"(before first compile {rss_before:.0f} MiB); "
        f"input logits {logits.nbytes / 2**20:.0f} MiB"
    )
    print("fields:", {f.name: getattr(params, f.name) for f in dataclasses.fields(params)})


if __name__ == "__main__":
    main()
