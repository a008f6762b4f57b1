"""Dense-CRF benchmark: wall time and peak memory of ``segjax.evaluation.crf.dense_crf`` on this
CPU.

Run (from the repository root):

    /work/venv/bin/python -m benchmarks.crf                      # 1 x 512 x 512 x 21, defaults
    /work/venv/bin/python -m benchmarks.crf --size 256 --classes 21 --batch 2 --repeats 3

Prints compile time; median wall time and process CPU time per call (the machine is shared,
so CPU time is the steadier number); the cost per iteration (difference against a 1-iteration
run) and of the set-up; and memory: XLA's planned temporary buffer size for the compiled call
and the process's peak resident set size (``ru_maxrss``, which also counts JAX/XLA itself; the
baseline before the first compile is printed alongside so the difference is visible).
"""

import argparse
import dataclasses
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from segjax.evaluation import crf


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
    """Runs the benchmark and prints its figures."""
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
    load_before = os.getloadavg()

    def measure(iterations):
        p = dataclasses.replace(params, iterations=iterations)
        fn = jax.jit(lambda x, im: crf.mean_field(crf.unary_from_logits(x), im, p))
        start = time.perf_counter()
        compiled = fn.lower(logits, images).compile()
        compile_s = time.perf_counter() - start
        compiled(logits, images).block_until_ready()  # warm-up
        walls, cpus = [], []
        for _ in range(args.repeats):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            compiled(logits, images).block_until_ready()
            walls.append(time.perf_counter() - wall0)
            cpus.append(time.process_time() - cpu0)
        return compiled, compile_s, statistics.median(walls), statistics.median(cpus)

    compiled, compile_s, wall, cpu = measure(args.iterations)
    # With 0 iterations XLA drops the kernels entirely, so difference against 1 iteration.
    _, _, wall1, cpu1 = measure(1)
    extra = max(args.iterations - 1, 1)
    wall_it, cpu_it = (wall - wall1) / extra, (cpu - cpu1) / extra
    mem = compiled.memory_analysis()
    temp_mib = mem.temp_size_in_bytes / 2**20 if mem is not None else float("nan")
    print(f"load average before/after: {load_before} / {os.getloadavg()} on {os.cpu_count()} CPUs")
    print(f"compile {compile_s:.1f} s")
    print(
        f"RESULT {args.iterations} iterations: median wall {wall:.2f} s/call "
        f"({wall / args.batch:.2f} s/image), process CPU time {cpu:.2f} s/call; "
        f"per iteration per image wall {wall_it / args.batch * 1e3:.0f} ms, "
        f"CPU {cpu_it / args.batch * 1e3:.0f} ms; set-up (grid, normalisation, first messages) "
        f"wall {(wall1 - wall_it) / args.batch:.2f} s, CPU {(cpu1 - cpu_it) / args.batch:.2f} s"
    )
    print(
        f"MEMORY XLA temp buffers {temp_mib:.0f} MiB; peak RSS {_rss_mib():.0f} MiB "
        f"(before first compile {rss_before:.0f} MiB); input logits {logits.nbytes / 2**20:.0f} "
        f"MiB; a dense N x N float32 kernel would need {(args.size**2) ** 2 * 4 / 2**30:.0f} GiB"
    )
    print("fields:", {f.name: getattr(params, f.name) for f in dataclasses.fields(params)})


if __name__ == "__main__":
    main()
