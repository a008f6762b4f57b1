"""Mask R-CNN ResNet-50-FPN inference of one image, segjax (one jit) vs torchvision, side by side.

    python -m benchmarks.maskrcnn_inference [--height 480 --width 640] [--repeats 5] \\
        [--torch-python /work/venv-torch/bin/python | --no-torch] [--conv-impl gemm|xla] [--json]

What is timed, per framework, on one random ``--height``×``--width`` uint8 RGB image (default
480×640, COCO's most common size, which both resize to 800×1066 and pad to 800×1088, so both
do the same work), the way a user calls each:

* segjax: ``segjax.models.maskrcnn.predict_images`` (host-side resize and padding to the
  800×1088 bucket, the jitted forward pass of ``inference_fn`` with ``--conv-impl``, the 100
  masks pasted at the image's size): ``e2e_ms``; and the jitted forward pass alone
  (``forward_ms``, padded batch in, padded detections with 28×28 masks out);
* torchvision: ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()`` called on
  ``[image]`` under ``torch.inference_mode()`` (its transform, forward and mask pasting), with as
  many torch threads as this process may use cores: ``e2e_ms``.

Weights are random, each framework its own (no conversion: speed does not depend on the values;
segjax's are drawn at torchvision's initialisation scales, so that proposals are alike), with
one change made in both: the box classifier's weights are zeroed and the
bias of class 1 set to 10, so that every proposal scores ≈ 1 for class 1 and both return the
full 100 detections and paste 100 masks. (A randomly initialised torchvision model otherwise
detects nothing and skips the mask head — not the work of a trained model; segjax's static
shapes do the same work either way.) torchvision with ``weights=None`` uses eval-mode
``BatchNorm2d`` where its COCO model has ``FrozenBatchNorm2d``: the same affine map per channel.

Reported: ``compile_s`` (segjax: lowering + compilation of the forward pass; torchvision has
none, its first call is ``first_call_s``), the median and fastest of ``--repeats`` calls after
one warm-up call, the ratios torchvision ÷ segjax of the median and fastest end-to-end times
(> 1: segjax faster), the number of detections, each process's peak resident set size over the
whole run (segjax's includes compilation and TensorFlow, which ``segjax.data`` imports) and over
the timed calls alone (``VmHWM`` reset after the warm-up, so it starts at the resident size
then), the resident size after imports, the float32 2048² matmul FLOP/s of each framework
measured in the same run, and XLA's FLOP count of the forward pass (plain convolutions,
lowered; loop bodies counted once) with each side's GFLOP/s at that count.

The torchvision side runs in a child interpreter (``--torch-python``: torch and torchvision
needed, JAX not), so that its memory is its own; ``--side torch`` is that child's entry point.
This module imports JAX only inside the segjax side.
"""

import argparse
import json
import os
import statistics
import time
import types

import numpy as np

from benchmarks import common

FORCED_CLASS = 1  # the class every proposal is made to score ≈ 1 for (module docstring)
FORCED_LOGIT = 10.0
NUM_CLASSES = 91


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """The benchmark's input: uniform random ``uint8 [height, width, 3]`` (same on both sides)."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reset_peak_rss() -> bool:
    """Resets this process's ``VmHWM`` to its current resident size (Linux ``clear_refs`` 5);
    False where that is not possible (then peaks are over the whole run)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _timed(fn, repeats: int) -> dict:
    """One warm-up call, then ``repeats`` timed ones: their times, the peak RSS so far
    (``peak_rss_before_bytes``, read before it is reset) and over the timed calls alone."""
    start = time.perf_counter()
    fn()
    warm_s = time.perf_counter() - start
    before = common.peak_rss_bytes()
    reset = reset_peak_rss()
    times = common.times_ms(fn, repeats)
    return {
        "warmup_s": warm_s,
        "times_ms": times,
        "median_ms": statistics.median(times),
        "fastest_ms": min(times),
        "peak_rss_before_bytes": before,
        "peak_rss_timed_bytes": common.peak_rss_bytes() if reset else None,
    }


def _whole_run_peak(*timings: dict) -> int:
    """The process's peak RSS over the whole run, across the resets of :func:`_timed`."""
    return max([common.peak_rss_bytes()] + [t["peak_rss_before_bytes"] for t in timings])


# --------------------------------------------------------------------------- torchvision side


def run_torch(height: int, width: int, *, repeats: int = 5, threads: int | None = None) -> dict:
    """The torchvision figures (module docstring); imports torch here, never JAX.

    Raises:
      ImportError: torch or torchvision is not installed.
    """
    rss_start = common.current_rss_bytes()
    import torch
    import torchvision

    torch.set_num_threads(threads or common.cpu_cores())
    torch.manual_seed(0)
    rss_imports = common.current_rss_bytes()
    net = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES
    ).eval()
    with torch.no_grad():
        cls_score = net.roi_heads.box_predictor.cls_score
        cls_score.weight.zero_()
        cls_score.bias.zero_()
        cls_score.bias[FORCED_CLASS] = FORCED_LOGIT
    image = torch.from_numpy(random_image(height, width)).permute(2, 0, 1).float() / 255
    with torch.inference_mode():
        start = time.perf_counter()
        first = net([image])[0]
        first_s = time.perf_counter() - start
        timing = _timed(lambda: net([image]), repeats)
        a = torch.ones(2048, 2048)
        torch.mm(a, a)
        matmul_ms = min(common.times_ms(lambda: torch.mm(a, a), 5))
    return {
        "framework": "torchvision",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "first_call_s": first_s,
        "e2e": timing,
        "detections": int(first["boxes"].shape[0]),
        "masks_shape": list(first["masks"].shape),
        "rss_at_start_bytes": rss_start,
        "rss_after_imports_bytes": rss_imports,
        "peak_rss_bytes": _whole_run_peak(timing),
        "matmul_peak_flops": 2 * 2048**3 / (matmul_ms / 1e3),
        "load_average_1min_at_end": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- segjax side


def _init_std(name: str, shape) -> float:
    """The standard deviation torchvision's initialisation gives the kernel at ``name``:
    PyTorch's ``nn.Linear`` default (1/√(3·fan_in)) in the box head, ``kaiming_uniform(a=1)``
    (1/√fan_in) in the FPN, N(0, 0.01) in the RPN head, ``kaiming_normal(mode="fan_out")``
    (√(2/fan_out)) in the ResNet and the mask head."""
    fan_in = int(np.prod(shape[:-1]))
    if "roi_heads/box_" in name:
        return 1 / np.sqrt(3 * fan_in)
    if "backbone/fpn/" in name:
        return 1 / np.sqrt(fan_in)
    if "rpn/head/" in name:
        return 0.01
    fan_out = int(np.prod(shape[:-2])) * shape[-1]  # a conv kernel [kh, kw, in, out]
    return np.sqrt(2 / fan_out)


def _segjax_variables(model):
    """Random variables of ``model`` at torchvision's initialisation scales (:func:`_init_std`,
    so that activations, RPN deltas and hence proposals are of the same size as torchvision's),
    zero biases, frozen BN as the identity (scale and variance 1, shift and mean 0), and the
    forced classifier; NumPy, so nothing compiles."""
    import functools

    import jax
    import jax.numpy as jnp

    abstract = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if name.endswith(("/scale", "/var")):
            return np.ones(leaf.shape, np.float32)
        if name.endswith("/kernel") and "box_predictor/cls_score" not in name:
            std = _init_std(name, leaf.shape)
            return rng.normal(0, std, leaf.shape).astype(np.float32)
        value = np.zeros(leaf.shape, np.float32)
        if "box_predictor/cls_score/bias" in name:
            value[FORCED_CLASS] = FORCED_LOGIT
        return value

    return jax.device_put(jax.tree_util.tree_map_with_path(fill, abstract))


def _xla_flops(model, variables, args) -> float:
    """XLA's FLOP count of the forward pass with plain convolutions (lowered, not compiled)."""
    from segjax.models import maskrcnn

    plain = types.SimpleNamespace(conv_impl="xla", cpu_scheduler="memory")  # config.runtime
    cost = maskrcnn.inference_fn(model, plain).lower(variables, *args).cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", float("nan")))


def run_segjax(
    height: int,
    width: int,
    *,
    repeats: int = 5,
    conv_impl: str = "auto",
    cpu_scheduler: str = "memory",
) -> dict:
    """The segjax figures (module docstring)."""
    rss_start = common.current_rss_bytes()
    import jax

    from benchmarks import train_step
    from segjax import xla_cpu
    from segjax.models import maskrcnn

    rss_imports = common.current_rss_bytes()
    peak_flops = train_step.matmul_peak("float32")  # before the model, as train_step does
    model = maskrcnn.maskrcnn_resnet50_fpn(num_classes=NUM_CLASSES)
    variables = _segjax_variables(model)
    image = random_image(height, width)
    batch = model.transform([image])
    args = (batch["images"], batch["image_sizes"], batch["original_sizes"])
    settings = types.SimpleNamespace(conv_impl=conv_impl, cpu_scheduler=cpu_scheduler)
    fn = maskrcnn.inference_fn(model, settings)  # settings: a config.runtime block
    start = time.perf_counter()
    compiled = fn.lower(variables, *args).compile()
    compile_s = time.perf_counter() - start
    forward = _timed(lambda: jax.block_until_ready(compiled(variables, *args)), repeats)
    results = {}

    def e2e():
        results["out"] = maskrcnn.predict_images(model, variables, [image], fn=compiled)[0]

    timing = _timed(e2e, repeats)
    peak_rss = _whole_run_peak(forward, timing)  # before _xla_flops lowers a second variant
    flops = _xla_flops(model, variables, args)
    return {
        "framework": "segjax",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": getattr(jax.devices()[0], "device_kind", ""),
        "threads": common.cpu_cores(),
        "conv_impl": xla_cpu.resolve_conv_impl(conv_impl),
        "cpu_scheduler": cpu_scheduler,
        "padded_size": list(batch["images"].shape[1:3]),
        "resized_size": [int(s) for s in batch["image_sizes"][0]],
        "compile_s": compile_s,
        "forward": forward,
        "e2e": timing,
        "detections": int(results["out"]["scores"].shape[0]),
        "masks_shape": list(results["out"]["masks"].shape),
        "rss_at_start_bytes": rss_start,
        "rss_after_imports_bytes": rss_imports,
        "peak_rss_bytes": peak_rss,
        "matmul_peak_flops": peak_flops,
        "xla_flops": flops,
        "load_average_1min_at_end": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- report


def _gib(value) -> str:
    """Bytes as GiB with two decimals; "-" for None."""
    return "-" if value is None else f"{value / 2**30:.2f}"


def _rows(ours: dict, theirs: dict | None) -> list[tuple[str, str, str]]:
    """``(figure, segjax, torchvision)`` rows of the side-by-side table ("-": not measured)."""
    flops = ours["xla_flops"]

    def row(name, get, get_theirs=None):
        get_theirs = get_theirs or get
        return name, get(ours), (get_theirs(theirs) if theirs else "-")

    def e2e_gflops(r):
        return f"{flops / (r['e2e']['median_ms'] / 1e3) / 1e9:.1f}"

    return [
        row("threads", lambda r: str(r["threads"])),
        row("compile s", lambda r: f"{r['compile_s']:.1f}", lambda r: "-"),
        row(
            "first call s",
            lambda r: f"{r['e2e']['warmup_s']:.2f}",
            lambda r: f"{r['first_call_s']:.2f}",
        ),
        row("forward median ms", lambda r: f"{r['forward']['median_ms']:.0f}", lambda r: "-"),
        row("forward fastest ms", lambda r: f"{r['forward']['fastest_ms']:.0f}", lambda r: "-"),
        row("end-to-end median ms", lambda r: f"{r['e2e']['median_ms']:.0f}"),
        row("end-to-end fastest ms", lambda r: f"{r['e2e']['fastest_ms']:.0f}"),
        row("detections", lambda r: str(r["detections"])),
        row("GFLOP/s at XLA's count, e2e", e2e_gflops),
        row("2048² matmul GFLOP/s", lambda r: f"{r['matmul_peak_flops'] / 1e9:.1f}"),
        row("RSS after imports GiB", lambda r: _gib(r["rss_after_imports_bytes"])),
        row("peak RSS, whole run GiB", lambda r: _gib(r["peak_rss_bytes"])),
        row("peak RSS, timed e2e GiB", lambda r: _gib(r["e2e"]["peak_rss_timed_bytes"])),
        row("load average at end", lambda r: f"{r['load_average_1min_at_end']:.2f}"),
    ]


def _print_report(args, summary: dict) -> None:
    """The human-readable report: set-up line, table and ratios."""
    ours, theirs = summary["segjax"], summary.get("torchvision")
    print(
        f"maskrcnn_resnet50_fpn inference, 1 image {args.height}×{args.width} → resized "
        f"{ours['resized_size']}, padded {ours['padded_size']}, float32, {ours['backend']} "
        f"({ours['device_kind']}), {ours['threads']} cores, segjax conv_impl="
        f"{ours['conv_impl']}; load average {summary['load_average_1min_at_start']:.2f} at "
        f"start; medians of {args.repeats} calls after 1 warm-up; XLA's forward FLOPs "
        f"{ours['xla_flops'] / 1e9:.0f} G"
    )
    rows = _rows(ours, theirs)
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}  {'segjax':>12}  {'torchvision':>12}")
    for name, a, b in rows:
        print(f"{name:<{width}}  {a:>12}  {b:>12}")
    if theirs:
        print(
            f"torchvision / segjax end-to-end time: median {summary['ratio_median']:.2f}×, "
            f"fastest {summary['ratio_fastest']:.2f}× (> 1: segjax faster)"
        )


def _parser() -> argparse.ArgumentParser:
    """The command line (module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--repeats", type=int, default=5, help="timed calls (median) after 1 warm-up")
    p.add_argument("--conv-impl", default="auto", choices=("auto", "gemm", "xla"))
    p.add_argument("--cpu-scheduler", default="memory", choices=("memory", "concurrency", "xla"))
    p.add_argument("--torch-python", default=None, help="interpreter with torch + torchvision")
    p.add_argument("--no-torch", action="store_true", help="segjax only")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument(
        "--side",
        choices=("torch",),
        default=None,
        help="run only the torchvision side here and print its JSON (the child process)",
    )
    p.add_argument("--json", action="store_true", help="also print all figures as JSON")
    return p


def _torch_in_child(args) -> dict:
    """The torchvision side in ``--torch-python`` (or this interpreter), as a child process.

    Raises:
      RuntimeError: no interpreter with torch, or the child failed.
    """
    from benchmarks import torchvision_step

    python = torchvision_step.torch_python(args.torch_python)
    child_args = ["--side", "torch", "--height", str(args.height), "--width", str(args.width)]
    child_args += ["--repeats", str(args.repeats)]
    if args.threads:
        child_args += ["--threads", str(args.threads)]
    return common.module_json(python, "maskrcnn_inference", child_args)


def main(argv=None) -> dict:
    """CLI entry point; returns the figures (printed, with ``--json`` also as one JSON line)."""
    args = _parser().parse_args(argv)
    if args.side == "torch":
        result = run_torch(args.height, args.width, repeats=args.repeats, threads=args.threads)
        print(json.dumps(result))
        return result
    summary = {"load_average_1min_at_start": os.getloadavg()[0]}
    summary["segjax"] = run_segjax(
        args.height,
        args.width,
        repeats=args.repeats,
        conv_impl=args.conv_impl,
        cpu_scheduler=args.cpu_scheduler,
    )
    if not args.no_torch:
        try:
            theirs = _torch_in_child(args)
        except RuntimeError as e:
            raise SystemExit(f"torchvision side: {e}") from None
        summary["torchvision"] = theirs
        ours = summary["segjax"]
        summary["ratio_median"] = theirs["e2e"]["median_ms"] / ours["e2e"]["median_ms"]
        summary["ratio_fastest"] = theirs["e2e"]["fastest_ms"] / ours["e2e"]["fastest_ms"]
    _print_report(args, summary)
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
