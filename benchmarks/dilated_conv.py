"""Atrous 3×3 conv (``rhs_dilation``) vs the same conv as a dense conv with a zero-dilated kernel.

    python -m benchmarks.dilated_conv                        # ASPP-like: 33×33, 32 → 32 channels
    python -m benchmarks.dilated_conv --side 65 --channels 128 --rates 1,2,4 --repeats 10

For each rate r it times, in one process and side by side:

* ``atrous``: ``lax.conv_general_dilated(..., rhs_dilation=(r, r))`` with a 3×3 kernel and
  padding r (what ``layers.ConvBN(dilation=r)`` runs);
* ``dense``: the identical result from a dense conv whose ``(2r+1)×(2r+1)`` kernel is the 3×3
  kernel with r − 1 zeros between taps (the kernel is zero-dilated inside the jitted function,
  so the backward pass returns the gradient of the 3×3 kernel, as in training).

Both outputs are checked to agree before timing. "fwd+bwd" is one jitted ``jax.grad`` call of
a scalar loss with respect to input and kernel. Times are medians of ``--repeats`` calls after
a warm-up (compile excluded). "GFLOP/s" counts the useful 3×3 work (2·B·H·W·9·Cin·Cout per
forward, ×3 for forward+backward) for both methods, so it shows how much each wastes;
"dense/atrous" is the ratio of fwd+bwd times.
"""

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

DN = ("NHWC", "HWIO", "NHWC")


def atrous(x: jax.Array, k: jax.Array, rate: int) -> jax.Array:
    """3×3 conv at ``rate`` through ``rhs_dilation`` (same output size)."""
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), ((rate, rate), (rate, rate)), rhs_dilation=(rate, rate), dimension_numbers=DN
    )


def zero_dilate(k: jax.Array, rate: int) -> jax.Array:
    """Inserts ``rate - 1`` zeros between the taps of an HWIO kernel."""
    size = (k.shape[0] - 1) * rate + 1
    return jnp.zeros((size, size, *k.shape[2:]), k.dtype).at[::rate, ::rate].set(k)


def dense(x: jax.Array, k: jax.Array, rate: int) -> jax.Array:
    """The same conv as a dense conv with the zero-dilated kernel."""
    return jax.lax.conv_general_dilated(
        x, zero_dilate(k, rate), (1, 1), ((rate, rate), (rate, rate)), dimension_numbers=DN
    )


def main(argv=None) -> None:
    """Runs the benchmark and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--side", type=int, default=33, help="feature map height = width")
    parser.add_argument("--channels", type=int, default=32, help="input = output channels")
    parser.add_argument("--rates", default="1,2,4,12,24")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    b, s, c = args.batch, args.side, args.channels
    print(
        f"jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} cpus), "
        f"input {b}×{s}×{s}×{c}, 3×3 kernel {c}→{c}, median of {args.repeats}, float32"
    )
    header = (
        f"{'rate':>4} {'method':<7} {'kernel':>7} {'fwd ms':>9} {'fwd+bwd ms':>11} "
        f"{'GFLOP/s':>8} {'dense/atrous':>13}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, s, s, c)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, c, c)) / np.sqrt(9 * c), jnp.float32)
    useful = 2 * b * s * s * 9 * c * c  # forward FLOPs of the 3×3 conv
    for rate in (int(r) for r in args.rates.split(",")):
        want = jax.jit(atrous, static_argnums=2)(x, k, rate)
        got = jax.jit(dense, static_argnums=2)(x, k, rate)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-3, atol=1e-3)
        reference = None
        for name, fn in (("atrous", atrous), ("dense", dense)):
            forward = jax.jit(lambda x, k, fn=fn, r=rate: fn(x, k, r))
            grad = jax.jit(jax.grad(lambda x, k, fn=fn, r=rate: jnp.sum(fn(x, k, r) ** 2), (0, 1)))
            fwd = common.jitted_median_ms(forward, x, k, repeats=args.repeats)
            both = common.jitted_median_ms(grad, x, k, repeats=args.repeats)
            reference = reference or both
            size = 2 * rate + 1 if name == "dense" else 3
            print(
                f"{rate:>4} {name:<7} {f'{size}×{size}':>7} {fwd:>9.2f} {both:>11.2f} "
                f"{3 * useful / both / 1e6:>8.3g} {both / reference:>13.1f}"
            )


if __name__ == "__main__":
    main()
