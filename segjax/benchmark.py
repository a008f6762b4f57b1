"""Training / evaluation throughput, MFU, memory and compile time, side by side with torchvision.

    python -m segjax.benchmark --model deeplabv3_resnet50 --batch 4 --size 256 --steps 3
    python -m segjax.benchmark --model fcn_resnet50 --batch 4 --size 256 --steps 3 \\
        --compare torchvision --torch-python /work/venv-torch/bin/python

One train step is what ``segjax.trainer.make_train_step`` builds from the base config: forward
with ``train=True`` (BatchNorm in training mode, dropout), pixel-wise cross-entropy with 255
ignored (+ 0.4 × the auxiliary head's loss when the model has one), SGD with momentum 0.9 and
weight decay 1e-4, the non-finite-update guard. Inputs are random images and random labels
(5 % of pixels 255); the parameters are He-initialised numpy arrays (no compiled init).

Reported:

* ``compile_s``: lowering + XLA compilation of the train step (eval step: ``eval_compile_s``);
* ``step_ms``: median of ``--steps`` train steps after one warm-up step; ``train_img_s`` =
  batch / step time; ``eval_img_s`` likewise for a ``train=False`` forward pass;
* ``flops_per_step``: the model's FLOPs per train step, as XLA's cost analysis counts the step
  written with plain convolutions (``conv_backward="xla"``, lowered, not compiled): the count MFU
  is defined on, comparable across paths and frameworks; ``executed_flops_per_step``: the cost
  analysis of the compiled step actually timed (lower on the ``taps`` path, whose Winograd
  convolutions do 2.25× fewer multiply-adds and which skips multiplications by padding);
* ``mfu``: ``flops_per_step / step time / peak``; the peak is measured on CPU (the fastest of
  5 calls of a 2048² matmul, before the model runs) or the published dense peak of a known
  GPU/TPU (``PUBLISHED_PEAKS``);
* ``peak_memory_bytes``: device ``memory_stats()["peak_bytes_in_use"]`` where the backend has
  it, else the peak resident set size of the process (``VmHWM``; includes compilation, the
  Python runtime and, for segjax, TensorFlow imported by the input pipeline);
* ``--compare torchvision``: the same model from torchvision (same batch, size, loss, SGD) in a
  child process started by this command (``--torch-python``: an interpreter with torch and
  torchvision; default this one), with as many torch threads as the CPU cores JAX uses, and
  the ratio ``segjax train img/s ÷ torchvision train img/s`` (and the same for eval).

``--conv-backward taps`` (the default on CPU) traces the train and eval steps inside
``layers.fast_conv_backward()``: every ``nn.Conv`` runs through
``layers.conv_general_dilated_fast`` (weight gradients as per-tap matmuls, 1×1 convs as matmuls,
depthwise convs as shifted multiply-adds, mostly-padding atrous convs as shifted matmuls; same
numbers). ``xla`` keeps XLA's own convolutions. ``--cpu-scheduler`` picks XLA:CPU's instruction
scheduler for both steps (``config.cpu_scheduler``; default ``memory``, as training uses). See
docs/PERFORMANCE.md for measured figures.

This module imports neither JAX nor torch at import time: the torchvision side runs in an
interpreter that may not have JAX.
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

# Published dense peak FLOP/s (no sparsity) by ``device_kind`` substring: (float32, bfloat16).
PUBLISHED_PEAKS = {
    "TPU v2": (None, 45e12),
    "TPU v3": (None, 123e12),
    "TPU v4": (None, 275e12),
    "TPU v5 lite": (None, 197e12),
    "TPU v5e": (None, 197e12),
    "TPU v5p": (None, 459e12),
    "TPU v6 lite": (None, 918e12),
    "H100": (67e12, 989e12),
    "A100": (19.5e12, 312e12),
    "V100": (15.7e12, 125e12),
    "A10G": (31.2e12, 125e12),
    "L4": (30.3e12, 121e12),
    "T4": (8.1e12, 65e12),
}

# torchvision model builders for our names (aux head on where segjax has one).
TORCHVISION_MODELS = {
    "fcn_resnet50": ("fcn_resnet50", True),
    "fcn_resnet101": ("fcn_resnet101", True),
    "deeplabv3_resnet50": ("deeplabv3_resnet50", True),
    "deeplabv3_resnet101": ("deeplabv3_resnet101", True),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", True),
    "lraspp_mobilenet_v3_large": ("lraspp_mobilenet_v3_large", False),
}

AUX_WEIGHT = 0.4
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
IGNORE = 255


def cpu_cores() -> int:
    """Number of CPU cores this process may run on (what XLA:CPU's thread pool uses)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    ``VmHWM`` of ``/proc/self/status`` where it exists: unlike ``getrusage``'s ``ru_maxrss``,
    which Linux carries over from the parent process across fork + exec, it is this program's own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) * (1 if sys.platform == "darwin" else 1024)


def _times_ms(fn, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def _median_ms(fn, steps: int) -> float:
    return statistics.median(_times_ms(fn, steps))


def random_batch(batch: int, size: int, num_classes: int, seed: int = 0):
    """Random NHWC float images and int32 labels with 5 % ignored (255) pixels."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=(batch, size, size)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.05] = IGNORE
    return images, labels


# ----------------------------------------------------------------------------- JAX side


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a jitted ``n×n @ n×n`` matmul: the fastest of ``repeats`` calls."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), getattr(jnp, dtype))
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, a))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(a, a))
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times)


def device_peak(dtype: str = "float32") -> tuple[float, str]:
    """``(peak FLOP/s, where it comes from)`` for the first JAX device."""
    import jax

    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", "")
    if dev.platform != "cpu":
        for name, (f32, bf16) in PUBLISHED_PEAKS.items():
            if name.lower() in kind.lower():
                peak = bf16 if dtype == "bfloat16" or f32 is None else f32
                return peak, f"published peak of {kind} ({dtype})"
    return matmul_peak(dtype), f"measured {dtype} 2048² matmul on {kind or dev.platform}"


def he_init_variables(model, size: int, seed: int = 0) -> dict:
    """Variables of ``model`` from ``jax.eval_shape`` filled with numpy (no compiled init).

    Kernels ~ N(0, 2/fan_in), BatchNorm scale 1, biases 0, running mean 0 / variance 1.
    """
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.float32))
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("scale", "var"):
            value = np.ones(leaf.shape, leaf.dtype)
        elif name == "kernel" and len(leaf.shape) >= 2:
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(0, np.sqrt(2 / fan_in), leaf.shape).astype(leaf.dtype)
        else:
            value = np.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(value)

    return jax.tree_util.tree_map_with_path(fill, dict(shapes))


def train_setup(
    model,
    batch: int,
    size: int,
    *,
    dtype: str = "float32",
    num_classes: int = 21,
    conv_backward: str = "taps",
    cpu_scheduler: str = "memory",
):
    """The benchmark's train step ingredients: ``(net, name, config, tx, schedule, state, data)``.

    He-initialised state on the default device, random data, and a config with the
    benchmark's loss and SGD settings; ``benchmarks/profile_step.py`` profiles the same step.
    """
    import jax.numpy as jnp

    from segjax import config as config_lib
    from segjax import models, optim, trainer

    if conv_backward not in ("taps", "xla"):
        raise ValueError(f"conv_backward must be 'taps' or 'xla', got {conv_backward!r}")
    cfg = config_lib.base_config()
    if isinstance(model, str):
        net = models.create(model, num_classes=num_classes, dtype=trainer.DTYPES[dtype])
        cfg.model.name = model
    else:
        net, model = model, type(model).__name__
    cfg.model.num_classes = num_classes
    cfg.dtype = dtype
    cfg.data.crop_size = (size, size)
    cfg.train.batch_size = cfg.eval.batch_size = batch
    cfg.train.aux_weight = AUX_WEIGHT
    cfg.conv_backward = conv_backward
    cfg.cpu_scheduler = cpu_scheduler
    cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay = LR, MOMENTUM, WEIGHT_DECAY
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
    variables = he_init_variables(net, size)
    params = variables["params"]
    state = trainer.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        nonfinite=jnp.zeros((), jnp.int32),
    )
    images, labels = random_batch(batch, size, num_classes)
    data = {"image": jnp.asarray(images), "mask": jnp.asarray(labels)}
    return net, model, cfg, tx, schedule, state, data


def _flops(cost) -> float:
    """FLOPs from ``cost_analysis()`` (a dict, or a one-element list of dicts in older JAX)."""
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", float("nan")))


def run_jax(
    model,
    batch: int,
    size: int,
    *,
    dtype: str = "float32",
    steps: int = 3,
    num_classes: int = 21,
    conv_backward: str = "taps",
    cpu_scheduler: str = "memory",
    evaluate: bool = True,
    peak: tuple[float, str] | None = None,
) -> dict:
    """Benchmarks one model; returns a dict of figures (see the module docstring).

    ``model`` is a name from ``segjax.models.names()`` or a ``flax.linen.Module`` following the
    model contract (``__call__(images, *, train)`` → ``{"out": logits, ...}``).
    """
    import jax

    from segjax import sharding, trainer

    net, model, cfg, tx, schedule, state, data = train_setup(
        model,
        batch,
        size,
        dtype=dtype,
        num_classes=num_classes,
        conv_backward=conv_backward,
        cpu_scheduler=cpu_scheduler,
    )
    options = trainer.compiler_options(cpu_scheduler)
    # Data parallel over as many devices as divide the batch, as segjax.train runs.
    num_devices = sharding.auto_host_devices(cfg, len(jax.devices()))
    if num_devices > 1:
        mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:num_devices])
        state = jax.device_put(state, sharding.replicated(mesh))
        data = jax.device_put(data, sharding.batch_sharding(mesh))
    step_fn = trainer.make_train_step(net, tx, schedule, cfg)  # conv path from cfg
    peak_flops, peak_source = peak or device_peak(dtype)

    start = time.perf_counter()
    compiled = jax.jit(step_fn, donate_argnums=0, compiler_options=options)
    compiled = compiled.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    # XLA's cost analysis of an SPMD-partitioned step counts one device's share.
    executed_flops = _flops(compiled.cost_analysis()) * num_devices
    flops = executed_flops
    if conv_backward != "xla":  # model FLOPs: the same step with plain convolutions
        plain = cfg.copy_and_resolve_references()
        plain.conv_backward = "xla"
        plain_fn = trainer.make_train_step(net, tx, schedule, plain)
        flops = _flops(jax.jit(plain_fn).lower(state, data).cost_analysis())

    holder = {"state": state}

    def train_once():
        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics["loss"])

    train_once()  # warm-up
    step_times = _times_ms(train_once, steps)
    step_ms = statistics.median(step_times)
    holder["state"], metrics = compiled(holder["state"], data)
    loss = float(metrics["loss"])

    out = {
        "framework": "segjax",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": getattr(jax.devices()[0], "device_kind", ""),
        "threads": cpu_cores(),
        "model": model,
        "batch": batch,
        "size": size,
        "dtype": dtype,
        "conv_backward": conv_backward,
        "cpu_scheduler": cpu_scheduler,
        "devices": num_devices,
        "compile_s": compile_s,
        "step_ms": step_ms,
        "step_times_ms": step_times,
        "train_img_s": batch / (step_ms / 1e3),
        "flops_per_step": flops,
        "executed_flops_per_step": executed_flops,
        "loss": loss,
    }
    if evaluate:
        ev_vars = {"params": holder["state"].params}
        if holder["state"].batch_stats:
            ev_vars["batch_stats"] = holder["state"].batch_stats
        forward = lambda v, x: net.apply(v, x, train=False)["out"]
        start = time.perf_counter()
        with trainer.conv_path(conv_backward):
            ev = jax.jit(forward, compiler_options=options).lower(ev_vars, data["image"]).compile()
        out["eval_compile_s"] = time.perf_counter() - start
        jax.block_until_ready(ev(ev_vars, data["image"]))
        ms = _median_ms(lambda: jax.block_until_ready(ev(ev_vars, data["image"])), steps)
        out["eval_img_s"] = batch / (ms / 1e3)
    out["peak_flops"] = peak_flops
    out["peak_source"] = peak_source
    out["mfu"] = flops / (step_ms / 1e3) / peak_flops
    out["load_average_1min_at_end"] = os.getloadavg()[0]
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["peak_memory_bytes"] = int(stats["peak_bytes_in_use"])
        out["peak_memory_kind"] = "device peak_bytes_in_use"
    else:
        out["peak_memory_bytes"] = peak_rss_bytes()
        out["peak_memory_kind"] = "process peak RSS"
    return out


# ----------------------------------------------------------------------------- torch side


def run_torch(
    model: str,
    batch: int,
    size: int,
    *,
    steps: int = 3,
    num_classes: int = 21,
    threads: int | None = None,
    evaluate: bool = True,
) -> dict:
    """The equivalent torchvision train step (float32, NCHW) and eval forward, timed the same way.

    Raises:
      ImportError: torch or torchvision is not installed.
      KeyError: no torchvision equivalent of ``model``.
    """
    if model not in TORCHVISION_MODELS:
        raise KeyError(
            f"no torchvision equivalent of {model!r}; comparable: {', '.join(TORCHVISION_MODELS)}"
        )
    try:
        import torch
        import torch.nn.functional as F
        import torchvision
    except ImportError as e:
        raise ImportError(
            "--compare torchvision needs torch and torchvision "
            "(pip install 'segjax[torch]', or pass --torch-python PYTHON with them)"
        ) from e

    threads = threads or cpu_cores()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    builder_name, aux = TORCHVISION_MODELS[model]
    builder = getattr(torchvision.models.segmentation, builder_name)
    kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    if aux:
        kwargs["aux_loss"] = True
    net = builder(**kwargs)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    images, labels = random_batch(batch, size, num_classes)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()

    def train_once():
        net.train()
        opt.zero_grad(set_to_none=True)
        outputs = net(x)
        loss = F.cross_entropy(outputs["out"], y, ignore_index=IGNORE)
        if "aux" in outputs:
            loss = loss + AUX_WEIGHT * F.cross_entropy(outputs["aux"], y, ignore_index=IGNORE)
        loss.backward()
        opt.step()
        return loss

    start = time.perf_counter()
    train_once()  # warm-up (first-call allocations, oneDNN primitive creation)
    first_s = time.perf_counter() - start
    step_times = _times_ms(train_once, steps)
    step_ms = statistics.median(step_times)
    out = {
        "framework": "torchvision",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "model": model,
        "batch": batch,
        "size": size,
        "dtype": "float32",
        "first_step_s": first_s,
        "step_ms": step_ms,
        "step_times_ms": step_times,
        "train_img_s": batch / (step_ms / 1e3),
        "loss": float(train_once()),
    }
    if evaluate:
        net.eval()
        with torch.inference_mode():
            net(x)
            ms = _median_ms(lambda: net(x), steps)
        out["eval_img_s"] = batch / (ms / 1e3)
    a = torch.ones(2048, 2048)
    torch.mm(a, a)
    out["matmul_peak_flops"] = 2 * 2048**3 / (min(_times_ms(lambda: torch.mm(a, a), 5)) / 1e3)
    out["peak_memory_bytes"] = peak_rss_bytes()
    out["peak_memory_kind"] = "process peak RSS"
    out["load_average_1min_at_end"] = os.getloadavg()[0]
    return out


def torch_python(explicit: str | None) -> str:
    """The interpreter that runs the torchvision side.

    Raises:
      RuntimeError: no interpreter with torch + torchvision was given or found.
    """
    if explicit:
        return explicit
    if os.environ.get("SEGJAX_TORCH_PYTHON"):
        return os.environ["SEGJAX_TORCH_PYTHON"]
    if importlib.util.find_spec("torch") and importlib.util.find_spec("torchvision"):
        return sys.executable
    raise RuntimeError(
        "--compare torchvision needs torch and torchvision: pip install 'segjax[torch]' in this "
        "environment, or pass --torch-python /path/to/python (or set SEGJAX_TORCH_PYTHON) of one "
        "that has them"
    )


def run_torch_subprocess(python: str, model: str, batch: int, size: int, **kw) -> dict:
    """Runs :func:`run_torch` in a child ``python`` (its own peak RSS, no JAX needed there)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    cmd = [python, "-m", "segjax.benchmark", "--torch-worker", "--model", model]
    cmd += ["--batch", str(batch), "--size", str(size)]
    for key in ("steps", "num_classes", "threads"):
        if kw.get(key) is not None:
            cmd += [f"--{key.replace('_', '-')}", str(kw[key])]
    if not kw.get("evaluate", True):
        cmd.append("--no-eval")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"torchvision benchmark ({' '.join(cmd)}) failed with exit code "
            f"{proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- CLI


def _fmt(results: list[dict]) -> str:
    rows = [
        (
            "framework",
            lambda r: r["framework"] + (f" ({r['conv_backward']})" if "conv_backward" in r else ""),
        ),
        ("threads", lambda r: str(r["threads"])),
        ("compile s", lambda r: f"{r['compile_s']:.1f}" if "compile_s" in r else "-"),
        ("train step ms", lambda r: f"{r['step_ms']:.0f}"),
        ("fastest step ms", lambda r: f"{min(r['step_times_ms']):.0f}"),
        ("train img/s", lambda r: f"{r['train_img_s']:.3g}"),
        ("eval img/s", lambda r: f"{r['eval_img_s']:.3g}" if "eval_img_s" in r else "-"),
        (
            "GFLOP/step",
            lambda r: f"{r['flops_per_step'] / 1e9:.1f}" if "flops_per_step" in r else "-",
        ),
        (
            "executed GFLOP/step",
            lambda r: (
                f"{r['executed_flops_per_step'] / 1e9:.1f}"
                if "executed_flops_per_step" in r
                else "-"
            ),
        ),
        ("MFU", lambda r: f"{r['mfu']:.1%}" if "mfu" in r else "-"),
        ("peak memory GiB", lambda r: f"{r['peak_memory_bytes'] / 2**30:.2f}"),
        ("loss", lambda r: f"{r['loss']:.3f}"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = []
    for name, get in rows:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{get(r):>18}" for r in results))
    return "\n".join(lines)


def main(argv=None) -> dict:
    """CLI entry point; returns the figures (also printed, with ``--json`` as one JSON line)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=3, help="timed steps (median) after 1 warm-up")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument(
        "--conv-backward",
        default=None,
        choices=("taps", "xla"),
        help="conv weight gradient: per-tap matmuls (default on CPU) or XLA's",
    )
    p.add_argument(
        "--cpu-scheduler",
        default="memory",
        choices=("memory", "concurrency", "xla"),
        help="XLA:CPU instruction scheduler (config.cpu_scheduler)",
    )
    p.add_argument("--compare", default=None, choices=("torchvision",))
    p.add_argument("--torch-python", default=None, help="interpreter with torch + torchvision")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument(
        "--host-devices",
        type=int,
        default=1,
        help="CPU: XLA devices to split the host into, data parallel (1 = one device using "
        "every core; 0 = one per core that divides the batch, as segjax.train does by default)",
    )
    p.add_argument("--no-eval", action="store_true")
    p.add_argument("--json", action="store_true", help="also print all figures as JSON")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    evaluate = not args.no_eval

    common = dict(steps=args.steps, num_classes=args.num_classes, evaluate=evaluate)
    if args.torch_worker:
        result = run_torch(args.model, args.batch, args.size, threads=args.threads, **common)
        print(json.dumps(result))
        return result

    python = torch_python(args.torch_python) if args.compare else None  # fail before compiling
    if args.compare and args.model not in TORCHVISION_MODELS:
        raise SystemExit(
            f"--compare torchvision: no torchvision equivalent of {args.model!r}; "
            f"comparable: {', '.join(TORCHVISION_MODELS)}"
        )
    from segjax import config as config_lib
    from segjax import sharding

    host = config_lib.base_config()
    host.host_devices = args.host_devices
    host.train.batch_size = host.eval.batch_size = args.batch
    sharding.configure_host_devices(host)  # before JAX starts its backends
    import jax

    conv_backward = args.conv_backward or ("taps" if jax.default_backend() == "cpu" else "xla")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ours = run_jax(
        args.model,
        args.batch,
        args.size,
        dtype=args.dtype,
        conv_backward=conv_backward,
        cpu_scheduler=args.cpu_scheduler,
        **common,
    )
    results = [ours]
    summary = {"segjax": ours, "load_average_1min_at_start": load}
    if args.compare:
        theirs = run_torch_subprocess(
            python,
            args.model,
            args.batch,
            args.size,
            threads=args.threads or ours["threads"],
            **common,
        )
        results.append(theirs)
        summary["torchvision"] = theirs
        summary["train_ratio"] = ours["train_img_s"] / theirs["train_img_s"]
        summary["train_ratio_fastest"] = min(theirs["step_times_ms"]) / min(ours["step_times_ms"])
        if evaluate:
            summary["eval_ratio"] = ours["eval_img_s"] / theirs["eval_img_s"]
    print(
        f"{args.model}, batch {args.batch}, {args.size}×{args.size}, {args.dtype}, "
        f"{ours['backend']} ({ours['device_kind']}) × {ours['devices']} device(s), "
        f"load average {load:.2f} at start; "
        f"step times are medians of {args.steps} after 1 warm-up"
    )
    print(_fmt(results))
    print(f"peak for MFU: {ours['peak_flops'] / 1e9:.1f} GFLOP/s ({ours['peak_source']})")
    if args.compare:
        torch_peak = theirs["matmul_peak_flops"]
        summary["mfu_vs_torch_matmul"] = (
            ours["flops_per_step"] / (ours["step_ms"] / 1e3) / torch_peak
        )
        print(
            f"torch 2048² matmul: {torch_peak / 1e9:.1f} GFLOP/s (segjax MFU against it: "
            f"{summary['mfu_vs_torch_matmul']:.1%}); torchvision at XLA's FLOP count: "
            f"{ours['flops_per_step'] / (theirs['step_ms'] / 1e3) / 1e9:.1f} GFLOP/s"
        )
    print(
        "load average (1 min) at the end: segjax "
        + f"{ours['load_average_1min_at_end']:.2f}"
        + (f", torchvision {theirs['load_average_1min_at_end']:.2f}" if args.compare else "")
    )
    if args.compare:
        line = (
            f"segjax / torchvision: train {summary['train_ratio']:.2f}× "
            f"(fastest steps: {summary['train_ratio_fastest']:.2f}×)"
        )
        if evaluate:
            line += f", eval {summary['eval_ratio']:.2f}×"
        print(line)
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
