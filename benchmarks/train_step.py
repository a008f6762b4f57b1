"""Training / evaluation throughput, MFU, memory and compile time, side by side with torchvision.

    python -m benchmarks.train_step --model deeplabv3_resnet50 --batch 4 --size 256 --steps 3
    python -m benchmarks.train_step --model fcn_resnet50 --batch 4 --size 256 --steps 3 \\
        --compare torchvision --torch-python /work/venv-torch/bin/python

One train step is what ``segjax.trainer.make_train_step`` builds from the base config: forward
with ``train=True`` (BatchNorm in training mode, dropout), pixel-wise cross-entropy with 255
ignored (+ 0.4 × the auxiliary head's loss when the model has one), SGD with momentum 0.9 and
weight decay 1e-4, the non-finite-update guard. Its state has the structure of the trainer's
own init (``trainer.make_init_fn``) with He-initialised numpy parameters (no compiled init);
inputs are random images and random labels (5 % of pixels 255).

Reported:

* ``compile_s``: lowering + XLA compilation of the train step (eval step: ``eval_compile_s``);
* ``step_ms``: median of ``--steps`` train steps after one warm-up step; ``train_img_s`` =
  batch / step time; ``eval_img_s`` likewise for a ``train=False`` forward pass;
* ``flops_per_step``: the model's FLOPs per train step, as XLA's cost analysis counts the step
  written with plain convolutions (``conv_impl="xla"``, lowered, not compiled): the count MFU
  is defined on, comparable across paths and frameworks; ``executed_flops_per_step``: the cost
  analysis of the compiled step actually timed (lower on the ``gemm`` path, whose Winograd
  convolutions do 2.25× fewer multiply-adds and which skips multiplications by padding);
* ``mfu``: ``flops_per_step / step time / peak``; the peak is measured on CPU (the fastest of
  5 calls of a 2048² matmul, before the model runs) or the published dense peak of a known
  GPU/TPU (``PUBLISHED_PEAKS``);
* ``peak_memory_bytes``: device ``memory_stats()["peak_bytes_in_use"]`` where the backend has
  it, else the peak resident set size of the process (``VmHWM``; includes compilation, the
  Python runtime; TensorFlow is not loaded, ``segjax.runtime.lazy_imports``);
* ``--compare torchvision``: the same model from torchvision (same batch, size, loss, SGD),
  :mod:`benchmarks.torchvision_step` in a child process started by this command
  (``--torch-python``: an interpreter with torch and torchvision, JAX not needed; default this
  one), with as many torch threads as the CPU cores JAX uses, and the ratio
  ``segjax train img/s ÷ torchvision train img/s`` (and the same for eval). By default
  (``--interleave``) the child stays alive and the two alternate in blocks of
  ``--interleave-block`` steps (3; each led by an untimed step; 1 = one step each in turn)
  (:class:`Interleaved`), so that the machine's speed changes meet both frameworks alike;
  ``--no-interleave`` runs it after ours (both at once may not fit in memory). The child gets
  this command's environment (``--peer-huge-pages`` adds glibc's huge-page tunable to it);
* ``huge_pages``: whether this process runs with glibc's huge-page tunable
  (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, which ``launch/*.sh`` set;
  ``segjax.runtime.host_heap``). ``--huge-pages both`` measures the segjax step twice, in two
  child processes, with and without it, and reports both (``huge_pages_speedup`` = step time
  without ÷ with).

Both steps are jitted with ``segjax.runtime.jit``, as training jits them: ``--conv-impl gemm``
(the default on CPU) traces every ``nn.Conv`` through ``segjax.xla_cpu.conv_general_dilated_gemm``
(weight gradients as per-tap matmuls, 1×1 convs as matmuls, dense 3×3s as Winograd, depthwise
convs as shifted multiply-adds, mostly-padding atrous convs as shifted matmuls; same numbers);
``xla`` keeps XLA's own convolutions. ``--cpu-scheduler`` picks XLA:CPU's instruction scheduler
for both steps (``config.runtime.cpu_scheduler``; default ``memory``, as training uses). See
docs/PERFORMANCE.md for measured figures.
"""

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common, torchvision_step
from segjax import config as config_lib
from segjax import optim, runtime, sharding, tasks, trainer, xla_cpu
from segjax.runtime import host_devices, host_heap
from segjax.xla_cpu import winograd

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


def matmul_peak(dtype: str = "float32", n: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a jitted ``n×n @ n×n`` matmul: the fastest of ``repeats`` calls."""
    a = jnp.ones((n, n), getattr(jnp, dtype))
    f = jax.jit(jnp.matmul)
    jax.block_until_ready(f(a, a))
    fastest_ms = min(common.times_ms(lambda: jax.block_until_ready(f(a, a)), repeats))
    return 2 * n**3 / (fastest_ms / 1e3)


def device_peak(dtype: str = "float32") -> tuple[float, str]:
    """``(peak FLOP/s, where it comes from)`` for the first JAX device."""
    dev = jax.devices()[0]
    kind = getattr(dev, "device_kind", "")
    if dev.platform != "cpu":
        for name, (f32, bf16) in PUBLISHED_PEAKS.items():
            if name.lower() in kind.lower():
                peak = bf16 if dtype == "bfloat16" or f32 is None else f32
                return peak, f"published peak of {kind} ({dtype})"
    return matmul_peak(dtype), f"measured {dtype} 2048² matmul on {kind or dev.platform}"


def _he_fill(abstract_variables: dict, seed: int = 0) -> dict:
    """Arrays for ``jax.eval_shape`` variables: kernels ~ N(0, 2/fan_in), norm scales and
    running variances 1, everything else (biases, running means) 0; numpy, so nothing compiles.
    """
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

    return jax.tree_util.tree_map_with_path(fill, abstract_variables)


def he_init_state(net, tx, config) -> trainer.TrainState:
    """The trainer's initial state for ``net``, with He-initialised parameters.

    The structure is ``jax.eval_shape`` of ``trainer.make_init_fn`` (the init training runs), so
    the benchmark cannot drift from it. Only the values differ: so that a run compiles nothing
    but what it times, the variables are numpy (:func:`_he_fill`), the optimiser state is
    ``tx.init`` of those parameters (as ``Trainer`` does when it loads pretrained weights), and
    the counters (step, skipped updates) are 0 as the init makes them.
    """
    abstract = jax.eval_shape(trainer.make_init_fn(net, tx, config), jax.random.key(config.seed))
    variables = _he_fill({"params": abstract.params, "batch_stats": abstract.batch_stats})
    state = abstract.replace(**variables, opt_state=tx.init(variables["params"]))
    return jax.tree.map(
        lambda leaf: (
            jnp.zeros(leaf.shape, leaf.dtype) if isinstance(leaf, jax.ShapeDtypeStruct) else leaf
        ),
        state,
    )


def benchmark_config(
    model_name: str | None,
    batch: int,
    size: int,
    *,
    dtype: str = "float32",
    num_classes: int = 21,
    conv_impl: str = "auto",
    cpu_scheduler: str = "memory",
):
    """The base config with the benchmark's model, batch, crop, loss, SGD and compile settings.

    ``model_name`` None keeps the base config's (for a module passed in directly);
    ``conv_impl`` is resolved for the default backend (``"auto"`` → ``"gemm"`` on CPU).

    Raises:
      ValueError: ``conv_impl`` is not one of ``segjax.xla_cpu.CONV_IMPLS``.
    """
    cfg = config_lib.base_config()
    if model_name is not None:
        cfg.model.name = model_name
    cfg.model.num_classes = num_classes
    cfg.dtype = dtype
    cfg.data.crop_size = (size, size)
    cfg.train.batch_size = cfg.eval.batch_size = batch
    cfg.train.aux_weight = common.AUX_WEIGHT
    cfg.runtime.conv_impl = xla_cpu.resolve_conv_impl(conv_impl)
    cfg.runtime.cpu_scheduler = cpu_scheduler
    cfg.optim.lr, cfg.optim.momentum = common.LR, common.MOMENTUM
    cfg.optim.weight_decay = common.WEIGHT_DECAY
    return cfg


def train_setup(model, batch: int, size: int, **settings):
    """The benchmark's train step ingredients: ``(net, name, config, tx, schedule, state, data)``.

    ``model`` is a name from ``segjax.models.names()`` (built by ``tasks.create_model``) or a
    ``flax.linen.Module`` following the model contract; ``settings`` are
    :func:`benchmark_config`'s keywords. The state (:func:`he_init_state`) and random data are
    on the default device; ``benchmarks/profile_step.py`` profiles the same step.
    """
    named = isinstance(model, str)
    cfg = benchmark_config(model if named else None, batch, size, **settings)
    net = tasks.create_model(cfg) if named else model
    tx, schedule = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
    state = he_init_state(net, tx, cfg)
    images, labels = common.random_batch(batch, size, cfg.model.num_classes)
    data = {"image": jnp.asarray(images), "mask": jnp.asarray(labels)}
    return net, model if named else type(model).__name__, cfg, tx, schedule, state, data


def _flops(cost) -> float:
    """FLOPs from ``cost_analysis()`` (a dict, or a one-element list of dicts in older JAX)."""
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float((cost or {}).get("flops", float("nan")))


def _data_parallel(cfg, state, data):
    """``(state, data, devices)``: data parallel over as many devices as divide the batch, as
    ``segjax.train`` runs (state replicated, batch split)."""
    num_devices = host_devices.auto_host_devices(cfg, len(jax.devices()))
    if num_devices > 1:
        mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:num_devices])
        state = jax.device_put(state, sharding.replicated(mesh))
        data = jax.device_put(data, sharding.batch_sharding(mesh))
    return state, data, num_devices


def _model_flops(net, tx, schedule, cfg, state, data, executed: float) -> float:
    """The model's FLOPs per step: the same step with plain convolutions, lowered only."""
    if cfg.runtime.conv_impl == "xla":
        return executed
    plain = cfg.copy_and_resolve_references()
    plain.runtime.conv_impl = "xla"
    plain_step = runtime.jit(trainer.make_train_step(net, tx, schedule, plain), plain)
    return _flops(plain_step.lower(state, data).cost_analysis())


class Interleaved:
    """The peer's steps run between ours, in blocks of ``block`` timed steps each side.

    ``block == 1``: after each of our timed steps, one of the peer's (the mode before
    2026-12-03, night). ``block > 1``: ``block`` of our steps back to back, then ``block`` of the
    peer's, each block led by one untimed step. Why blocks: this VM's balloon hands memory a
    process left free for ~1–2 s back to the host, and touching it again is slow. XLA:CPU frees
    a step's whole temp buffer (1.4 GiB at batch 4, 256²) after every step, so a step that
    follows 9 s of the peer's runs 2× slower than one that follows our own step, as in a
    training loop; torch's allocator keeps its heap and hardly notices. The untimed lead step
    of each block (its time is kept in ``lead_times``, ours and the peer's) pays that cost.

    ``start`` makes the peer (a :class:`benchmarks.common.StepPeer` that has done its warm-up
    step); it is called when our train steps are about to be timed, after our compilation, so
    that neither framework's timing or compile shares the CPU with the other's work. The
    peer's step times, last loss and eval times are kept in ``times`` / ``loss``.
    """

    def __init__(self, start: Callable[[], common.StepPeer], block: int = 1):
        if block < 1:
            raise ValueError(f"interleave block: {block} steps, expected >= 1")
        self._start = start
        self.block = block
        self.peer: common.StepPeer | None = None
        self.times: dict[str, list[float]] = {"train": [], "eval": []}
        self.lead_times: dict[str, dict[str, list[float]]] = {
            side: {"train": [], "eval": []} for side in ("segjax", "peer")
        }
        self.loss: float | None = None

    def start(self) -> None:
        """Starts the peer (once)."""
        if self.peer is None:
            self.peer = self._start()

    def step(self, action: str, timed: bool = True) -> None:
        """Has the peer run one ``action`` (``train`` / ``eval``), keeping its time if ``timed``."""
        reply = self.peer.run(action)
        if timed:
            self.times[action].append(reply["ms"])
        elif self.block > 1:
            self.lead_times["peer"][action].append(reply["ms"])
        if "loss" in reply:
            self.loss = reply["loss"]


def _alternating_times(run_once, steps: int, peer: Interleaved | None, action: str) -> list:
    """Wall times (ms) of ``steps`` calls of ``run_once`` after one warm-up call; with ``peer``,
    its ``action`` runs once untimed after the warm-up and once timed after each timed call
    (``peer.block == 1``), or in blocks: ``peer.block`` timed calls of ours, one untimed and
    ``peer.block`` timed of the peer's, one untimed of ours, and so on (the untimed ones after
    the first are kept in ``peer.lead_times``)."""
    run_once()  # warm-up
    if peer is None:
        return common.times_ms(run_once, steps)
    if peer.block == 1:
        peer.step(action, timed=False)
        times = []
        for _ in range(steps):
            times += common.times_ms(run_once, 1)
            peer.step(action)
        return times
    times = []
    while len(times) < steps:
        if times:  # the lead step of our block, after the peer's block
            peer.lead_times["segjax"][action] += common.times_ms(run_once, 1)
        count = min(peer.block, steps - len(times))
        times += common.times_ms(run_once, count)
        peer.step(action, timed=False)
        for _ in range(count):
            peer.step(action)
    return times


def _timed_train_steps(compiled, state, data, steps: int, peer: Interleaved | None = None):
    """``(state, step times ms, loss)``: a warm-up step, ``steps`` timed, one more for the loss.

    With ``peer`` (which took its own warm-up step when it started), the steps alternate as
    :func:`_alternating_times` says, and both sides have taken as many steps at the losses
    reported. (Before 2026-12-03 our first timed step followed our own warm-up, which made it
    our fastest nearly always.)"""
    holder = {"state": state}

    def train_once():
        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics["loss"])

    if peer:
        peer.start()
    step_times = _alternating_times(train_once, steps, peer, "train")
    holder["state"], metrics = compiled(holder["state"], data)
    return holder["state"], step_times, float(metrics["loss"])


def _eval_figures(
    net, cfg, state, images, steps: int, trim: bool = False, peer: Interleaved | None = None
) -> dict:
    """Compile time and images/s of the ``train=False`` forward pass, jitted as training does
    (with ``peer``, one warm-up call each, then our calls and the peer's alternate)."""
    variables = {"params": state.params}
    if state.batch_stats:
        variables["batch_stats"] = state.batch_stats
    forward = runtime.jit(lambda v, x: net.apply(v, x, train=False)["out"], cfg)
    start = time.perf_counter()
    compiled = forward.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    if trim:
        host_heap.release_freed_heap()

    def eval_once():
        jax.block_until_ready(compiled(variables, images))

    ms = statistics.median(_alternating_times(eval_once, steps, peer, "eval"))
    return {"eval_compile_s": compile_s, "eval_img_s": images.shape[0] / (ms / 1e3)}


def _memory_figures() -> dict:
    """Peak memory: the device's own counter where the backend keeps one, else peak RSS."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {
            "peak_memory_bytes": int(stats["peak_bytes_in_use"]),
            "peak_memory_kind": "device peak_bytes_in_use",
        }
    return {"peak_memory_bytes": common.peak_rss_bytes(), "peak_memory_kind": "process peak RSS"}


def run_jax(
    model,
    batch: int,
    size: int,
    *,
    dtype: str = "float32",
    steps: int = 3,
    num_classes: int = 21,
    conv_impl: str = "auto",
    cpu_scheduler: str = "memory",
    evaluate: bool = True,
    peak: tuple[float, str] | None = None,
    trim_after_compile: bool = True,
    peer: Interleaved | None = None,
) -> dict:
    """Benchmarks one model; returns a dict of figures (see the module docstring).

    ``model`` is a name from ``segjax.models.names()`` or a ``flax.linen.Module`` following the
    model contract (``__call__(images, *, train)`` → ``{"out": logits, ...}``); ``peak`` is
    ``(FLOP/s, source)`` to use instead of measuring one; ``trim_after_compile`` returns the
    compiler's freed heap to the OS after each compilation
    (``segjax.runtime.host_heap.release_freed_heap``); ``peer`` runs a peer's steps between ours
    (:class:`Interleaved`).

    Raises:
      ValueError: ``conv_impl`` or ``cpu_scheduler`` is not a known choice.
    """
    settings = dict(dtype=dtype, num_classes=num_classes, conv_impl=conv_impl)
    net, name, cfg, tx, schedule, state, data = train_setup(
        model, batch, size, cpu_scheduler=cpu_scheduler, **settings
    )
    state, data, num_devices = _data_parallel(cfg, state, data)
    step_fn = trainer.make_train_step(net, tx, schedule, cfg)
    peak_flops, peak_source = peak or device_peak(dtype)

    start = time.perf_counter()
    compiled = runtime.jit(step_fn, cfg, donate_argnums=0).lower(state, data).compile()
    compile_s = time.perf_counter() - start
    if trim_after_compile:
        host_heap.release_freed_heap()
    # XLA's cost analysis of an SPMD-partitioned step counts one device's share.
    executed_flops = _flops(compiled.cost_analysis()) * num_devices
    flops = _model_flops(net, tx, schedule, cfg, state, data, executed_flops)
    state, step_times, loss = _timed_train_steps(compiled, state, data, steps, peer)
    step_ms = statistics.median(step_times)
    lead = {}  # the untimed steps leading our blocks after the first (blocked interleave)
    if peer is not None and peer.block > 1:
        lead = {
            "interleave_block": peer.block,
            "lead_step_times_ms": peer.lead_times["segjax"]["train"],
        }

    out = {
        "framework": "segjax",
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device_kind": getattr(jax.devices()[0], "device_kind", ""),
        "threads": common.cpu_cores(),
        "model": name,
        "batch": batch,
        "size": size,
        "dtype": dtype,
        "conv_impl": cfg.runtime.conv_impl,
        "cpu_scheduler": cpu_scheduler,
        "huge_pages": host_heap.huge_pages_requested(),
        "winograd_tile": winograd.active_output_tile(),
        "malloc_trim": trim_after_compile,
        "devices": num_devices,
        "compile_s": compile_s,
        "step_ms": step_ms,
        "step_times_ms": step_times,
        "train_img_s": batch / (step_ms / 1e3),
        "flops_per_step": flops,
        "executed_flops_per_step": executed_flops,
        "loss": loss,
        **lead,
    }
    if evaluate:
        out.update(_eval_figures(net, cfg, state, data["image"], steps, trim_after_compile, peer))
    out["peak_flops"] = peak_flops
    out["peak_source"] = peak_source
    out["mfu"] = flops / (step_ms / 1e3) / peak_flops
    out["load_average_1min_at_end"] = os.getloadavg()[0]
    out.update(_memory_figures())
    return out


def _fmt(results: list[dict]) -> str:
    """The side-by-side table: one row per figure, one column per framework."""
    rows = [
        (
            "framework",
            lambda r: r["framework"] + (f" ({r['conv_impl']})" if "conv_impl" in r else ""),
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


def _parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=3, help="timed steps (median) after 1 warm-up")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument(
        "--conv-impl",
        default="auto",
        choices=("gemm", "xla"),
        help="convolutions as GEMMs (segjax.xla_cpu; the default on CPU) or XLA's own",
    )
    p.add_argument(
        "--cpu-scheduler",
        default="memory",
        choices=("memory", "concurrency", "xla"),
        help="XLA:CPU instruction scheduler (config.runtime.cpu_scheduler)",
    )
    p.add_argument(
        "--winograd-tile",
        type=int,
        default=None,
        choices=winograd.OUTPUT_TILES,
        help="Winograd F(m×m, 3×3) output tile (default: winograd.DEFAULT_OUTPUT_TILE)",
    )
    p.add_argument(
        "--malloc-trim",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="return the compiler's freed heap to the OS after each compile (glibc), as the "
        "trainer does (default; --no-malloc-trim for the figures measured before 2026-12-02)",
    )
    p.add_argument("--compare", default=None, choices=("torchvision",))
    p.add_argument(
        "--interleave",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --compare: alternate our steps with torchvision's, both processes alive, so "
        "that a change in machine speed meets both (default; --no-interleave runs torchvision "
        "after segjax, e.g. when both at once do not fit in memory)",
    )
    p.add_argument(
        "--interleave-block",
        type=int,
        default=3,
        help="with --interleave: timed steps each side runs back to back, each block led by one "
        "untimed step (default 3; 1 = one step each in turn, no lead step, the mode before "
        "2026-12-03 night: on a VM whose balloon reclaims freed memory it times XLA's step "
        "after 9 s of torch's, with its temp buffer to fault in again)",
    )
    p.add_argument("--torch-python", default=None, help="interpreter with torch + torchvision")
    p.add_argument(
        "--peer-huge-pages",
        action="store_true",
        help="with --compare: run torchvision with glibc's huge-page tunable added to this "
        "command's environment (segjax.runtime.host_heap; default: torchvision gets this "
        "command's environment as it is)",
    )
    p.add_argument(
        "--huge-pages",
        default="inherit",
        choices=("inherit", "both"),
        help="inherit: measure in this process, with GLIBC_TUNABLES as it was started "
        "(launch/*.sh set glibc.malloc.hugetlb=1); both: measure the segjax step in two child "
        "processes, with and without glibc's huge-page tunable, and report both",
    )
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
    return p


def _torch_python_or_exit(args) -> str | None:
    """The torchvision interpreter when comparing (checked before anything compiles)."""
    if not args.compare:
        return None
    try:
        torchvision_step.check_comparable(args.model)
    except KeyError as e:
        raise SystemExit(f"--compare torchvision: {e.args[0]}") from None
    try:
        return torchvision_step.torch_python(args.torch_python)
    except RuntimeError as e:
        raise SystemExit(str(e)) from None


def _split_host(args) -> None:
    """Sets ``--host-devices`` (``XLA_FLAGS``) before JAX starts its backends."""
    host = config_lib.base_config()
    host.runtime.host_devices = args.host_devices
    host.train.batch_size = host.eval.batch_size = args.batch
    host_devices.configure_host_devices(host)


def _peer_environment(args) -> dict:
    """torchvision's environment: this command's, with glibc's huge-page tunable added when
    ``--peer-huge-pages`` (and the host can use it)."""
    if args.peer_huge_pages:
        return host_heap.huge_page_environment() or dict(os.environ)
    return dict(os.environ)


def huge_pages_both(argv: list[str]) -> dict:
    """``--huge-pages both``: the segjax measurement of ``argv`` in two child processes, one
    without glibc's huge-page tunable and one with it; returns ``{"no_huge_pages": figures,
    "huge_pages": figures, "huge_pages_speedup": step ms without ÷ with}``.

    Raises:
      SystemExit: with ``--compare`` (measure the peer separately), or where the tunable cannot
        apply (no glibc, or the kernel's transparent huge pages are off).
    """
    if "--compare" in argv or any(a.startswith("--compare=") for a in argv):
        raise SystemExit("--huge-pages both measures segjax alone; run --compare on its own")
    with_tunable = host_heap.huge_page_environment()
    if with_tunable is None:
        raise SystemExit("--huge-pages both: no glibc huge pages here (glibc, kernel THP)")
    child_argv = [*argv, "--huge-pages", "inherit", "--json"]  # the last --huge-pages wins
    runs = {}
    environments = {"no_huge_pages": host_heap.without_huge_pages(), "huge_pages": with_tunable}
    for label, env in environments.items():
        try:
            runs[label] = common.module_json(sys.executable, "train_step", child_argv, env)
        except RuntimeError as e:
            raise SystemExit(f"--huge-pages both: {e}") from None
        runs[label] = runs[label]["segjax"]
    runs["huge_pages_speedup"] = runs["no_huge_pages"]["step_ms"] / runs["huge_pages"]["step_ms"]
    return runs


def _print_huge_pages(args, runs: dict) -> None:
    """The ``--huge-pages both`` report: one column per environment, the speed-up."""
    without, with_ = dict(runs["no_huge_pages"]), dict(runs["huge_pages"])
    print(
        f"{args.model}, batch {args.batch}, {args.size}×{args.size}: segjax without / with "
        f"GLIBC_TUNABLES={host_heap.HUGE_PAGES_TUNABLE} (one child process each)"
    )
    without["framework"], with_["framework"] = "no huge pages", "huge pages"
    print(_fmt([without, with_]))
    print(f"huge pages: train step {runs['huge_pages_speedup']:.2f}× as fast")


def _peer_figures(interleaved: Interleaved, batch: int) -> dict:
    """The torchvision figures of an interleaved run: its step and eval times and its own."""
    theirs = interleaved.peer.finish()
    train = interleaved.times["train"]
    theirs.update(torchvision_step.step_times_figures(batch, train, interleaved.loss))
    if interleaved.block > 1:
        theirs["interleave_block"] = interleaved.block
        theirs["lead_step_times_ms"] = interleaved.lead_times["peer"]["train"]
    if interleaved.times["eval"]:
        theirs["eval_img_s"] = batch / (statistics.median(interleaved.times["eval"]) / 1e3)
    return theirs


def _compare(
    python: str, args, ours: dict, common_kw: dict, summary: dict, interleaved=None
) -> dict:
    """The torchvision side's figures (from ``interleaved``, or run now in ``python``), added
    to ``summary`` with the ratios."""
    try:
        if interleaved is not None:
            theirs = _peer_figures(interleaved, args.batch)
        else:
            theirs = torchvision_step.run_in_child(
                python,
                args.model,
                args.batch,
                args.size,
                env=_peer_environment(args),
                threads=args.threads or ours["threads"],
                **common_kw,
            )
    except RuntimeError as e:
        raise SystemExit(f"torchvision benchmark: {e}") from None
    summary["torchvision"] = theirs
    summary["train_ratio"] = ours["train_img_s"] / theirs["train_img_s"]
    summary["train_ratio_fastest"] = min(theirs["step_times_ms"]) / min(ours["step_times_ms"])
    if not args.no_eval:
        summary["eval_ratio"] = ours["eval_img_s"] / theirs["eval_img_s"]
    summary["mfu_vs_torch_matmul"] = (
        ours["flops_per_step"] / (ours["step_ms"] / 1e3) / theirs["matmul_peak_flops"]
    )
    return theirs


def _interleave_words(ours: dict) -> str:
    """How the report's first line says the steps alternated."""
    block = ours.get("interleave_block", 1)
    if block == 1:
        return ", interleaved with torchvision's one step each; "
    return f", interleaved with torchvision's in blocks of {block}, each led by an untimed step; "


def _print_report(args, summary: dict) -> None:
    """The human-readable report: set-up line, table, peaks, load averages, ratios."""
    ours, theirs = summary["segjax"], summary.get("torchvision")
    print(
        f"{args.model}, batch {args.batch}, {args.size}×{args.size}, {args.dtype}, "
        f"{ours['backend']} ({ours['device_kind']}) × {ours['devices']} device(s), "
        f"load average {summary['load_average_1min_at_start']:.2f} at start; "
        f"step times are medians of {args.steps} after 1 warm-up"
        + (_interleave_words(ours) if summary.get("interleaved") else "; ")
        + f"Winograd F({ours['winograd_tile']}×{ours['winograd_tile']}, 3×3)"
        + (", malloc_trim after compiling" if ours["malloc_trim"] else "")
        + (", glibc huge pages" if ours["huge_pages"] else ", no glibc huge pages")
    )
    print(_fmt([ours] + ([theirs] if theirs else [])))
    print(f"peak for MFU: {ours['peak_flops'] / 1e9:.1f} GFLOP/s ({ours['peak_source']})")
    if theirs:
        print(
            f"torch 2048² matmul: {theirs['matmul_peak_flops'] / 1e9:.1f} GFLOP/s (segjax MFU "
            f"against it: {summary['mfu_vs_torch_matmul']:.1%}); torchvision at XLA's FLOP "
            f"count: {ours['flops_per_step'] / (theirs['step_ms'] / 1e3) / 1e9:.1f} GFLOP/s"
        )
    print(
        "load average (1 min) at the end: segjax "
        + f"{ours['load_average_1min_at_end']:.2f}"
        + (f", torchvision {theirs['load_average_1min_at_end']:.2f}" if theirs else "")
    )
    if theirs:
        line = (
            f"segjax / torchvision: train {summary['train_ratio']:.2f}× "
            f"(fastest steps: {summary['train_ratio_fastest']:.2f}×)"
        )
        if "eval_ratio" in summary:
            line += f", eval {summary['eval_ratio']:.2f}×"
        print(line)


def main(argv=None) -> dict:
    """CLI entry point; returns the figures (also printed, with ``--json`` as one JSON line)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    if args.huge_pages == "both":
        runs = huge_pages_both(argv)
        _print_huge_pages(args, runs)
        if args.json:
            print(json.dumps(runs))
        return runs
    python = _torch_python_or_exit(args)
    _split_host(args)
    common_kw = dict(steps=args.steps, num_classes=args.num_classes, evaluate=not args.no_eval)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    interleaved = None
    if python and args.interleave:
        interleaved = Interleaved(
            lambda: torchvision_step.start_peer(
                python,
                args.model,
                args.batch,
                args.size,
                env=_peer_environment(args),
                num_classes=args.num_classes,
                threads=args.threads or common.cpu_cores(),
            ),
            block=args.interleave_block,
        )
    try:
        with winograd.output_tile_scope(args.winograd_tile):
            ours = run_jax(
                args.model,
                args.batch,
                args.size,
                dtype=args.dtype,
                conv_impl=args.conv_impl,
                cpu_scheduler=args.cpu_scheduler,
                trim_after_compile=args.malloc_trim,
                peer=interleaved,
                **common_kw,
            )
        summary = {
            "segjax": ours,
            "load_average_1min_at_start": load,
            "interleaved": interleaved is not None,
        }
        if python:
            _compare(python, args, ours, common_kw, summary, interleaved)
    except RuntimeError as e:  # the peer failed midway
        raise SystemExit(f"torchvision benchmark: {e}") from None
    finally:
        if interleaved is not None and interleaved.peer is not None:
            interleaved.peer.__exit__(None, None, None)
    _print_report(args, summary)
    if args.json:
        print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
