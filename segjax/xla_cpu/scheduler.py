"""XLA:CPU's instruction scheduler as a ``jax.jit`` compiler option.

``config.runtime.cpu_scheduler`` picks it; :func:`segjax.runtime.jit` passes it to XLA.
"""

import jax

from segjax.errors import ConfigError

_CPU_SCHEDULERS = {
    "memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "concurrency": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    "xla": None,
}
CPU_SCHEDULERS = tuple(_CPU_SCHEDULERS)


def compiler_options(
    cpu_scheduler: str = "memory", platform: str | None = None
) -> dict[str, str] | None:
    """``jax.jit(compiler_options=...)`` for ``config.runtime.cpu_scheduler`` on ``platform``.

    ``platform`` defaults to ``jax.default_backend()``; off CPU there is nothing to set (None).
    XLA:CPU's default, concurrency-optimised schedule lets independent ops (the weight-gradient
    matmuls of a backward pass) run at the same time on the same cores, each with its own thread
    pool share; measured on 2 cores, the memory-optimised schedule made ResNet-50 segmentation
    train steps 15–20 % faster and their peak memory ~15 % smaller (docs/XLA_CPU.md).

    Raises:
      ConfigError: ``cpu_scheduler`` is not ``"memory"``, ``"concurrency"`` or ``"xla"``.
    """
    if cpu_scheduler not in _CPU_SCHEDULERS:
        raise ConfigError(
            f"config.runtime.cpu_scheduler={cpu_scheduler!r}: expected one of "
            f"{sorted(_CPU_SCHEDULERS)}"
        )
    value = _CPU_SCHEDULERS[cpu_scheduler]
    if value is None or (platform or jax.default_backend()) != "cpu":
        return None
    return {"xla_cpu_scheduler_type": value}
