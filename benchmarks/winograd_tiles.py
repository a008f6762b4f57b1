"""Winograd F(2×2, 3×3) vs F(4×4, 3×3) per conv: time, temp memory and float32 error.

    python -m benchmarks.winograd_tiles                       # ResNet-50 / DeepLabV3 shapes
    python -m benchmarks.winograd_tiles --batch 8 --side 64   # the 512² shapes
    python -m benchmarks.winograd_tiles --cases "layer3 d2,fcn head" --repeats 5

Each case is a 3×3 stride-1 conv the segmentation models route to
:func:`segjax.xla_cpu.winograd.conv3x3_winograd` (batch 4, 256² input, output stride 8 by default:
the backbone's 3×3 convs at 64² and 32² and the heads'), run with each output tile size:

* ``fwd ms``: the jitted forward; ``fwd+bwd ms``: ``jax.grad`` of ``⟨conv(x, k), g⟩`` with
  respect to input and kernel (forward + the custom VJP's recomputed transform and both
  gradients), medians of ``--repeats`` after a warm-up (``common.jitted_median_ms``);
* ``temp MiB``: XLA's ``memory_analysis().temp_size_in_bytes`` of the compiled fwd+bwd (the
  buffers it allocates besides its arguments and outputs: tiles, products, gradients);
* ``err``: max |float32 Winograd − float64 direct conv| / max |y| on post-ReLU half-normal
  inputs and a He-initialised kernel (what a ResNet feeds its 3×3 convs);

all under the memory-optimised XLA:CPU scheduler, as training compiles.
"""

import argparse
import json

import numpy as np

from benchmarks import common

# name → (Cin, Cout, dilation, side multiplier of --side: 2 = the stride-4 layer1 maps)
CASES = {
    "layer1 64": (64, 64, 1, 2),
    "layer2 128": (128, 128, 1, 1),
    "layer3 256 d2": (256, 256, 2, 1),
    "layer4 512 d4": (512, 512, 4, 1),
    "deeplab head 256": (256, 256, 1, 1),
    "aux head 1024": (1024, 256, 1, 1),
    "fcn head 2048": (2048, 512, 1, 1),
}


def _arrays(batch: int, side: int, cin: int, cout: int):
    rng = np.random.default_rng(0)
    x = np.maximum(rng.normal(size=(batch, side, side, cin)), 0).astype(np.float32)
    k = rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout)).astype(np.float32)
    g = rng.normal(size=(batch, side, side, cout)).astype(np.float32)
    return x, k, g


def _float32_error(x, k, d, m) -> float:
    """max |float32 F(m, 3) − float64 direct conv| / max |y|."""
    import jax
    import jax.numpy as jnp

    from segjax.xla_cpu import winograd

    padding = ((d, d), (d, d))
    with jax.enable_x64(True):
        want = jax.lax.conv_general_dilated(
            jnp.asarray(x, jnp.float64), jnp.asarray(k, jnp.float64), (1, 1), padding,
            rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        got = jax.jit(lambda x, k: winograd.conv3x3_winograd(x, k, padding, d, None, m))(x, k)
        return float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want)))


def measure(case: str, batch: int, side: int, repeats: int) -> list[dict]:
    """One row per output tile size for ``case`` (module docstring)."""
    import jax
    import jax.numpy as jnp

    from segjax import xla_cpu
    from segjax.xla_cpu import winograd

    cin, cout, d, mult = CASES[case]
    x, k, g = (jnp.asarray(a) for a in _arrays(batch, side * mult, cin, cout))
    padding = ((d, d), (d, d))
    options = xla_cpu.compiler_options("memory")
    rows = []
    for m in winograd.OUTPUT_TILES:
        conv = lambda x, k, m=m: winograd.conv3x3_winograd(x, k, padding, d, None, m)
        fwd = jax.jit(conv, compiler_options=options)
        grad = jax.jit(
            jax.grad(lambda x, k, g, conv=conv: jnp.vdot(conv(x, k), g), (0, 1)),
            compiler_options=options,
        )
        compiled = grad.lower(x, k, g).compile()
        rows.append(
            {
                "case": case,
                "shape": f"{batch}×{side * mult}²×{cin}→{cout} d{d}",
                "tile": m,
                "fwd_ms": common.jitted_median_ms(fwd, x, k, repeats=repeats),
                "fwd_bwd_ms": common.jitted_median_ms(compiled, x, k, g, repeats=repeats),
                "temp_mib": compiled.memory_analysis().temp_size_in_bytes / 2**20,
                "err": _float32_error(x, k, d, m),
            }
        )
    return rows


def main(argv=None) -> list[dict]:
    """CLI entry point: prints a table (with ``--json`` also one JSON line)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--side", type=int, default=32, help="side of the stride-8 maps")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated names of CASES")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = []
    print(f"{'case':<18} {'shape':<22} tile {'fwd ms':>8} {'fwd+bwd ms':>10} {'temp MiB':>9} err")
    for case in args.cases.split(","):
        for r in measure(case.strip(), args.batch, args.side, args.repeats):
            rows.append(r)
            print(
                f"{r['case']:<18} {r['shape']:<22} {r['tile']:>4} {r['fwd_ms']:8.1f} "
                f"{r['fwd_bwd_ms']:10.1f} {r['temp_mib']:9.1f} {r['err']:.1e}",
                flush=True,
            )
    if args.json:
        print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
