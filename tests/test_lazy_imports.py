"""TensorFlow loads only where data is read with tf.data (segjax.runtime.lazy_imports)."""

import subprocess
import sys

import pytest

# Modules whose import must not load TensorFlow: the model and training code, every CLI module
# (each reads data only once it runs) and the benchmarks (which read none).
TENSORFLOW_FREE = [
    "segjax.trainer",
    "segjax.train",
    "segjax.evaluate",
    "segjax.predict",
    "segjax.export",
    "segjax.models",
    "benchmarks.train_step",
]


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


@pytest.mark.parametrize("module", TENSORFLOW_FREE)
def test_importing_does_not_load_tensorflow(module):
    out = _run(f"import sys, {module}; print('tensorflow' in sys.modules)")
    assert out == "False", f"importing {module} loaded TensorFlow"


def test_first_use_loads_tensorflow_set_up_for_the_input_pipeline():
    out = _run(
        "import sys\n"
        "from segjax.input import pipeline\n"
        "before = 'tensorflow' in sys.modules\n"
        "from segjax.runtime.lazy_imports import tf\n"
        "n = int(tf.data.Dataset.range(3).reduce(tf.constant(0, tf.int64), lambda a, b: a + b))\n"
        "print(before, 'tensorflow' in sys.modules, n,"
        " tf.config.get_visible_devices('GPU') == [], tf.get_logger().level)\n"
    )
    assert out.split()[-5:] == ["False", "True", "3", "True", "40"]  # 40 = logging.ERROR
