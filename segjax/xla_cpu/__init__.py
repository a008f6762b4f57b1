"""Rewrites for XLA:CPU: the same numbers computed the way XLA's CPU backend runs fast.

XLA:CPU runs some convolutions (weight gradients, 1×1, depthwise, atrous) far slower than the
same arithmetic written as matmuls, recomputes a ResNet's residual stream in every consumer, and
schedules a step's ops for concurrency where memory order is faster on few cores
(docs/XLA_CPU.md):

- :mod:`segjax.xla_cpu.conv`: :func:`conv_general_dilated_gemm`, convolutions as GEMMs;
- :mod:`segjax.xla_cpu.winograd`: Winograd F(m×m, 3×3), which it routes dense 3×3 convs to;
- :mod:`segjax.xla_cpu.scope`: :func:`conv_impl_scope`, the Flax method interceptors that apply
  them (and :func:`materialize` on residual block outputs) to plain modules while tracing;
- :mod:`segjax.xla_cpu.scheduler`: :func:`compiler_options` for XLA:CPU's scheduler.

Nothing here is called by model code: :func:`segjax.runtime.jit` applies it from
``config.runtime`` at every jit site.
"""

from segjax.xla_cpu.conv import conv_general_dilated_gemm
from segjax.xla_cpu.scheduler import CPU_SCHEDULERS, compiler_options
from segjax.xla_cpu.scope import (
    CONV_IMPLS,
    RESIDUAL_BLOCK_OUTPUTS,
    active_conv_impl,
    conv_impl_scope,
    materialize,
    resolve_conv_impl,
)

__all__ = [
    "CONV_IMPLS",
    "CPU_SCHEDULERS",
    "RESIDUAL_BLOCK_OUTPUTS",
    "active_conv_impl",
    "compiler_options",
    "conv_general_dilated_gemm",
    "conv_impl_scope",
    "materialize",
    "resolve_conv_impl",
]
