"""Runtime: the process around the model — compilation cache, C heap, lazy TensorFlow.

- :mod:`segjax.runtime.compile_cache`: JAX's persistent compilation cache and compiling ahead of
  time;
- :mod:`segjax.runtime.host_heap`: glibc's heap (huge pages, returning the compiler's memory);
- :mod:`segjax.runtime.lazy_imports`: TensorFlow loaded at its first use, set up for tf.data.
"""
