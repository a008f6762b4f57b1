"""One process of a multi-process training check (started by tests/test_multiprocess.py).

Every process builds the same tiny model, feeds its own rows of a deterministic global batch
and prints the losses of 5 steps as JSON. Run with 1 process × 8 devices or N processes ×
(8 / N) devices; the losses must agree.
"""

import json
import os
import sys

num_processes, process_id, port, local_devices = (int(a) for a in sys.argv[1:5])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if num_processes > 1:
    jax.distributed.initialize(f"localhost:{port}", num_processes, process_id)

import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from segjax import sharding, trainer  # noqa: E402
from segjax.config import base_config  # noqa: E402

config = base_config()
config.model.name = "unet"
config.model.kwargs = ml_collections.ConfigDict({"width": 4, "depth": 1})
config.data.crop_size = (8, 8)
config.optim.name = "adamw"
config.mesh.data, config.mesh.fsdp = 4, 2
config.mesh.min_shard_size = 0
t = trainer.Trainer(config)
state = t.init_state()
losses = []
rows = 16 // num_processes
for step in range(5):
    rng = np.random.default_rng(step)
    images = rng.normal(size=(16, 8, 8, 3)).astype(np.float32)
    masks = rng.integers(0, 4, (16, 8, 8)).astype(np.uint8)
    mine = slice(process_id * rows, (process_id + 1) * rows)
    batch = sharding.host_to_global({"image": images[mine], "mask": masks[mine]}, t.mesh)
    state, metrics = t.train_step(state, batch)
    losses.append(float(metrics["loss"]))
print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "losses": losses}))
