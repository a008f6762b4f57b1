"""The torchvision peer of :mod:`benchmarks.train_step`: the same train step and eval, in torch.

    python -m benchmarks.torchvision_step --model fcn_resnet50 --batch 4 --size 256 --steps 3

Prints one JSON line of figures. ``python -m benchmarks.train_step --compare torchvision`` runs
it in a child interpreter (``--torch-python``, which needs torch and torchvision but not JAX),
so that its peak memory is its own; run by hand it is the torchvision half of that comparison.
The step: ``torchvision.models.segmentation.<model>(weights=None, weights_backbone=None)`` with
the aux head where segjax has one, NCHW float32, pixel-wise cross-entropy with 255 ignored
(+ 0.4 × the aux loss), ``torch.optim.SGD`` with segjax's settings; as many torch threads as
CPU cores. Timed like the JAX side: one warm-up step, then the median of ``--steps``. The eval
forward computes the main output only (``"out"``), as segjax's jitted eval forward does: the
aux head is detached for it (until 2026-12-03 torchvision's eval also ran the aux head).

Imports torch only inside :func:`run_torch`, and never JAX.
"""

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

from benchmarks import common

# torchvision model builders for our names (aux head on where segjax has one).
TORCHVISION_MODELS = {
    "fcn_resnet50": ("fcn_resnet50", True),
    "fcn_resnet101": ("fcn_resnet101", True),
    "deeplabv3_resnet50": ("deeplabv3_resnet50", True),
    "deeplabv3_resnet101": ("deeplabv3_resnet101", True),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3_mobilenet_v3_large", True),
    "lraspp_mobilenet_v3_large": ("lraspp_mobilenet_v3_large", False),
}


def check_comparable(model: str) -> None:
    """Raises ``KeyError`` naming the comparable models when torchvision has no ``model``."""
    if model not in TORCHVISION_MODELS:
        raise KeyError(
            f"no torchvision equivalent of {model!r}; comparable: {', '.join(TORCHVISION_MODELS)}"
        )


def _import_torch():
    try:
        import torch
        import torchvision
    except ImportError as e:
        raise ImportError(
            "--compare torchvision needs torch and torchvision "
            "(pip install 'segjax[torch]', or pass --torch-python PYTHON with them)"
        ) from e
    return torch, torchvision


def _train_step_fn(net, images, labels):
    """``(train_once, x)``: ``train_once() → loss`` is one train step of ``net`` on the batch."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(
        net.parameters(), lr=common.LR, momentum=common.MOMENTUM, weight_decay=common.WEIGHT_DECAY
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels).long()

    def train_once():
        net.train()
        opt.zero_grad(set_to_none=True)
        outputs = net(x)
        loss = F.cross_entropy(outputs["out"], y, ignore_index=common.IGNORE)
        if "aux" in outputs:
            aux = F.cross_entropy(outputs["aux"], y, ignore_index=common.IGNORE)
            loss = loss + common.AUX_WEIGHT * aux
        loss.backward()
        opt.step()
        return loss.detach()

    return train_once, x


def _matmul_peak() -> float:
    """FLOP/s of torch's float32 2048² matmul: the fastest of 5 calls after a warm-up."""
    import torch

    a = torch.ones(2048, 2048)
    torch.mm(a, a)
    return 2 * 2048**3 / (min(common.times_ms(lambda: torch.mm(a, a), 5)) / 1e3)


def _setup(model: str, batch: int, size: int, *, num_classes: int, threads: int | None):
    """``(figures, train_once, eval_once)`` after the warm-up train step: the torchvision model
    on a random batch; ``figures`` holds the versions, settings and first-step time."""
    check_comparable(model)
    torch, torchvision = _import_torch()
    torch.set_num_threads(threads or common.cpu_cores())
    torch.manual_seed(0)
    builder_name, aux = TORCHVISION_MODELS[model]
    builder = getattr(torchvision.models.segmentation, builder_name)
    kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes}
    net = builder(**kwargs, **({"aux_loss": True} if aux else {}))
    train_once, x = _train_step_fn(net, *common.random_batch(batch, size, num_classes))

    def eval_once():
        # The main output only, the work of segjax's eval forward (whose jit drops the unused
        # aux head): torchvision's forward computes the aux head whenever the model has one.
        net.eval()
        aux_head = getattr(net, "aux_classifier", None)
        if aux_head is not None:
            net.aux_classifier = None
        try:
            with torch.inference_mode():
                return net(x)["out"]
        finally:
            if aux_head is not None:
                net.aux_classifier = aux_head

    start = time.perf_counter()
    train_once()  # warm-up (first-call allocations, oneDNN primitive creation)
    figures = {
        "framework": "torchvision",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "model": model,
        "batch": batch,
        "size": size,
        "dtype": "float32",
        "eval_output": "out",
        "first_step_s": time.perf_counter() - start,
    }
    return figures, train_once, eval_once


def _process_figures() -> dict:
    """The figures measured last: matmul peak, peak RSS, load average."""
    return {
        "matmul_peak_flops": _matmul_peak(),
        "peak_memory_bytes": common.peak_rss_bytes(),
        "peak_memory_kind": "process peak RSS",
        "load_average_1min_at_end": os.getloadavg()[0],
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
    }


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
    out, train_once, eval_once = _setup(
        model, batch, size, num_classes=num_classes, threads=threads
    )
    step_times = common.times_ms(train_once, steps)
    out.update(step_times_figures(batch, step_times, float(train_once())))
    if evaluate:
        out["eval_img_s"] = batch / (common.warm_median_ms(eval_once, steps) / 1e3)
    out.update(_process_figures())
    return out


def step_times_figures(batch: int, step_times: list[float], loss: float) -> dict:
    """``step_ms`` (median), ``step_times_ms``, ``train_img_s`` and ``loss`` of timed steps."""
    step_ms = statistics.median(step_times)
    return {
        "step_ms": step_ms,
        "step_times_ms": step_times,
        "train_img_s": batch / (step_ms / 1e3),
        "loss": loss,
    }


def serve(model: str, batch: int, size: int, *, num_classes: int = 21, threads=None) -> dict:
    """:func:`common.serve_steps` for the torchvision model: actions ``train`` (one train step,
    replies its ``loss``) and ``eval`` (one eval forward); finishes with :func:`_setup`'s and
    :func:`_process_figures`' figures. What :func:`start_peer` runs in the child."""
    figures, train_once, eval_once = _setup(
        model, batch, size, num_classes=num_classes, threads=threads
    )

    def train_action():
        return {"loss": float(train_once())}

    def eval_action():
        eval_once()
        return {}

    actions = {"train": train_action, "eval": eval_action}
    return common.serve_steps(actions, lambda: {**figures, **_process_figures()})


def start_peer(
    python: str, model: str, batch: int, size: int, env=None, **settings
) -> common.StepPeer:
    """:func:`serve` in a child ``python``, ready for interleaved steps (its warm-up step done).

    ``settings``: ``num_classes``, ``threads``; ``env``: the child's environment (default ours).

    Raises:
      RuntimeError: the child failed before it was ready.
    """
    args = ["--model", model, "--batch", str(batch), "--size", str(size), "--serve"]
    for key in ("num_classes", "threads"):
        if settings.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(settings[key])]
    return common.StepPeer([python, "-m", "benchmarks.torchvision_step", *args], env=env)


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


def run_in_child(python: str, model: str, batch: int, size: int, env=None, **settings) -> dict:
    """:func:`run_torch` in a child ``python`` (its own peak RSS, no JAX needed there).

    ``settings`` are :func:`run_torch`'s keywords (``steps``, ``num_classes``, ``threads``,
    ``evaluate``), passed on as this module's command-line flags; ``env`` is the child's
    environment (default ours).

    Raises:
      RuntimeError: the child failed (its stderr tail is in the message).
    """
    args = ["--model", model, "--batch", str(batch), "--size", str(size)]
    for key in ("steps", "num_classes", "threads"):
        if settings.get(key) is not None:
            args += [f"--{key.replace('_', '-')}", str(settings[key])]
    if not settings.get("evaluate", True):
        args.append("--no-eval")
    return common.module_json(python, "torchvision_step", args, env=env)


def main(argv=None) -> dict:
    """CLI entry point: runs :func:`run_torch` and prints its figures as one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, choices=sorted(TORCHVISION_MODELS))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median) after 1 warm-up")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    p.add_argument("--no-eval", action="store_true")
    p.add_argument(
        "--serve",
        action="store_true",
        help="run steps when asked on stdin (benchmarks.common.serve_steps), for interleaving",
    )
    args = p.parse_args(argv)
    if args.serve:
        return serve(
            args.model, args.batch, args.size, num_classes=args.num_classes, threads=args.threads
        )
    try:
        result = run_torch(
            args.model,
            args.batch,
            args.size,
            steps=args.steps,
            num_classes=args.num_classes,
            threads=args.threads,
            evaluate=not args.no_eval,
        )
    except ImportError as e:
        raise SystemExit(f"torchvision_step: {e}") from None
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
