"""Exact backend-specific rewrites of XLA ops, chosen by one switch and applied at every jit site.

XLA:CPU runs some convolutions (weight gradients, 1×1, depthwise, atrous and transposed convs)
far slower than the same arithmetic written as matmuls; :mod:`segjax.ops.conv` and
:mod:`segjax.ops.winograd` compute the same numbers the fast way, and :mod:`segjax.ops.upsample`
holds the transposed-conv and pooling forms the models call directly. Models stay architecture:
they use plain ``nn.Conv``, and a jit site picks the implementation with :func:`jit` (or
:func:`conv_impl_scope` around its tracing) from ``config.conv_impl`` and
``config.cpu_scheduler``.
"""

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.ops.conv import conv_general_dilated_gemm

CONV_IMPLS = ("auto", "gemm", "xla")

# The implementation of the innermost active conv_impl_scope ("gemm" | "xla"); read by the
# interceptor at trace time so that an inner "xla" scope wins over an outer "gemm" one.
_ACTIVE_CONV_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar(
    "segjax_conv_impl", default="xla"
)


def _gemm_conv_interceptor(next_fun, args, kwargs, context):
    """Flax method interceptor: plain ``nn.Conv`` calls get :func:`conv_general_dilated_gemm`."""
    module = context.module
    if (
        _ACTIVE_CONV_IMPL.get() == "gemm"
        and type(module) is nn.Conv
        and context.method_name == "__call__"
        and module.conv_general_dilated is None
        and module.conv_general_dilated_cls is None
    ):
        # The bound module is rebuilt on every apply, so this never leaks out of the scope.
        object.__setattr__(module, "conv_general_dilated", conv_general_dilated_gemm)
    return next_fun(*args, **kwargs)


def resolve_conv_impl(choice: str = "auto", platform: str | None = None) -> str:
    """``"gemm"`` or ``"xla"`` for ``config.conv_impl``: ``"auto"`` is ``"gemm"`` on CPU only.

    Raises:
      ValueError: ``choice`` is not one of :data:`CONV_IMPLS`.
    """
    if choice not in CONV_IMPLS:
        raise ValueError(
            f"config.conv_impl={choice!r}: expected one of {', '.join(map(repr, CONV_IMPLS))}"
        )
    if choice != "auto":
        return choice
    return "gemm" if (platform or jax.default_backend()) == "cpu" else "xla"


@contextlib.contextmanager
def conv_impl_scope(choice: str = "auto", platform: str | None = None) -> Iterator[str]:
    """Context manager: every ``nn.Conv`` traced inside uses the implementation ``choice`` names.

    ``"gemm"``: :func:`segjax.ops.conv.conv_general_dilated_gemm` (convolutions as matmuls
    where XLA:CPU's convolution is slow, same results within float rounding); ``"xla"``:
    ``lax.conv_general_dilated`` itself; ``"auto"``: ``"gemm"`` when ``platform`` (default
    ``jax.default_backend()``) is ``"cpu"``, else ``"xla"``. Parameters, names and results are
    unchanged, so checkpoints and weight converters keep working. Only tracing is affected:
    wrap the first call / ``.lower`` of a jitted function, or use :func:`jit`. Yields the
    resolved implementation.

    Raises:
      ValueError: ``choice`` is not one of :data:`CONV_IMPLS`.
    """
    impl = resolve_conv_impl(choice, platform)
    token = _ACTIVE_CONV_IMPL.set(impl)
    try:
        if impl == "gemm":
            with nn.intercept_methods(_gemm_conv_interceptor):
                yield impl
        else:
            yield impl
    finally:
        _ACTIVE_CONV_IMPL.reset(token)


def _times_one(v: jax.Array) -> jax.Array:
    return v * 1  # the same value; a branch XLA does not see as equal to the identity


def _identity(v: jax.Array) -> jax.Array:
    return v


def materialize(x: jax.Array) -> jax.Array:
    """``x``, computed once and stored when traced on the CPU path (``conv_impl_scope("gemm")``).

    XLA duplicates an elementwise producer into each of its consumers whenever every consumer
    can fuse it. A residual stream ``out_k = relu(bn(y_k) + out_{k-1})`` is such a producer, so
    on XLA:CPU each block's output was recomputed, with every block before it in the stage,
    inside each fusion that reads it: the next block's add, its ReLU mask, the weight
    gradient's transpose. In fcn_resnet50's train step 31 fusions did so (layer4_0's shortcut
    transpose recomputed all six layer3 blocks: 304 ms; docs/PERFORMANCE.md). Neither
    ``optimization_barrier`` (XLA:CPU expands it before fusing) nor a data dependence stops
    that; a ``conditional`` does, since it cannot be fused. So ``x`` passes through one whose
    branches both return it (one as ``x * 1``, or XLA would drop the conditional), picked by a
    predicate on one element that XLA cannot fold. Its transpose is the same conditional on the
    cotangent, which stores the backward's residual-stream gradient once too. Values and
    gradients are bit-identical; off the CPU path (and for empty arrays) ``x`` is returned as is.
    """
    if _ACTIVE_CONV_IMPL.get() != "gemm" or x.size == 0:
        return x
    first = jax.lax.stop_gradient(x).reshape(-1)[0]
    return jax.lax.cond(jnp.isnan(first), _times_one, _identity, x)


_CPU_SCHEDULERS = {
    "memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "concurrency": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "xla": None,
}


def compiler_options(
    cpu_scheduler: str = "memory", platform: str | None = None
) -> dict[str, str] | None:
    """``jax.jit(compiler_options=...)`` for ``config.cpu_scheduler`` on ``platform``.

    ``platform`` defaults to ``jax.default_backend()``; off CPU there is nothing to set (None).
    XLA:CPU's default, concurrency-optimised schedule lets independent ops (the weight-gradient
    matmuls of a backward pass) run at the same time on the same cores, each with its own thread
    pool share; measured on 2 cores, the memory-optimised schedule made ResNet-50 segmentation
    train steps 15–20 % faster and their peak memory ~15 % smaller (docs/PERFORMANCE.md).

    Raises:
      ValueError: ``cpu_scheduler`` is not ``"memory"``, ``"concurrency"`` or ``"xla"``.
    """
    if cpu_scheduler not in _CPU_SCHEDULERS:
        raise ValueError(
            f"config.cpu_scheduler={cpu_scheduler!r}: expected one of {sorted(_CPU_SCHEDULERS)}"
        )
    value = _CPU_SCHEDULERS[cpu_scheduler]
    if value is None or (platform or jax.default_backend()) != "cpu":
        return None
    return {"xla_cpu_scheduler_type": value}


def jit(fn: Callable, config: Any, *, platform: str | None = None, **jit_kwargs) -> Callable:
    """``jax.jit(fn)`` traced under ``config.conv_impl`` and compiled for ``config.cpu_scheduler``.

    The one jit helper of every site that traces a model (train and eval steps, evaluate,
    predict, export, benchmarks). ``config`` is the root ConfigDict or any object with
    ``conv_impl`` and ``cpu_scheduler`` attributes; both are read now, not at call time.
    ``jit_kwargs`` (``in_shardings``, ``donate_argnums`` …) go to ``jax.jit`` unchanged.
    """
    conv_impl, cpu_scheduler = config.conv_impl, config.cpu_scheduler
    resolve_conv_impl(conv_impl, platform)  # a bad value fails here, not at the first call
    options = compiler_options(cpu_scheduler, platform)

    @functools.wraps(fn)
    def traced_under_conv_impl(*args, **kwargs):
        with conv_impl_scope(conv_impl, platform):
            return fn(*args, **kwargs)

    return jax.jit(traced_under_conv_impl, compiler_options=options, **jit_kwargs)


__all__ = [
    "CONV_IMPLS",
    "compiler_options",
    "conv_general_dilated_gemm",
    "conv_impl_scope",
    "jit",
    "materialize",
    "resolve_conv_impl",
]
