"""segjax: semantic and instance segmentation in JAX/Flax."""

import os

# TensorFlow runs only the input pipeline. Its oneDNN custom kernels are chosen by CPU model, so
# with them on, hosts of one job with different CPUs could augment the same example to
# different bits, and TF 2.21 prints their banner to stderr even at TF_CPP_MIN_LOG_LEVEL=3 on
# CPUs that have them. Off unless the user set it (it takes effect before TF is imported).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Its C++ INFO/WARNING logs: off unless the user set them, before any command or module loads
# TF (the command-line tools set this themselves before).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

__version__ = "0.1.0"
