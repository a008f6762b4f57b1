"""Convolution forward+backward on XLA:CPU, per ``config.runtime.conv_impl``: XLA's own vs
segjax.xla_cpu's GEMM formulation vs PyTorch, for the convolutions segmentation models run.

    python -m benchmarks.conv_impl                          # default cases, JAX only
    python -m benchmarks.conv_impl --torch-python /work/venv-torch/bin/python
    python -m benchmarks.conv_impl --cases aspp --batch 8 --side 64 --channels 256

Methods, timed in one command (torch in a child interpreter, same thread count):

* ``xla``: ``jax.grad`` of ``lax.conv_general_dilated`` (XLA's input- and weight-gradient
  convolutions);
* ``gemm``: ``segjax.xla_cpu.conv_general_dilated_gemm`` — dense stride-1 3×3 convs with ≥ 64
  channels as Winograd F(2×2, 3×3) GEMMs (forward and both gradients); other convs keep XLA's
  forward and input gradient with the weight gradient as one matmul per kernel tap (XLA's path
  is kept where it was faster: 2–64-channel dense kernels larger than 1×1); transposed convs
  are not routed through it (``lhs_dilation``), so their two rows coincide;
* ``torch``: ``F.conv2d`` / ``F.conv_transpose2d`` forward + ``backward()`` (NCHW).

Each case is one conv; "fwd+bwd" is a jitted ``jax.grad`` of ``sum(conv(x, w)**2)`` w.r.t. input
and kernel (torch: ``loss.backward()``). Times are medians of ``--repeats`` calls after a warm-up
(``benchmarks.common.jitted_median_ms``). GFLOP/s counts 3 × the forward conv's useful FLOPs;
"vs xla" is the fwd+bwd speed-up over ``xla`` (> 1 = faster). Gradients of ``gemm`` are checked
against ``xla`` before timing.

JAX is imported inside the functions that use it: the torch side runs this module in an
interpreter that may have torch and no JAX.
"""

import argparse
import json
import os

import numpy as np

from benchmarks import common


def cases(batch: int, side: int, channels: int) -> dict[str, dict]:
    """name → conv spec (kernel, stride, dilation, groups, in/out channels, transposed)."""
    c = channels
    out = {}
    for rate in (1, 2, 4, 12, 24, 36):
        out[f"3x3 d{rate}"] = {"k": 3, "s": 1, "d": rate, "g": 1, "ci": c, "co": c}
    out["3x3 s2"] = {"k": 3, "s": 2, "d": 1, "g": 1, "ci": c, "co": c}
    out["1x1 4c→c"] = {"k": 1, "s": 1, "d": 1, "g": 1, "ci": 4 * c, "co": c}
    out["1x1 c→4c"] = {"k": 1, "s": 1, "d": 1, "g": 1, "ci": c, "co": 4 * c}
    out["3x3 64ch"] = {"k": 3, "s": 1, "d": 1, "g": 1, "ci": 64, "co": 64}
    out["dw 3x3 d1"] = {"k": 3, "s": 1, "d": 1, "g": c, "ci": c, "co": c}
    out["dw 3x3 d2"] = {"k": 3, "s": 1, "d": 2, "g": c, "ci": c, "co": c}
    out["dw 5x5 s2"] = {"k": 5, "s": 2, "d": 1, "g": c, "ci": c, "co": c}
    out["convT 4x4/2 21ch"] = {"k": 4, "s": 2, "d": 1, "g": 1, "ci": 21, "co": 21, "t": True}
    out["convT 4x4/2 c"] = {"k": 4, "s": 2, "d": 1, "g": 1, "ci": c, "co": c, "t": True}
    for spec in out.values():
        spec.update(batch=batch, side=side)
    return out


def useful_flops(spec: dict) -> float:
    """Forward FLOPs (2·MACs) of the conv, without padding waste."""
    b, side = spec["batch"], spec["side"]
    if spec.get("t"):
        out_pixels = b * side * side  # every input pixel scatters a k×k window
    else:
        o = (side - 1) // spec["s"] + 1
        out_pixels = b * o * o
    return 2.0 * out_pixels * spec["k"] ** 2 * spec["ci"] // spec["g"] * spec["co"]


def _arrays(spec: dict):
    rng = np.random.default_rng(0)
    b, s, k = spec["batch"], spec["side"], spec["k"]
    x = rng.normal(size=(b, s, s, spec["ci"])).astype(np.float32)
    w = rng.normal(size=(k, k, spec["ci"] // spec["g"], spec["co"]))
    w = (w / np.sqrt(k * k * spec["ci"] / spec["g"])).astype(np.float32)
    return x, w


def _jax_conv(spec: dict, conv):
    """``(x, w) → y`` for ``spec`` through ``conv`` (a ``lax.conv_general_dilated`` lookalike)."""
    k, s, d, g = spec["k"], spec["s"], spec["d"], spec["g"]
    dn = ("NHWC", "HWIO", "NHWC")
    if spec.get("t"):
        # torch's ConvTranspose2d(k, stride s, padding 1): an input-dilated conv, flipped kernel.
        p = k - 2
        return lambda x, w: conv(
            x, w[::-1, ::-1], (1, 1), ((p, p), (p, p)), lhs_dilation=(s, s), dimension_numbers=dn
        )
    pad = d * (k - 1) // 2
    return lambda x, w: conv(
        x,
        w,
        (s, s),
        ((pad, pad), (pad, pad)),
        rhs_dilation=(d, d),
        dimension_numbers=dn,
        feature_group_count=g,
    )


def run_jax(specs: dict[str, dict], repeats: int) -> dict[str, dict[str, tuple[float, float]]]:
    """``{case: {method: (fwd ms, fwd+bwd ms)}}`` for the ``xla`` and ``gemm`` methods."""
    import jax
    import jax.numpy as jnp

    from segjax.xla_cpu import conv_general_dilated_gemm

    methods = {"xla": jax.lax.conv_general_dilated, "gemm": conv_general_dilated_gemm}
    results = {}
    for name, spec in specs.items():
        x, w = (jnp.asarray(a) for a in _arrays(spec))
        row, grads = {}, {}
        for method, conv in methods.items():
            f = _jax_conv(spec, conv)
            grad = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), (0, 1)))
            grads[method] = grad(x, w)
            fwd = common.jitted_median_ms(jax.jit(f), x, w, repeats=repeats)
            row[method] = (fwd, common.jitted_median_ms(grad, x, w, repeats=repeats))
        for want, got in zip(grads["xla"], grads["gemm"]):
            scale = float(jnp.max(jnp.abs(want)))
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4 * scale)
        results[name] = row
    return results


def _torch_case(spec: dict, repeats: int) -> tuple[float, float]:
    """``(fwd ms, fwd+bwd ms)`` of ``spec`` in torch (NCHW), each after one warm-up call."""
    import torch
    import torch.nn.functional as F

    x_np, w_np = _arrays(spec)
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    k, s, d, g = spec["k"], spec["s"], spec["d"], spec["g"]
    if spec.get("t"):  # weight [in, out, k, k]
        w = torch.from_numpy(w_np).permute(2, 3, 0, 1).contiguous().requires_grad_(True)
        f = lambda: F.conv_transpose2d(x, w, stride=s, padding=1)
    else:  # weight [out, in/g, k, k]
        w = torch.from_numpy(w_np).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
        f = lambda: F.conv2d(x, w, stride=s, padding=d * (k - 1) // 2, dilation=d, groups=g)

    def forward():
        with torch.no_grad():
            f()

    def both():
        x.grad = w.grad = None
        (f() ** 2).sum().backward()

    return common.warm_median_ms(forward, repeats), common.warm_median_ms(both, repeats)


def run_torch(specs: dict[str, dict], repeats: int, threads: int) -> dict[str, tuple[float, float]]:
    """``{case: (fwd ms, fwd+bwd ms)}`` with torch (NCHW), ``threads`` intra-op threads."""
    import torch

    torch.set_num_threads(threads)
    return {name: _torch_case(spec, repeats) for name, spec in specs.items()}


def main(argv=None) -> None:
    """Runs the benchmark and prints a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--side", type=int, default=32, help="input height = width")
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default="", help="comma-separated substrings of case names")
    parser.add_argument("--torch-python", default=None, help="interpreter with torch (optional)")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=common.cpu_cores())
    args = parser.parse_args(argv)

    specs = cases(args.batch, args.side, args.channels)
    if args.cases:
        wanted = args.cases.split(",")
        specs = {n: s for n, s in specs.items() if any(w in n for w in wanted)}
    if args.torch_worker:
        print(json.dumps(run_torch(specs, args.repeats, args.threads)))
        return

    import jax

    theirs = {}
    if args.torch_python:
        worker = ["--torch-worker", f"--batch={args.batch}", f"--side={args.side}"]
        worker += [f"--channels={args.channels}", f"--repeats={args.repeats}"]
        worker += [f"--cases={args.cases}", f"--threads={args.threads}"]
        try:
            theirs = common.module_json(args.torch_python, "conv_impl", worker)
        except RuntimeError as e:
            raise SystemExit(f"torch worker: {e}") from None
    ours = run_jax(specs, args.repeats)

    print(
        f"jax {jax.__version__} on {jax.default_backend()}, {args.threads} threads, "
        f"input {args.batch}×{args.side}×{args.side}, c={args.channels}, float32, "
        f"median of {args.repeats}; load average {os.getloadavg()[0]:.2f}"
    )
    header = (
        f"{'case':<18} {'method':<6} {'fwd ms':>8} {'fwd+bwd ms':>11} {'GFLOP/s':>8} {'vs xla':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, spec in specs.items():
        rows = dict(ours[name])
        if name in theirs:
            rows["torch"] = tuple(theirs[name])
        ref = rows["xla"][1]
        for method, (fwd, both) in rows.items():
            gflops = 3 * useful_flops(spec) / both / 1e6
            print(
                f"{name:<18} {method:<6} {fwd:>8.1f} {both:>11.1f} {gflops:>8.3g} "
                f"{ref / both:>7.2f}"
            )


if __name__ == "__main__":
    main()
