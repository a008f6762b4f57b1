"""Where a compiled train step spends its time, op by op (the profile behind docs/PERFORMANCE.md).

    python -m benchmarks.profile_step --model fcn_resnet50              # batch 4, 256×256
    python -m benchmarks.profile_step --model deeplabv3_resnet50 --conv-impl xla --top 40

Builds the same train step as :mod:`benchmarks.train_step` (``train_step.train_setup``: SGD, aux
loss, He-initialised parameters, random data), jits it with ``segjax.runtime.jit`` under the chosen
``--conv-impl`` / ``--cpu-scheduler``, runs two warm-up steps, then traces one step with
``jax.profiler.trace``. The XPlane file the profiler writes is read back (TensorFlow's
``xplane_pb2``, installed with segjax's input pipeline) and every event whose name is an HLO
instruction of the compiled module is summed per instruction; each row shows that instruction's
total time, its kind (``conv`` / ``dot`` when its fused computation holds a convolution or a dot,
else the fusion's name stem) and the ``op_name`` of its metadata, which names the model layer and
whether it is the forward or the backward (``transpose(jvp(...))``) pass. Times of ops that overlap
in time add up, so the sum can exceed the step's wall time; the totals per kind are the useful part.
"""

import argparse
import collections
import glob
import os
import re
import tempfile
import time

import jax
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from benchmarks import train_step
from segjax import runtime, trainer, xla_cpu

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = \S+ ([\w\-]+)\((.*)$", re.M)


def instructions(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name → (kind, op_name) from ``compiled.as_text()``."""
    bodies = {}
    for match in re.finditer(r"^%?([\w.\-]+) \([^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S):
        bodies[match.group(1)] = match.group(2)
    out = {}
    for name, opcode, rest in _INSTRUCTION.findall(hlo_text):
        op_name = re.search(r'op_name="([^"]*)"', rest)
        kind = opcode
        if opcode == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            body = bodies.get(called.group(1), "") if called else ""
            if " convolution(" in body:
                kind = "conv"
            elif " dot(" in body:
                kind = "dot"
            else:
                kind = re.sub(r"[.\d]+$", "", name)
        out[name] = (kind, op_name.group(1) if op_name else "")
    return out


def event_times_ms(trace_dir: str) -> collections.Counter:
    """Summed duration (ms) per event name over every plane and line of the trace."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not files:
        raise SystemExit(f"profile_step: the profiler wrote no .xplane.pb under {trace_dir}")
    space = xplane_pb2.XSpace()
    with open(files[0], "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                totals[names.get(event.metadata_id, "")] += event.duration_ps / 1e9
    return totals


def profile(model, batch, size, conv_impl, cpu_scheduler, num_classes=21, evaluate=False):
    """Compiles and traces one train step (``evaluate``: one ``train=False`` forward pass, as
    ``benchmarks.train_step`` times it); returns (wall ms, [(ms, instruction, kind, op)])."""
    net, _, cfg, tx, schedule, state, data = train_step.train_setup(
        model,
        batch,
        size,
        num_classes=num_classes,
        conv_impl=conv_impl,
        cpu_scheduler=cpu_scheduler,
    )
    if evaluate:
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        forward = runtime.jit(lambda v, x: net.apply(v, x, train=False)["out"], cfg)
        compiled = forward.lower(variables, data["image"]).compile()

        def run():
            jax.block_until_ready(compiled(variables, data["image"]))
    else:
        step = runtime.jit(trainer.make_train_step(net, tx, schedule, cfg), cfg, donate_argnums=0)
        compiled = step.lower(state, data).compile()

        def run():
            nonlocal state
            state, metrics = compiled(state, data)
            jax.block_until_ready(metrics["loss"])

    known = instructions(compiled.as_text())
    for _ in range(2):
        run()
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        with jax.profiler.trace(trace_dir):
            run()
        wall_ms = (time.perf_counter() - start) * 1e3
        totals = event_times_ms(trace_dir)
    rows = sorted(
        ((ms, name, *known[name]) for name, ms in totals.items() if name in known), reverse=True
    )
    return wall_ms, rows


def main(argv=None):
    """CLI entry point; prints and returns ``(wall ms, rows, ms per kind)``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument(
        "--conv-impl",
        default="auto",
        choices=("gemm", "xla"),
        help="convolutions as GEMMs (segjax.xla_cpu; the default on CPU) or XLA's own",
    )
    p.add_argument("--cpu-scheduler", default="memory", choices=("memory", "concurrency", "xla"))
    p.add_argument("--top", type=int, default=25, help="instructions to list")
    p.add_argument("--eval", action="store_true", help="profile the train=False forward pass")
    args = p.parse_args(argv)
    conv_impl = xla_cpu.resolve_conv_impl(args.conv_impl)
    wall_ms, rows = profile(
        args.model, args.batch, args.size, conv_impl, args.cpu_scheduler, evaluate=args.eval
    )
    what = "eval forward" if args.eval else "step"
    by_kind = collections.Counter()
    for ms, _, kind, _ in rows:
        by_kind[kind] += ms
    print(
        f"{args.model}, batch {args.batch}, {args.size}², conv_impl={conv_impl}, "
        f"cpu_scheduler={args.cpu_scheduler}: traced {what} {wall_ms:.0f} ms, "
        f"summed op time {sum(by_kind.values()):.0f} ms"
    )
    print("by kind (ms):", ", ".join(f"{k} {v:.0f}" for k, v in by_kind.most_common(12)))
    for ms, name, kind, op_name in rows[: args.top]:
        print(f"{ms:9.1f}  {kind:24.24s} {name:28.28s} {op_name[-100:]}")
    return wall_ms, rows, by_kind


if __name__ == "__main__":
    main()
