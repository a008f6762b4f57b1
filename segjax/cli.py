"""What the command-line tools share: flag parsing with one-line errors, workdir checks,
runtime setup (quiet TensorFlow, multi-process start-up)."""

import contextlib
import os
import sys

from absl import flags

from segjax.logs import fail

__all__ = ["fail", "parse_flags", "require_config", "require_workdir", "setup_runtime"]


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns any flag or config error into one line on stderr."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(_one_line(e))
    except Exception as e:  # config files raise their own errors while being loaded
        fail(f"{type(e).__name__}: {_one_line(e)}")
    return []


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def require_config(config, flag: str):
    """The loaded config, or a clear error when the flag was not given."""
    if config is None:
        fail(f"{flag} is required (e.g. {flag} configs/quickstart.py)")
    try:  # ml_collections defers a config file's load error to the first attribute access
        config.keys()
    except Exception as e:
        fail(f"{flag}: {type(e).__name__}: {_one_line(e)}")
    return config


def require_workdir(workdir: str | None) -> str:
    """Creates ``workdir`` if needed and checks it is writable; exits with one line if not."""
    if not workdir:
        fail("--workdir is required")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        fail(f"workdir {workdir} is not writable: {e.strerror or e}")
    return workdir


def configure_host_devices(config, num_processes: int = 0) -> None:
    """Splits a CPU host into per-core devices (``config.host_devices``) before JAX starts."""
    from segjax import sharding

    env = os.environ
    num_processes = num_processes or int(
        env.get("SEGJAX_NUM_PROCESSES") or env.get("SLURM_NTASKS") or 1
    )
    with clean_errors():
        sharding.configure_host_devices(config, num_processes)


def setup_runtime(coordinator: str = "", num_processes: int = 0, process_id: int = -1) -> None:
    """Keeps TensorFlow (used for tf.data only) off accelerators and starts multi-process JAX."""
    import tensorflow as tf
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    tf.config.set_visible_devices([], "GPU")
    tf.get_logger().setLevel("ERROR")
    from segjax import sharding

    sharding.maybe_initialize_distributed(coordinator, num_processes, process_id)


@contextlib.contextmanager
def clean_errors():
    """Reports expected user errors (bad config value, missing file, bad data) in one line."""
    import tensorflow as tf

    from segjax.trainer import NonFiniteError

    try:
        yield
    except (ValueError, KeyError, FileNotFoundError, NonFiniteError) as e:
        if os.environ.get("SEGJAX_TRACEBACK"):
            raise
        fail(f"{type(e).__name__}: {_one_line(e)}  (set SEGJAX_TRACEBACK=1 for the traceback)")
    except tf.errors.InvalidArgumentError as e:
        if os.environ.get("SEGJAX_TRACEBACK"):
            raise
        fail(f"bad input data: {_one_line(e.message)}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
