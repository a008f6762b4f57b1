"""The one jit wrapper: :func:`jit` compiles a function with ``config.runtime``'s backend settings.

Every site that traces a model (train and eval steps, evaluate, predict, export, benchmarks)
jits through :func:`jit`, which traces under :func:`segjax.xla_cpu.conv_impl_scope`
(``config.runtime.conv_impl``) and compiles with :func:`segjax.xla_cpu.compiler_options`
(``config.runtime.cpu_scheduler``). So the model code stays free of backend workarounds, and a
backend setting is changed in one place: ``--config.runtime.conv_impl=xla``.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax

from segjax import xla_cpu


def runtime_settings(config: Any = None) -> Any:
    """The ``runtime`` block of ``config``: the root ConfigDict's ``config.runtime``, or
    ``config`` itself when it is the block (any object with ``conv_impl`` and ``cpu_scheduler``
    attributes); None: the defaults of :func:`segjax.config.base_config`."""
    if config is None:
        from segjax import config as config_lib  # the schema (its import reaches the models)

        return config_lib.base_config().runtime
    return getattr(config, "runtime", config)


def jit(fn: Callable, config: Any, *, platform: str | None = None, **jit_kwargs) -> Callable:
    """``jax.jit(fn)`` traced under ``config.runtime.conv_impl``, compiled for
    ``config.runtime.cpu_scheduler``.

    Args:
      fn: the function to jit.
      config: the root ConfigDict, its ``runtime`` block, any object with ``conv_impl`` and
        ``cpu_scheduler`` attributes, or None for the defaults (:func:`runtime_settings`).
        Both settings are read now, not at call time.
      platform: the backend the settings resolve for (default ``jax.default_backend()``).
      **jit_kwargs: ``in_shardings``, ``donate_argnums`` … for ``jax.jit``, unchanged.

    Raises:
      ConfigError: an unknown ``conv_impl`` or ``cpu_scheduler`` (here, not at the first call).
    """
    settings = runtime_settings(config)
    conv_impl, cpu_scheduler = settings.conv_impl, settings.cpu_scheduler
    xla_cpu.resolve_conv_impl(conv_impl, platform)
    options = xla_cpu.compiler_options(cpu_scheduler, platform)

    @functools.wraps(fn)
    def traced_under_conv_impl(*args, **kwargs):
        with xla_cpu.conv_impl_scope(conv_impl, platform):
            return fn(*args, **kwargs)

    return jax.jit(traced_under_conv_impl, compiler_options=options, **jit_kwargs)
