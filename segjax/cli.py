"""What the command-line tools share: their flag groups, option parsing, one-line errors,
workdir checks and runtime setup (quiet TensorFlow/TFDS, multi-process start-up, the persistent
compilation cache).

Flag groups are defined once per process (the ``define_*`` functions are cached), so the tools
can be imported side by side; each tool takes the groups it needs at import time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile
import types

import ml_collections
import tensorflow_datasets as tfds
from absl import app, flags, logging
from ml_collections import config_flags

from segjax import checkpoint, errors, sharding
from segjax.evaluation import inference
from segjax.logs import fail
from segjax.runtime import compile_cache, host_devices
from segjax.runtime.lazy_imports import tf

__all__ = [
    "clean_errors",
    "configure_host_devices",
    "define_checkpoint_flags",
    "define_inference_flags",
    "define_multiprocess_flags",
    "define_run_flags",
    "fail",
    "load_model",
    "parse_flags",
    "require_config",
    "require_workdir",
    "run_tool",
    "setup_runtime",
]


@functools.cache
def define_run_flags() -> types.SimpleNamespace:
    """``--config`` (a config file, optionally ``file.py:arg``; locked, so a misspelt override
    is an error) and ``--workdir``."""
    return types.SimpleNamespace(
        config=config_flags.DEFINE_config_file(
            "config", None, "Path to a config file (optionally file.py:arg).", lock_config=True
        ),
        workdir=flags.DEFINE_string("workdir", None, "Run directory (checkpoints/, logs)."),
    )


@functools.cache
def define_checkpoint_flags() -> types.SimpleNamespace:
    """``--checkpoint`` (instead of the workdir's), ``--step`` and ``--output``."""
    return types.SimpleNamespace(
        checkpoint=flags.DEFINE_string(
            "checkpoint",
            None,
            "A checkpoints/ directory or a variables checkpoint (default: the workdir's).",
        ),
        step=flags.DEFINE_integer("step", None, "Checkpoint step (default: latest)."),
        output=flags.DEFINE_string("output", None, "Output directory."),
    )


@functools.cache
def define_inference_flags() -> types.SimpleNamespace:
    """How to predict (:class:`segjax.evaluation.inference.InferenceOptions`): mode,
    sliding-window and overlap-tile geometry, test-time scales and flip, CRF."""
    return types.SimpleNamespace(
        mode=flags.DEFINE_enum("mode", "whole", list(inference.MODES), "Inference strategy."),
        crop=flags.DEFINE_list("crop", None, "Sliding-window crop h,w (default: data.crop_size)."),
        stride=flags.DEFINE_list("stride", None, "Sliding-window stride h,w (default: 2/3 crop)."),
        tile_batch=flags.DEFINE_integer("tile_batch", 4, "Tile positions per model call."),
        tile_size=flags.DEFINE_integer("tile_size", 388, "Overlap-tile output side (tile mode)."),
        scales=flags.DEFINE_string("scales", "1.0", "Comma-separated test-time scales."),
        flip=flags.DEFINE_bool("flip", False, "Add horizontally flipped predictions."),
        crf=flags.DEFINE_bool("crf", False, "Refine with the dense CRF (segjax.evaluation.crf)."),
    )


@functools.cache
def define_multiprocess_flags() -> types.SimpleNamespace:
    """Multi-process start-up: coordinator address, number of processes, this process's index."""
    return types.SimpleNamespace(
        coordinator=flags.DEFINE_string(
            "coordinator_address", "", "Multi-process: address of process 0 (host:port)."
        ),
        num_processes=flags.DEFINE_integer(
            "num_processes", 0, "Multi-process: number of processes."
        ),
        process_id=flags.DEFINE_integer("process_id", -1, "Multi-process: index of this process."),
    )


def load_model(config: ml_collections.ConfigDict, f) -> checkpoint.InferenceModel:
    """The model of ``--config`` restored from ``--checkpoint`` or the ``--workdir``'s latest
    (or ``--step``) checkpoint (:func:`segjax.checkpoint.load_for_inference`); ``f`` holds the
    run and checkpoint flags."""
    return checkpoint.load_for_inference(
        config, workdir=f.workdir.value, checkpoint_dir=f.checkpoint.value, step=f.step.value
    )


def run_tool(main) -> None:
    """``absl.app.run(main)`` with :func:`parse_flags` (one-line flag and config errors).

    The process runs as it was started: glibc's huge-page tunable, which makes XLA:CPU's step
    faster, is the launcher's to set (``launch/*.sh``, docs/SCALING.md)."""
    app.run(main, flags_parser=parse_flags)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns any flag or config error into one line on stderr.

    Flags and config files are the user's, so whatever they raise while being parsed is a user
    error, whatever its type; ``SEGJAX_TRACEBACK=1`` shows its traceback instead (a config
    file is code: its bug may need one).
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _raise_if_traceback_wanted()
        fail(_one_line(e))
    except (AttributeError, KeyError) as e:  # a misspelt --config.x override
        _raise_if_traceback_wanted()
        fail(_unknown_override(argv, e))
    except Exception as e:  # config files raise their own errors while being loaded
        _raise_if_traceback_wanted()
        fail(f"{type(e).__name__}: {_one_line(e)}")
    return []


def _raise_if_traceback_wanted() -> None:
    """Re-raises the exception being handled when ``SEGJAX_TRACEBACK`` is set."""
    if os.environ.get("SEGJAX_TRACEBACK"):
        raise  # noqa: PLE0704 - called from an except block: re-raises what it handles


def _unknown_override(argv: list[str], error: BaseException) -> str:
    """``--config.train.num_stepz: no config key 'num_stepz'; did you mean 'num_steps'?``"""
    # ml_collections nests the key's repr in the message (quotes and "\n" escaped once more).
    text = str(error).replace("\\n", " ").replace("\\", "")
    key_match = re.search(r"'(\w+)'", text)
    key = key_match.group(1) if key_match else text
    given = next(
        (a.split("=", 1)[0] for a in argv if a.startswith("--config.") and key in a), "--config"
    )
    suggestion = re.search(r'Did you mean "(\w+)"', text)
    out = f"{given}: no config key {key!r}"
    return out + (f"; did you mean {suggestion.group(1)!r}?" if suggestion else "")


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def require_config(config, flag: str = "--config"):
    """The loaded config, or a clear error when the flag was not given."""
    if config is None:
        fail(f"{flag} is required (e.g. {flag} configs/quickstart.py)")
    try:  # ml_collections defers a config file's load error to the first attribute access
        config.keys()
    except Exception as e:  # the config file is the user's: any error in it is theirs
        _raise_if_traceback_wanted()
        fail(f"{flag}: {type(e).__name__}: {_one_line(e)}")
    return config


def require_no_arguments(argv: list[str]) -> None:
    """Exits with one line when positional arguments follow the flags of a tool taking none."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")


def require_checkpoint_source(f) -> None:
    """Exits with one line unless ``--workdir`` or ``--checkpoint`` says what to restore."""
    if not f.workdir.value and not f.checkpoint.value:
        fail("give --workdir (its checkpoints/) or --checkpoint DIR")


def require_output(f, default: str | None = None) -> str:
    """The writable ``--output`` directory (or ``default``); exits with one line if none."""
    output = f.output.value or default
    if not output:
        fail(
            "--output is required"
            + (" with --checkpoint and no --workdir" if f.checkpoint.value else "")
        )
    return require_workdir(output, "--output")


def require_workdir(workdir: str | None, flag: str = "--workdir") -> str:
    """Creates ``workdir`` if needed and checks it is writable; exits with one line if not."""
    if not workdir:
        fail(f"{flag} is required")
    workdir = os.path.abspath(os.path.expanduser(workdir))
    try:
        os.makedirs(workdir, exist_ok=True)
        # A probe of its own per process: the processes of a multi-host job check the same
        # shared workdir at the same time.
        fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=workdir)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        fail(f"{flag} {workdir} is not writable: {e.strerror or e}")
    return workdir


def configure_host_devices(config, num_processes: int = 0) -> None:
    """Splits a CPU host into per-core devices (``config.runtime.host_devices``,
    :mod:`segjax.runtime.host_devices`) before JAX starts."""
    env = os.environ
    num_processes = num_processes or int(
        env.get("SEGJAX_NUM_PROCESSES") or env.get("SLURM_NTASKS") or 1
    )
    with clean_errors():
        host_devices.configure_host_devices(config, num_processes)


def setup_runtime(
    coordinator: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    config: ml_collections.ConfigDict | None = None,
) -> str | None:
    """Silences TFDS's progress bars (segjax prints its own progress line; TensorFlow is set up
    for tf.data when it loads, :mod:`segjax.runtime.lazy_imports`), starts multi-process JAX and
    turns on the persistent compilation cache (:func:`segjax.runtime.compile_cache.setup`) for
    ``config`` — by default the ``--config`` flag's, when the tool has one. Call it before
    anything compiles.

    Returns:
      The compilation cache directory, or None when the cache is off.
    """
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    tfds.disable_progress_bar()
    sharding.maybe_initialize_distributed(coordinator, num_processes, process_id)
    if config is None and "config" in flags.FLAGS:
        config = flags.FLAGS["config"].value
    with clean_errors():
        return compile_cache.setup(config)


@contextlib.contextmanager
def clean_errors():
    """Reports user errors — segjax's own types (:mod:`segjax.errors`: a bad config value, a
    missing file, bad data) — in one line naming the culprit, and exits with status 2
    (:func:`segjax.logs.fail`). Any other exception is a bug (in segjax or a library) and
    propagates with its traceback, whatever its type (a ``ValueError`` too).

    ``SEGJAX_TRACEBACK=1`` shows the traceback of user errors as well.
    """
    try:
        yield
    except errors.SegjaxError as e:
        if os.environ.get("SEGJAX_TRACEBACK"):
            raise
        fail(f"{type(e).__name__}: {_one_line(e)}  (set SEGJAX_TRACEBACK=1 for the traceback)")
    except tf.errors.InvalidArgumentError as e:
        # Raised while tf.data runs: the input pipeline's checks of each example
        # (tf.debugging.Assert in segjax.input: a mask id out of range, too many instances,
        # an image larger than the pad size …) and TensorFlow's decoders (a corrupt image)
        # report bad data this way; segjax's own graph-building bugs surface at trace time.
        if os.environ.get("SEGJAX_TRACEBACK"):
            raise
        fail(f"bad input data: {_one_line(e.message)}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
