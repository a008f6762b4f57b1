"""Train a segmentation model.

    python -m segjax.train --config configs/quickstart.py --workdir /tmp/run [--config.x=…]

Re-running the same command resumes from the latest checkpoint in the workdir.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (optionally file.py:arg).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "Multi-process: address of process 0 (host:port)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-process: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-process: index of this process.")


def main(argv):
    from segjax import cli

    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.require_config(_CONFIG.value, "--config")
    workdir = cli.require_workdir(_WORKDIR.value)
    cli.configure_host_devices(config, _NUM_PROCESSES.value)
    cli.setup_runtime(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from segjax import trainer

    with cli.clean_errors():
        trainer.run(config, workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=lambda argv: __import__("segjax.cli").cli.parse_flags(argv))
