"""Where the peak memory of the benchmark's train step comes from (issue 17).

    python -m benchmarks.memory_step --model deeplabv3_resnet50 --batch 4 --size 256
    python -m benchmarks.memory_step --model deeplabv3_resnet50 --winograd-tile 4 --steps 3
    XLA_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_as_text" \\
        python -m benchmarks.memory_step --model deeplabv3_resnet50 --buffers /tmp/dump --top 25

Builds the train step of :mod:`benchmarks.train_step` (``train_step.train_setup``: same model,
loss, SGD, He-initialised state, random data; jitted with ``segjax.runtime.jit`` and the state
donated) and reports, without running torch:

* the process's resident set (``VmRSS``) and its peak (``VmHWM``) after the imports (and whether
  TensorFlow was imported), after building the state, after compiling (the peak then is the
  compiler's) and after the timed steps;
* the state's bytes: parameters, BatchNorm statistics, optimiser state;
* XLA's ``compiled.memory_analysis()``: argument, output, alias and temp bytes (temp = every
  buffer XLA allocates inside the step: activations kept for the backward, gradients, the
  Winograd tiles, workspaces, packed into one arena by its buffer assignment);
* with ``--buffers DIR`` (a ``--xla_dump_to`` directory): the train step's largest temp
  allocations from its ``*buffer-assignment.txt`` and what they hold.

``--winograd-tile 2|4`` picks Winograd F(2×2, 3×3) or F(4×4, 3×3)
(:func:`segjax.xla_cpu.winograd.output_tile_scope`); ``--remat-blocks POLICY`` wraps every ResNet
block in ``nn.remat`` with a ``jax.checkpoint_policies`` policy (``nothing_saveable``,
``dots_saveable`` …): a measurement of what rematerialisation would buy, not a model option.
"""

import argparse
import glob
import json
import os
import re
import sys
import time

from benchmarks import common

_IMPORT_RSS = None  # set in main() right after the heavy imports


def _rss() -> dict:
    return {
        "rss_gib": common.current_rss_bytes() / 2**30,
        "hwm_gib": common.peak_rss_bytes() / 2**30,
    }


def _tree_bytes(tree) -> int:
    import jax

    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def _memory_analysis(compiled) -> dict:
    """The fields of ``compiled.memory_analysis()`` that exist in this jaxlib, in bytes."""
    stats = compiled.memory_analysis()
    names = (
        "argument_size_in_bytes",
        "output_size_in_bytes",
        "alias_size_in_bytes",
        "temp_size_in_bytes",
        "generated_code_size_in_bytes",
        "peak_memory_in_bytes",
    )
    return {n: int(getattr(stats, n)) for n in names if hasattr(stats, n)}


def remat_blocks(policy_name: str) -> None:
    """Wraps ResNet's blocks in ``nn.remat(policy)`` for every model built afterwards.

    ``train`` is a keyword argument of the blocks; the lifted remat passes keyword arguments
    through ``jax.checkpoint`` as traced values, so it is bound as a module attribute instead.
    """
    import flax.linen as nn
    import jax

    from segjax.models.backbones import resnet

    policy = getattr(jax.checkpoint_policies, policy_name)
    original = resnet.Bottleneck

    class _TrainBound(original):
        train_mode: bool = True

        def __call__(self, x):
            return original.__call__(self, x, train=self.train_mode)

    rematted = nn.remat(_TrainBound, policy=policy)

    def factory(*args, **kwargs):
        return lambda x, *, train: rematted(*args, train_mode=train, **kwargs)(x)

    factory.expansion = original.expansion
    resnet.Bottleneck = factory  # looked up by ResNet.__call__ at trace time


_ALLOCATION = re.compile(r"^allocation (\d+): size (\d+)(.*)$")
_VALUE = re.compile(r"^\s+value: <\d+ ([^ >]+)[^>]*> \(size=(\d+),offset=(\d+)\): (\S+)")


def largest_buffers(dump_dir: str, top: int) -> list[dict]:
    """The ``top`` largest temp allocations of the biggest module's buffer assignment.

    An allocation of the preallocated temp arena holds many values with disjoint live ranges;
    the values listed are the largest few sharing it (name and shape of the HLO value).
    """
    files = glob.glob(os.path.join(dump_dir, "*buffer-assignment.txt"))
    if not files:
        raise SystemExit(f"--buffers {dump_dir}: no *buffer-assignment.txt (set XLA_FLAGS)")
    path = max(files, key=os.path.getsize)
    allocations, current = [], None
    with open(path) as f:
        for line in f:
            match = _ALLOCATION.match(line)
            if match:
                current = {
                    "allocation": int(match.group(1)),
                    "bytes": int(match.group(2)),
                    "kind": match.group(3).strip(" :,"),
                    "values": [],
                }
                allocations.append(current)
                continue
            value = _VALUE.match(line)
            if value and current is not None:
                current["values"].append((int(value.group(2)), value.group(1), value.group(4)))
    for a in allocations:
        a["values"] = sorted(a["values"], reverse=True)[:4]
    return [{"file": os.path.basename(path)}] + sorted(allocations, key=lambda a: -a["bytes"])[:top]


def run(args) -> dict:
    """Compiles and runs the step; returns the figures (module docstring)."""
    import jax

    from benchmarks import train_step
    from segjax import runtime, trainer
    from segjax.runtime import host_heap
    from segjax.xla_cpu import winograd

    if args.remat_blocks:
        remat_blocks(args.remat_blocks)
    out = {"model": args.model, "batch": args.batch, "size": args.size}
    out["winograd_tile"] = args.winograd_tile or winograd.DEFAULT_OUTPUT_TILE
    out["remat_blocks"] = args.remat_blocks
    out["cpu_scheduler"] = args.cpu_scheduler
    out["tensorflow_imported"] = "tensorflow" in sys.modules
    out["after_imports"] = _IMPORT_RSS
    net, _, cfg, tx, schedule, state, data = train_step.train_setup(
        args.model,
        args.batch,
        args.size,
        conv_impl=args.conv_impl,
        cpu_scheduler=args.cpu_scheduler,
    )
    out["state_bytes"] = {
        "params": _tree_bytes(state.params),
        "batch_stats": _tree_bytes(state.batch_stats),
        "opt_state": _tree_bytes(state.opt_state),
        "data": _tree_bytes(data),
    }
    out["after_state"] = _rss()
    step_fn = trainer.make_train_step(net, tx, schedule, cfg)
    start = time.perf_counter()
    with winograd.output_tile_scope(args.winograd_tile):
        lowered = runtime.jit(step_fn, cfg, donate_argnums=0).lower(state, data)
    compiled = lowered.compile()
    out["compile_s"] = time.perf_counter() - start
    out["memory_analysis"] = _memory_analysis(compiled)
    out["after_compile"] = _rss()
    if args.malloc_trim:
        out["malloc_trim_returned"] = host_heap.release_freed_heap()
        out["after_trim"] = _rss()
    if args.compile_only:
        return out
    holder = {"state": state}

    def once():
        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics["loss"])

    once()
    out["after_first_step"] = _rss()
    out["step_times_ms"] = common.times_ms(once, args.steps)
    out["after_steps"] = _rss()
    out["loss"] = float(compiled(holder["state"], data)[1]["loss"])
    if args.buffers:
        out["largest_buffers"] = largest_buffers(args.buffers, args.top)
    return out


def _print(out: dict) -> None:
    gib = lambda b: f"{b / 2**30:.3f} GiB"
    print(f"{out['model']} batch {out['batch']} {out['size']}², Winograd F({out['winograd_tile']}"
          f"×{out['winograd_tile']}, 3×3), remat {out['remat_blocks']}, TensorFlow imported: "
          f"{out['tensorflow_imported']}")  # fmt: skip
    for key, value in out["state_bytes"].items():
        print(f"  state {key:<12} {gib(value)}")
    for key, value in out["memory_analysis"].items():
        print(f"  {key:<30} {gib(value)}")
    for stage in (
        "after_imports",
        "after_state",
        "after_compile",
        "after_trim",
        "after_first_step",
    ):
        if stage not in out:
            continue
        print(
            f"  {stage:<18} RSS {out[stage]['rss_gib']:.3f} GiB, peak {out[stage]['hwm_gib']:.3f}"
        )
    if "step_times_ms" not in out:
        return
    steps = [round(t) for t in out["step_times_ms"]]
    print(f"  after_steps        RSS {out['after_steps']['rss_gib']:.3f} GiB, peak "
          f"{out['after_steps']['hwm_gib']:.3f}; steps ms {steps}"
          f", compile {out['compile_s']:.1f} s, loss {out['loss']:.4f}")  # fmt: skip
    for row in out.get("largest_buffers", [])[1:]:
        values = "; ".join(
            f"{name} {shape} {size / 2**20:.0f} MiB" for size, name, shape in row["values"]
        )
        print(
            f"  alloc {row['allocation']:>4} {row['bytes'] / 2**20:8.1f} MiB "
            f"{row['kind'][:40]}: {values}"
        )


def main(argv=None) -> dict:
    """CLI entry point; prints the figures (with ``--json`` also as one JSON line)."""
    global _IMPORT_RSS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--conv-impl", default="auto", choices=("auto", "gemm", "xla"))
    p.add_argument("--winograd-tile", type=int, default=None, choices=(2, 4))
    p.add_argument("--remat-blocks", default=None, help="jax.checkpoint_policies name")
    p.add_argument("--cpu-scheduler", default="memory", choices=("memory", "concurrency", "xla"))
    p.add_argument("--malloc-trim", action="store_true", help="malloc_trim(0) after compiling")
    p.add_argument("--compile-only", action="store_true", help="stop after the memory analysis")
    p.add_argument("--buffers", default=None, help="--xla_dump_to directory to read")
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import benchmarks.train_step  # noqa: F401  (the imports every benchmark run pays)

    _IMPORT_RSS = _rss()
    out = run(args)
    _print(out)
    if args.json:
        print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
