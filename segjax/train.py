"""Train a segmentation model.

    python -m segjax.train --config configs/quickstart.py --workdir /tmp/run [--config.x=…]

Re-running the same command resumes from the latest checkpoint in the workdir.
"""

import types

from segjax import cli, trainer

_FLAGS = types.SimpleNamespace(
    **vars(cli.define_run_flags()), **vars(cli.define_multiprocess_flags())
)


def main(argv):
    """``python -m segjax.train``: see the module docstring."""
    f = _FLAGS
    cli.require_no_arguments(argv)
    config = cli.require_config(f.config.value)
    workdir = cli.require_workdir(f.workdir.value)
    cli.configure_host_devices(config, f.num_processes.value)
    cli.setup_runtime(f.coordinator.value, f.num_processes.value, f.process_id.value)
    with cli.clean_errors():
        trainer.run(config, workdir)


if __name__ == "__main__":
    cli.run_tool(main)
