"""Learned upsampling: transposed convolution vs resize + conv, forward and forward+backward.

    python -m benchmarks.transposed_conv                # FCN-like shapes, 21 channels
    python -m benchmarks.transposed_conv --batch 2 --channels 64 --repeats 20

For each FCN upsampling stage (×2 on 4/2, ×8 on 16/8, ×32 on 64/32 kernels) it times, in one
process and side by side:

* ``convT``: ``layers.BilinearConvTranspose`` (``lax.conv_transpose``, kernel 2f, stride f);
* ``convT-subpixel``: the same transposed conv computed as a 2×2 conv to f²·C channels +
  depth-to-space (``layers.conv_transpose_subpixel``; identical numbers);
* ``resize+conv3``: fixed bilinear resize to the same size, then a learned 3×3 conv there
  (the "resize-convolution" alternative, same number of channels);
* ``resize``: the fixed bilinear resize alone (no parameters) for reference.

"fwd+bwd" is one jitted ``jax.grad`` call (forward and backward) of a scalar loss with respect
to the input and the kernel, as training does. Times are medians of ``--repeats`` jitted
calls after a warm-up (compile excluded); "ratio" is fwd+bwd time / that of the first
method at the same stage (``convT`` by default).
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from segjax.models.layers import BilinearConvTranspose, bilinear_kernel

METHODS = ("convT", "convT-subpixel", "resize+conv3", "resize")

# (name, factor, input side): FCN-8s stages for a 512×512 image.
STAGES = (("x2 (upscore2)", 2, 16), ("x8 (upscore8)", 8, 64), ("x32 (upscore)", 32, 16))


def _cases(factor: int, side: int, channels: int):
    out_side = side * factor
    convt = BilinearConvTranspose(factor)
    subpixel = BilinearConvTranspose(factor, impl="subpixel")
    convt_kernel = jnp.asarray(bilinear_kernel(factor, channels))
    conv3_kernel = jnp.asarray(
        np.random.default_rng(0).normal(0, 0.1, (3, 3, channels, channels)), jnp.float32
    )

    def transposed(x, k):
        y = convt.apply({"params": {"kernel": k}}, x)
        # Crop to the same f·n output as the resize cases (aligned FCN crop).
        return y[:, factor // 2 : factor // 2 + out_side, factor // 2 : factor // 2 + out_side]

    def transposed_subpixel(x, k):
        y = subpixel.apply({"params": {"kernel": k}}, x)
        return y[:, factor // 2 : factor // 2 + out_side, factor // 2 : factor // 2 + out_side]

    def resize_conv(x, k):
        y = jax.image.resize(x, (x.shape[0], out_side, out_side, channels), "bilinear")
        return jax.lax.conv_general_dilated(
            y, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    def resize(x, k):
        del k
        return jax.image.resize(x, (x.shape[0], out_side, out_side, channels), "bilinear")

    return (
        ("convT", transposed, convt_kernel),
        ("convT-subpixel", transposed_subpixel, convt_kernel),
        ("resize+conv3", resize_conv, conv3_kernel),
        ("resize", resize, conv3_kernel),
    )


def main(argv=None) -> None:
    """Runs the benchmark and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channels", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}"
    )
    parser.add_argument("--stages", default="x2,x8,x32", help="comma-separated subset")
    args = parser.parse_args(argv)

    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cpus), "
        f"batch {args.batch}, channels {args.channels}, median of {args.repeats}, float32"
    )
    methods = args.methods.split(",")
    stages = args.stages.split(",")
    header = (
        f"{'stage':<15} {'method':<15} {'out':>7} {'fwd ms':>9} {'fwd+bwd ms':>11} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for stage, factor, side in STAGES:
        if stage.split()[0] not in stages:
            continue
        x = jax.random.normal(jax.random.key(0), (args.batch, side, side, args.channels))
        reference = None
        for method, fn, kernel in _cases(factor, side, args.channels):
            if method not in methods:
                continue
            forward = jax.jit(fn)

            def loss(x, k, fn=fn):
                return jnp.sum(fn(x, k) ** 2)

            backward = jax.jit(jax.grad(loss, argnums=(0, 1)))
            fwd = common.jitted_median_ms(forward, x, kernel, repeats=args.repeats)
            both = common.jitted_median_ms(backward, x, kernel, repeats=args.repeats)
            reference = reference or both
            out = f"{side * factor}²"
            print(
                f"{stage:<15} {method:<15} {out:>7} {fwd:>9.2f} {both:>11.2f} "
                f"{both / reference:>6.2f}"
            )


if __name__ == "__main__":
    main()
