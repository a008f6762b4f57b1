"""Runtime: the process around the model, set up from ``config.runtime``.

- :mod:`segjax.runtime.backend`: :func:`jit`, the one jit wrapper of every site that traces a
  model, applying the backend rewrites (:mod:`segjax.xla_cpu`) and compiler options;
- :mod:`segjax.runtime.compile_cache`: JAX's persistent compilation cache and compiling ahead of
  time;
- :mod:`segjax.runtime.host_devices`: a CPU host split into one XLA device per core;
- :mod:`segjax.runtime.host_heap`: glibc's heap (huge pages, returning the compiler's memory);
- :mod:`segjax.runtime.lazy_imports`: TensorFlow loaded at its first use, set up for tf.data.
"""

from segjax.runtime.backend import jit, runtime_settings

__all__ = ["jit", "runtime_settings"]
