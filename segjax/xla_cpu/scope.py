"""The scope a jit site traces under: XLA:CPU's rewrites applied to plain Flax modules.

:func:`conv_impl_scope` installs two Flax method interceptors for the duration of a trace (with
``"gemm"``, the CPU path):

* every plain ``nn.Conv`` computes its convolution with :func:`segjax.xla_cpu.conv.
  conv_general_dilated_gemm` (parameters, names and results unchanged);
* the output of every residual block in :data:`RESIDUAL_BLOCK_OUTPUTS` passes through
  :func:`materialize`, which stores the residual stream once instead of letting XLA:CPU
  recompute it in each consumer.

Models therefore stay architecture: they call neither function and take no backend argument.
"""

import contextlib
import contextvars
import importlib
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.xla_cpu.conv import conv_general_dilated_gemm

CONV_IMPLS = ("auto", "gemm", "xla")

# The residual blocks whose outputs are materialized on the CPU path, as (module, class, method):
# the method returns the block's ``relu(out + shortcut)``. Imported at the first trace, so that
# this package does not import the models (which the jit wrapper's users import anyway).
RESIDUAL_BLOCK_OUTPUTS = (
    ("segjax.models.backbones.resnet", "BasicBlock", "output"),
    ("segjax.models.backbones.resnet", "Bottleneck", "output"),
)

# The implementation of the innermost active conv_impl_scope ("gemm" | "xla"); read by the
# interceptors at trace time so that an inner "xla" scope wins over an outer "gemm" one.
_ACTIVE_CONV_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar(
    "segjax_conv_impl", default="xla"
)


def active_conv_impl() -> str:
    """``"gemm"`` inside a ``conv_impl_scope`` on the CPU path, else ``"xla"``."""
    return _ACTIVE_CONV_IMPL.get()


def resolve_conv_impl(choice: str = "auto", platform: str | None = None) -> str:
    """``"gemm"`` or ``"xla"`` for ``config.runtime.conv_impl``: ``"auto"`` is ``"gemm"`` on CPU.

    Raises:
      ConfigError: ``choice`` is not one of :data:`CONV_IMPLS`.
    """
    if choice not in CONV_IMPLS:
        raise ConfigError(
            f"config.runtime.conv_impl={choice!r}: expected one of "
            + ", ".join(map(repr, CONV_IMPLS))
        )
    if choice != "auto":
        return choice
    return "gemm" if (platform or jax.default_backend()) == "cpu" else "xla"


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


def residual_block_outputs() -> dict[type, str]:
    """``{block class: name of its output method}`` of :data:`RESIDUAL_BLOCK_OUTPUTS` (read when
    a scope opens: the block modules are imported by then, and a test may extend the table)."""
    return {
        getattr(importlib.import_module(module), cls): method
        for module, cls, method in RESIDUAL_BLOCK_OUTPUTS
    }


def _residual_output_interceptor(blocks: dict[type, str]):
    """Flax method interceptor: the output method of a residual block in ``blocks``
    (:func:`residual_block_outputs`, resolved once per scope rather than at every intercepted
    call) returns its result stored once (:func:`materialize`). Subclasses count (the memory
    benchmark's rematerialised blocks)."""

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        for cls in type(context.module).__mro__:
            if cls in blocks:
                return materialize(out) if blocks[cls] == context.method_name else out
        return out

    return intercept


@contextlib.contextmanager
def conv_impl_scope(choice: str = "auto", platform: str | None = None) -> Iterator[str]:
    """Context manager: the modules traced inside run on the implementation ``choice`` names.

    ``"gemm"``: every plain ``nn.Conv`` uses :func:`segjax.xla_cpu.conv.
    conv_general_dilated_gemm` (convolutions as matmuls where XLA:CPU's convolution is slow, same
    results within float rounding) and residual block outputs are materialized
    (:func:`materialize`); ``"xla"``: ``lax.conv_general_dilated`` itself, nothing else changed;
    ``"auto"``: ``"gemm"`` when ``platform`` (default ``jax.default_backend()``) is ``"cpu"``,
    else ``"xla"``. Parameters, names and results are unchanged, so checkpoints and weight
    converters keep working. Only tracing is affected: wrap the first call / ``.lower`` of a
    jitted function, or use :func:`segjax.runtime.jit`. Yields the resolved implementation.

    Raises:
      ConfigError: ``choice`` is not one of :data:`CONV_IMPLS`.
    """
    impl = resolve_conv_impl(choice, platform)
    token = _ACTIVE_CONV_IMPL.set(impl)
    try:
        if impl == "gemm":
            with nn.intercept_methods(_gemm_conv_interceptor):
                with nn.intercept_methods(_residual_output_interceptor(residual_block_outputs())):
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
    transpose recomputed all six layer3 blocks: 304 ms; docs/XLA_CPU.md). Neither
    ``optimization_barrier`` (XLA:CPU expands it before fusing) nor a data dependence stops
    that; a ``conditional`` does, since it cannot be fused. So ``x`` passes through one whose
    branches both return it (one as ``x * 1``, or XLA would drop the conditional), picked by a
    predicate on one element that XLA cannot fold. Its transpose is the same conditional on the
    cotangent, which stores the backward's residual-stream gradient once too. Values and
    gradients are bit-identical; off the CPU path (and for empty arrays) ``x`` is returned as is.
    :func:`conv_impl_scope` applies it to the outputs of :data:`RESIDUAL_BLOCK_OUTPUTS`.
    """
    if _ACTIVE_CONV_IMPL.get() != "gemm" or x.size == 0:
        return x
    first = jax.lax.stop_gradient(x).reshape(-1)[0]
    return jax.lax.cond(jnp.isnan(first), _times_one, _identity, x)
