"""Stand-in for ``segjax.train`` in tests/test_resilience.py (run with ``SEGJAX_MODULE``).

Started by launch/local_multiprocess.sh, it joins the multi-process job exactly as
``segjax.train`` does (:func:`segjax.sharding.maybe_initialize_distributed` reading the
``SEGJAX_*`` variables the script sets), sums ``process_index + 1`` over every device of the
job and prints what it saw as JSON. ``--fail_process=I`` makes process I exit with code 3 before
joining (the others then block until the script stops them).
"""

import json
import os
import sys

fail = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--fail_process=")]
if fail and int(fail[0]) == int(os.environ.get("SEGJAX_PROCESS_ID", "0")):
    sys.exit(3)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from segjax import sharding  # noqa: E402

started = sharding.maybe_initialize_distributed()
mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
local = np.full((jax.local_device_count(),), jax.process_index() + 1, np.float32)
x = jax.make_array_from_process_local_data(sharding.batch_sharding(mesh), local)
total = jax.jit(jnp.sum, out_shardings=sharding.replicated(mesh))(x)
print(
    json.dumps(
        {
            "distributed": started,
            "process": jax.process_index(),
            "processes": jax.process_count(),
            "local_devices": jax.local_device_count(),
            "devices": jax.device_count(),
            "total": float(total),
        }
    ),
    flush=True,
)
