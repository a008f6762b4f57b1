"""Compile once: JAX's persistent compilation cache for every segjax command.

Every command (``segjax.train``, ``evaluate``, ``predict``, ``export``) calls :func:`setup`
through ``segjax.cli.setup_runtime`` before it compiles anything, so a resumed run, an
evaluation or a prediction on an unchanged config loads the executables an earlier process
compiled instead of compiling them again (docs/PERFORMANCE.md, "Compile time and the
compile cache", has the measured times).

Where the cache lives, first match wins:

1. ``SEGJAX_COMPILE_CACHE`` in the environment: ``off`` (or ``0``, ``false``, ``no``,
   ``none``) turns the cache off; ``on`` (``1``, ``true``, ``yes``) turns it on at the
   directory the config or the default names; anything else is the directory. It overrides
   the config, so that a test session or a cluster job can redirect every command at once.
2. ``config.runtime.compile_cache``: ``enabled=False`` turns it off; a non-empty ``dir`` is the
   directory.
3. ``JAX_COMPILATION_CACHE_DIR``, when the user already keeps a JAX cache.
4. ``$XDG_CACHE_HOME/segjax/jax``, else ``~/.cache/segjax/jax``.

A cached executable is the one XLA compiled for the same key: JAX hashes the lowered program
(so ``config.runtime.conv_impl``, which changes the traced convolutions, changes it), the
compile options (``config.runtime.cpu_scheduler`` reaches XLA as a compile option of
``segjax.runtime.jit``),
``XLA_FLAGS``, the jax/jaxlib version and the devices. Results are therefore bitwise those
of a fresh compile. The cache is trusted code: keep it in a directory only you can write
(it is created with mode 0700). ``rm -rf`` the directory to empty it; it has no size limit.
"""

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
from absl import logging
from jax import monitoring
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from segjax.errors import ConfigError
from segjax.runtime import host_heap

ENV_VAR = "SEGJAX_COMPILE_CACHE"
OFF_VALUES = frozenset({"off", "0", "false", "no", "none"})
ON_VALUES = frozenset({"on", "1", "true", "yes"})

# segjax.config's runtime.compile_cache defaults (a test checks they agree), for callers without a
# config (benchmarks); repeated here so that this module imports without TensorFlow.
DEFAULT_SETTINGS = {"enabled": True, "dir": "", "min_compile_time_secs": 0.0}

_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_MISS_EVENT = "/jax/compilation_cache/cache_misses"  # recorded when an entry is written
_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # includes cache retrieval


@dataclasses.dataclass(frozen=True)
class CacheChoice:
    """Where the persistent cache goes (``directory`` None: off) and which setting said so."""

    directory: str | None
    source: str
    min_compile_time_secs: float = 0.0


def default_dir(environ: Mapping[str, str] | None = None) -> str:
    """The user-level cache directory: ``$XDG_CACHE_HOME/segjax/jax`` or ``~/.cache/segjax/jax``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "segjax", "jax")


def _settings(config: Any) -> dict:
    """``config.runtime.compile_cache`` (root ConfigDict, its ``runtime`` block, the block
    itself, or None) as a dict."""
    block = getattr(getattr(config, "runtime", config), "compile_cache", config)
    if block is None:
        return dict(DEFAULT_SETTINGS)
    get = block.get if hasattr(block, "get") else lambda k, d: getattr(block, k, d)
    return {key: get(key, default) for key, default in DEFAULT_SETTINGS.items()}


def resolve(config: Any = None, environ: Mapping[str, str] | None = None) -> CacheChoice:
    """Where the cache goes for ``config`` (root ConfigDict, its ``runtime`` block or
    ``runtime.compile_cache``; None: the defaults) and ``environ`` (default ``os.environ``), in
    the order of the module docstring. Directories are made absolute; nothing is created.

    Raises:
      ConfigError: ``min_compile_time_secs`` is negative.
    """
    environ = os.environ if environ is None else environ
    settings = _settings(config)
    min_secs = float(settings["min_compile_time_secs"])
    if min_secs < 0:
        raise ConfigError(
            f"config.runtime.compile_cache.min_compile_time_secs={min_secs}: expected a number >= 0"
        )

    def choice(directory: str | None, source: str) -> CacheChoice:
        if directory is not None:
            directory = os.path.abspath(os.path.expanduser(directory))
        return CacheChoice(directory, source, min_secs)

    env_value = environ.get(ENV_VAR, "").strip()
    if env_value.lower() in OFF_VALUES:
        return choice(None, ENV_VAR)
    if env_value and env_value.lower() not in ON_VALUES:
        return choice(env_value, ENV_VAR)
    if not settings["enabled"] and not env_value:
        return choice(None, "config.runtime.compile_cache.enabled")
    if settings["dir"]:
        return choice(settings["dir"], "config.runtime.compile_cache.dir")
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return choice(environ["JAX_COMPILATION_CACHE_DIR"], "JAX_COMPILATION_CACHE_DIR")
    return choice(default_dir(environ), "default")


def _writable_dir(directory: str) -> str | None:
    """Creates ``directory`` (mode 0700: the cache is code the process will run) and returns
    None if it is writable, else why not."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        return e.strerror or str(e)
    return None if os.access(directory, os.W_OK | os.X_OK) else "not writable"


def compile_and_release(jitted, *args):
    """``jitted`` (a ``jax.jit`` function) compiled ahead of time for ``args``, with the
    compiler's freed heap returned to the OS (:func:`segjax.runtime.host_heap.release_freed_heap`)
    before the executable first runs, so the step's buffers do not pile onto the compiler's
    peak. The persistent cache serves this compile as it serves a first call; call the result
    with arguments of the same shapes and shardings."""
    compiled = jitted.lower(*args).compile()
    host_heap.release_freed_heap()
    return compiled


def setup(config: Any = None, environ: Mapping[str, str] | None = None) -> str | None:
    """Turns JAX's persistent compilation cache on (or off) for this process, as
    :func:`resolve` says; returns the directory, or None when the cache is off.

    Call it before the first compilation whose executable should be cached; calling it again
    (another directory, or off) takes effect for the compilations after it. An unwritable
    default directory turns the cache off with a warning (a run must not fail for want of a
    cache); an unwritable directory the user named is an error.

    Raises:
      ConfigError: the directory given by ``SEGJAX_COMPILE_CACHE`` or the config cannot be
        created or written; ``min_compile_time_secs`` is negative.
    """
    chosen = resolve(config, environ)
    # JAX initialises its cache object once, at the first compilation after a directory is
    # set; a reset makes a new setting (directory or off) apply from now on.
    jax_compilation_cache.reset_cache()
    if chosen.directory is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    problem = _writable_dir(chosen.directory)
    if problem and chosen.source in ("default", "JAX_COMPILATION_CACHE_DIR"):
        logging.warning(
            "compile cache off: %s %s (%s); set %s=DIR",
            chosen.directory,
            problem,
            chosen.source,
            ENV_VAR,
        )
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if problem:
        raise ConfigError(f"{chosen.source}: compile cache directory {chosen.directory}: {problem}")
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", chosen.directory)
    # JAX's default (1 s) leaves the many small jits of a run (slices, RNG seeds, metric
    # reductions: ~40 for the quickstart, 1.3 s cold, 0.3 s loaded) to recompile every time.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", chosen.min_compile_time_secs)
    # -1: every entry is written, whatever its size (0 would let JAX pick a per-filesystem
    # minimum).
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return chosen.directory


@dataclasses.dataclass
class CompileRecord:
    """What :func:`record` saw: persistent-cache hits, entries written, and the number and
    total seconds of backend compilations (a cache hit counts its retrieval time)."""

    hits: int = 0
    writes: int = 0
    compiles: int = 0
    compile_secs: float = 0.0
    per_function: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    def slowest(self, n: int = 5) -> list[tuple[str, float]]:
        """The ``n`` longest compilations as ``(function name, seconds)``."""
        return sorted(self.per_function, key=lambda item: -item[1])[:n]


@contextlib.contextmanager
def record() -> Iterator[CompileRecord]:
    """Context manager: counts JAX's compile and persistent-cache events inside it (through
    ``jax.monitoring``), for tests and benchmarks."""
    seen = CompileRecord()

    def on_event(event: str, **kwargs) -> None:
        if event == _HIT_EVENT:
            seen.hits += 1
        elif event == _MISS_EVENT:
            seen.writes += 1

    def on_duration(event: str, duration: float, **kwargs) -> None:
        if event == _COMPILE_EVENT:
            seen.compiles += 1
            seen.compile_secs += duration
            seen.per_function.append((str(kwargs.get("fun_name", "")), duration))

    monitoring.register_event_listener(on_event)
    monitoring.register_event_duration_secs_listener(on_duration)
    try:
        yield seen
    finally:
        monitoring.unregister_event_listener(on_event)
        monitoring.unregister_event_duration_listener(on_duration)


__all__ = [
    "DEFAULT_SETTINGS",
    "ENV_VAR",
    "CacheChoice",
    "CompileRecord",
    "default_dir",
    "record",
    "resolve",
    "setup",
]
