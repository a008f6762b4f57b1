"""TensorFlow for the input pipeline, loaded — and set up for that job — at its first use.

TensorFlow costs 0.5 GiB of resident memory and 2 s to import, and segjax needs it only to read
and augment data with ``tf.data``. Every segjax module that uses it imports ``tf`` from here, so
processes that read no data that way — the benchmarks, ``segjax.export``, a notebook building
models — never load it (``etils.epy.lazy_imports``: the real import happens at the first
attribute access, e.g. ``tf.data``).
"""

import sys

from etils import epy


def _configure_for_input_pipeline(module_name: str) -> None:
    """Runs once, right after TensorFlow is imported: TensorFlow runs only tf.data here, so it
    must not claim an accelerator JAX will use, nor print its INFO logs over segjax's."""
    if module_name != "tensorflow":
        return
    tensorflow = sys.modules["tensorflow"]
    tensorflow.config.set_visible_devices([], "GPU")
    tensorflow.get_logger().setLevel("ERROR")


with epy.lazy_imports(success_callback=_configure_for_input_pipeline):
    import tensorflow as tf

__all__ = ["tf"]
