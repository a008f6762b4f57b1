"""Train a config for a few steps in a fresh workdir and print a digest of its parameters.

    python tools/params_digest.py --config configs/quickstart.py --steps 12

For refactors that must not change behaviour: run it before and after on the same machine
(XLA's CPU code generation differs between host CPUs, so digests are only comparable on one
host) and compare the printed SHA-256 of every parameter and BatchNorm statistic, in tree order.
"""

import argparse
import hashlib
import importlib.util
import os
import sys
import tempfile

import jax
import numpy as np


def digest(tree) -> str:
    """SHA-256 over the bytes of every leaf of ``tree``, with its path, in tree order."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart.py")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    path, _, arg = args.config.partition(":")
    spec = importlib.util.spec_from_file_location("config_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    config.train.num_steps = args.steps
    config.train.eval_every = 0
    config.train.checkpoint_every = args.steps
    from segjax import checkpoint, trainer

    with tempfile.TemporaryDirectory() as workdir:
        trainer.run(config, workdir)
        restored = checkpoint.load_for_inference(config, workdir=workdir)
        print(f"step {restored.step} params+batch_stats sha256 {digest(restored.variables)}")
    sys.stdout.flush()
    os._exit(0)  # the digest is printed: no need to wait for TF's and Orbax's thread teardown


if __name__ == "__main__":
    main()
