"""Resilience and scale: hard kill and SIGTERM mid-run, interrupted saves, gradient accumulation,
mixed precision, the non-finite guard, and the launch scripts.

The kill/SIGTERM test runs ``python -m segjax.train`` five times; the runs share a persistent
JAX compilation cache, so only the first pays for compilation.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segjax import checkpoint, errors, optim, tasks, trainer
from segjax.config import base_config
from tests.helpers import assert_bitwise_equal

ROOT = pathlib.Path(__file__).parent.parent
LAUNCH = ROOT / "launch"
NUM_STEPS = 100
CHECKPOINT_EVERY = 10
INSTANCE_STEPS = 16
INSTANCE_CHECKPOINT_EVERY = 4
SUBPROCESS_DEVICES = 2  # fewer than this process's 8: reading their checkpoints crosses topologies


def _env(jax_cache):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={SUBPROCESS_DEVICES}"
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(jax_cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=str(ROOT),
    )
    return env


def _train_cmd(workdir, blobs_root, **overrides):
    """``segjax.train`` of the tiny quickstart U-Net on instance-mask cells with everything the
    U-Net recipe adds to a step on: border weight map, elastic deformation, CE + Dice."""
    flags = {
        "model.kwargs.width": 2,
        "model.kwargs.depth": 1,
        "model.num_classes": 2,
        "data.name": "folder",
        "data.root": blobs_root,
        "data.data_dir": os.path.join(blobs_root, "tfds_resilience"),
        "data.train_split": "train",
        "data.eval_split": "val",
        "data.mask_type": "instance",
        "data.weight_map.enabled": True,
        "data.weight_map.sigma": 2.0,
        "data.elastic.enabled": True,
        "data.elastic.sigma": 3.0,
        "data.crop_size": "(8,8)",
        "data.eval_pad_size": "(32,32)",
        "train.loss.dice": 1.0,
        "train.num_steps": NUM_STEPS,
        "train.checkpoint_every": CHECKPOINT_EVERY,
        "train.keep_checkpoints": 10,
        "train.log_every": 1,
        "eval.batch_size": 4,
    }
    flags.update(overrides)
    return _segjax_train("configs/quickstart.py:runlocal", workdir, flags)


def _instance_train_cmd(workdir, data_dir, **overrides):
    """``segjax.train`` of the instance quickstart's tiny Mask R-CNN on ``instance_shapes``."""
    flags = {
        "data.data_dir": data_dir,
        "runtime.conv_impl": "xla",  # compile time; the matmul convolutions are tested elsewhere
        "train.num_steps": INSTANCE_STEPS,
        "train.checkpoint_every": INSTANCE_CHECKPOINT_EVERY,
        "train.keep_checkpoints": 10,
        "train.log_every": 1,
        **overrides,
    }
    return _segjax_train("configs/maskrcnn_quickstart.py:runlocal", workdir, flags)


def _segjax_train(config, workdir, flags: dict) -> list[str]:
    return [
        sys.executable,
        "-m",
        "segjax.train",
        "--config",
        config,
        "--workdir",
        str(workdir),
        *(f"--config.{k}={v}" for k, v in flags.items()),
    ]


class _Run:
    """A ``segjax.train`` subprocess with its output in a file; killed on exit if still alive."""

    def __init__(self, cmd, env, log_path):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._log.close()

    def output(self):
        self._log.flush()
        return pathlib.Path(self.log_path).read_text()

    def wait_for(self, condition, what, timeout=300):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"run ended (code {self.proc.returncode}) before {what}:\n"
                    + self.output()[-3000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} after {timeout}s:\n" + self.output()[-3000:])
            time.sleep(0.005)

    def finish(self, timeout=300):
        code = self.proc.wait(timeout=timeout)
        return code, self.output()


def _finalized_steps(ckpt_dir):
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def _logged_steps(workdir):
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()[: text.count("\n")]  # complete lines only
    return [row["step"] for row in map(json.loads, lines) if "loss" in row]


def _sigterm_after_steps(run, workdir, n):
    """SIGTERM once ``n`` more training steps are logged; returns (resumed, stopped) steps."""
    before = len(_logged_steps(workdir))
    run.wait_for(lambda: len(_logged_steps(workdir)) >= before + n, f"{n} new steps")
    run.proc.send_signal(signal.SIGTERM)
    code, out = run.finish()
    assert code == 0, out[-3000:]
    resumed = int(re.search(r"resumed from \S+ at step (\d+)", out).group(1))
    stopped = int(re.search(r"stopped by SIGTERM at step (\d+)", out).group(1))
    assert resumed < stopped < NUM_STEPS
    return resumed, stopped


@pytest.mark.slow
def test_killed_then_preempted_run_ends_bitwise_equal(blobs_root, tmp_path):
    env = _env(tmp_path / "jax_cache")
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    ckpts = run_dir / "checkpoints"

    # Uninterrupted reference run (it also fills the compilation cache for the runs below).
    with _Run(_train_cmd(ref_dir, blobs_root), env, tmp_path / "ref.log") as ref:
        code, out = ref.finish()
    assert code == 0, out[-3000:]

    # 1. SIGKILL as soon as the first checkpoint is complete: between checkpoints.
    with _Run(_train_cmd(run_dir, blobs_root), env, tmp_path / "killed.log") as run:
        run.wait_for(lambda: (ckpts / str(CHECKPOINT_EVERY)).is_dir(), "first checkpoint")
        run.proc.send_signal(signal.SIGKILL)
        assert run.proc.wait() == -signal.SIGKILL
    kept = _finalized_steps(ckpts)
    assert kept and max(kept) < NUM_STEPS, f"killed too late: checkpoints {kept}"
    assert max(_logged_steps(run_dir)) < NUM_STEPS

    # A save interrupted by a kill leaves a temporary directory; make one for a later step.
    stale = ckpts / f"{NUM_STEPS - CHECKPOINT_EVERY}.orbax-checkpoint-tmp-1795000000000000"
    (stale / "default").mkdir(parents=True)
    (stale / "default" / "partial").write_text("interrupted save")
    assert NUM_STEPS - CHECKPOINT_EVERY > max(kept)

    # 2. Restart: it resumes from the last complete checkpoint, not the stale directory. SIGTERM
    # a few steps later, with a checkpoint due at every step: the preemption save must not
    # collide with the periodic one.
    cmd = _train_cmd(run_dir, blobs_root, **{"train.checkpoint_every": 1})
    with _Run(cmd, env, tmp_path / "sigterm1.log") as run:
        resumed, stopped = _sigterm_after_steps(run, run_dir, 3)
    assert resumed == max(kept)
    assert max(_finalized_steps(ckpts)) == stopped
    assert not stale.exists(), "stale temporary checkpoint directory was not cleaned"
    assert not [p.name for p in ckpts.iterdir() if "tmp" in p.name]

    # 3. Restart (periodic checkpoints every 10 steps again) and SIGTERM: a checkpoint at the
    # current step, past the last periodic one.
    with _Run(_train_cmd(run_dir, blobs_root), env, tmp_path / "sigterm2.log") as run:
        resumed2, stopped2 = _sigterm_after_steps(run, run_dir, 3)
    assert resumed2 == stopped
    assert max(_finalized_steps(ckpts)) == stopped2

    # 4. Restart with the same command; it finishes from the SIGTERM checkpoint.
    with _Run(_train_cmd(run_dir, blobs_root), env, tmp_path / "final.log") as run:
        code, out = run.finish()
    assert code == 0, out[-3000:]
    assert int(re.search(r"resumed from \S+ at step (\d+)", out).group(1)) == stopped2

    # Parameters, BatchNorm statistics, optimiser state and counters: the same bits as the
    # uninterrupted run (the data order and the dropout RNG are functions of seed and step).
    _assert_same_end(run_dir, ref_dir, NUM_STEPS, ("miou", "object_tp", "object_fp", "object_fn"))


def _assert_same_end(run_dir, ref_dir, steps: int, eval_keys) -> None:
    """The last checkpoints of both runs are bitwise equal, and so are their final
    evaluations' ``eval_keys``."""
    final = checkpoint.read_weights(str(run_dir / f"checkpoints/{steps}/default"))
    expected = checkpoint.read_weights(str(ref_dir / f"checkpoints/{steps}/default"))
    assert int(final["step"]) == steps
    assert_bitwise_equal(final, expected)
    evals = [
        [json.loads(line) for line in open(d / "metrics.jsonl") if '"split"' in line][-1]
        for d in (run_dir, ref_dir)
    ]
    for key in eval_keys:
        assert evals[0][key] == evals[1][key], key


@pytest.mark.slow
def test_killed_instance_run_resumes_bitwise(instance_shapes_data_dir, tmp_path):
    """Mask R-CNN through the same trainer: SIGKILL after the first checkpoint, restart, and
    the run ends with the uninterrupted run's bits (the anchor and RoI sampling keys, like the
    data order, are functions of seed and step) and its COCO statistics."""
    env = _env(tmp_path / "jax_cache")
    ref_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    ckpts = run_dir / "checkpoints"
    cmd = _instance_train_cmd(ref_dir, instance_shapes_data_dir)
    with _Run(cmd, env, tmp_path / "ref.log") as ref:
        code, out = ref.finish()
    assert code == 0, out[-3000:]

    cmd = _instance_train_cmd(run_dir, instance_shapes_data_dir)
    with _Run(cmd, env, tmp_path / "killed.log") as run:
        run.wait_for(lambda: (ckpts / str(INSTANCE_CHECKPOINT_EVERY)).is_dir(), "first checkpoint")
        run.proc.send_signal(signal.SIGKILL)
        assert run.proc.wait() == -signal.SIGKILL
    kept = _finalized_steps(ckpts)
    assert kept and max(kept) < INSTANCE_STEPS, f"killed too late: checkpoints {kept}"

    with _Run(cmd, env, tmp_path / "resumed.log") as run:
        code, out = run.finish()
    assert code == 0, out[-3000:]
    assert int(re.search(r"resumed from \S+ at step (\d+)", out).group(1)) == max(kept)

    _assert_same_end(run_dir, ref_dir, INSTANCE_STEPS, ("segm/AP", "bbox/AP", "segm/AR100"))


def test_infinite_learning_rate_stops_without_writing_nan_params(tiny_config, tmp_path, capsys):
    """NaN injection through the config: the gradients are finite but every update is not. The
    first 3 are skipped (as allowed), then the run stops naming the step window; no checkpoint
    holds a NaN."""
    config = tiny_config
    config.model.kwargs = ml_collections.ConfigDict({"width": 2, "depth": 1})
    config.data.crop_size = (8, 8)
    config.optim.lr = float("inf")
    config.train.update(
        num_steps=10, max_nonfinite_skips=3, log_every=2, checkpoint_every=1, keep_checkpoints=10
    )
    with pytest.raises(errors.NonFiniteError, match=r"in steps 3\.\.4 \(4 skipped updates"):
        trainer.run(config, str(tmp_path))
    assert "skipped 2 non-finite update(s) in steps 1..2" in capsys.readouterr().out
    steps = _finalized_steps(tmp_path / "checkpoints")
    assert steps == [1, 2, 3]  # the error comes at the log step, before step 4 is saved
    saved = [checkpoint.read_weights(str(tmp_path / f"checkpoints/{s}/default")) for s in steps]
    for state in saved:
        chex.assert_tree_all_finite(state["params"])
        # Every update was skipped: the parameters are still the initial ones.
        assert_bitwise_equal(state["params"], saved[0]["params"])
    assert [int(state["nonfinite"]) for state in saved] == steps


def _dense_config(**train):
    """A U-Net without BatchNorm or dropout, so micro-batches see exactly the full-batch math."""
    config = base_config()
    config.model.name = "unet_original"
    config.model.kwargs = ml_collections.ConfigDict(
        {"width": 2, "depth": 1, "mirror_pad": True, "dropout_rate": 0.0}
    )
    config.data.crop_size = (8, 8)
    config.optim.name = "sgd"
    config.optim.lr = 0.5
    config.optim.schedule = "constant"
    config.optim.weight_decay = 0.0
    config.train.update(train)
    return config


def _batch(config, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    h, w = config.data.crop_size
    return {
        "image": rng.normal(size=(batch, h, w, 3)).astype(np.float32),
        "mask": rng.integers(0, config.model.num_classes, (batch, h, w)).astype(np.uint8),
    }


def _one_step(config, batch):
    """``(state, state after one jitted train step, metrics)``. The variables are random
    NumPy values of the model's shapes: compiling the model's RNG-heavy init would cost more
    than everything else here."""
    model = tasks.create_model(config)
    tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
    shapes = jax.eval_shape(trainer.make_init_fn(model, tx, config), jax.random.key(0))
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes.params)
    stats = jax.tree_util.tree_map_with_path(
        lambda p, s: np.full(s.shape, "var" in jax.tree_util.keystr(p), s.dtype),
        shapes.batch_stats,
    )
    state = trainer.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state=tx.init(params),
        nonfinite=jnp.zeros((), jnp.int32),
    )
    step = jax.jit(trainer.make_train_step(model, tx, schedule, config))
    new_state, metrics = step(state, batch)
    return state, new_state, metrics


def test_gradient_accumulation_matches_full_batch():
    batch = _batch(_dense_config())
    init, full, full_metrics = _one_step(_dense_config(grad_accum_steps=1), batch)
    _, accum, accum_metrics = _one_step(_dense_config(grad_accum_steps=2), batch)
    # The step is not trivial: every parameter moved.
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), init.params, full.params)
    assert all(jax.tree.leaves(moved))
    chex.assert_trees_all_close(accum.params, full.params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(accum_metrics["loss"], full_metrics["loss"], rtol=1e-6)
    np.testing.assert_allclose(accum_metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-5)
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps=3"):
        _one_step(_dense_config(grad_accum_steps=3), batch)


def test_bfloat16_compute_keeps_float32_state_and_outputs():
    config = base_config()
    config.model.name = "unet"
    config.model.kwargs = ml_collections.ConfigDict({"width": 2, "depth": 1})
    config.data.crop_size = (8, 8)
    config.optim.name = "adamw"
    config.dtype = "bfloat16"
    batch = _batch(config)
    _, state, metrics = _one_step(config, batch)
    floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats), {x.dtype for x in floats}
    assert state.batch_stats and all(
        x.dtype == jnp.float32 for x in jax.tree.leaves(state.batch_stats)
    )
    assert metrics["loss"].dtype == jnp.float32 and metrics["grad_norm"].dtype == jnp.float32
    chex.assert_tree_all_finite((state.params, metrics))

    model = tasks.create_model(config)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    apply = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))
    outputs, inter = apply(variables, batch["image"])
    assert outputs["out"].dtype == jnp.float32
    flat = jax.tree_util.tree_flatten_with_path(inter["intermediates"])[0]
    names = [(jax.tree_util.keystr(p), x.dtype) for p, x in flat]
    convs = {name: dtype for name, dtype in names if "'conv'" in name or "upconv" in name}
    assert len(convs) >= 5 and set(convs.values()) == {jnp.dtype(jnp.bfloat16)}, convs
    # The bfloat16 logits are close to the float32 model's on the same variables.
    config.dtype = "float32"
    reference = jax.jit(tasks.create_model(config).apply)(variables, batch["image"])["out"]
    np.testing.assert_allclose(outputs["out"], reference, atol=0.1)


def _launch(env_extra, *args, timeout=120):
    env = dict(os.environ, PYTHON=sys.executable, **env_extra)
    return subprocess.run(
        ["bash", str(LAUNCH / "local_multiprocess.sh"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_local_multiprocess_script_forms_one_job(tmp_path):
    env = {
        "NUM_PROCESSES": "2",
        "DEVICES_PER_PROCESS": "2",
        "LOG_DIR": str(tmp_path / "logs"),
        "SEGJAX_MODULE": "tests.launch_worker",
    }
    proc = _launch(env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads(proc.stdout.strip().splitlines()[-1])]
    seen.append(json.loads((tmp_path / "logs" / "process_1.log").read_text().splitlines()[-1]))
    assert [s["process"] for s in seen] == [0, 1]
    for s in seen:
        assert s["distributed"] and s["processes"] == 2
        assert s["local_devices"] == 2 and s["devices"] == 4
        assert s["total"] == 2 * 1 + 2 * 2  # every device of both processes took part

    # One process failing stops the others and makes the script fail with its code.
    t0 = time.monotonic()
    proc = _launch(dict(env, LOG_DIR=str(tmp_path / "logs2")), "--fail_process=1")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "process 1 exited with code 3" in proc.stderr
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("script", ["local_multiprocess.sh", "slurm.sh", "tpu_pod.sh"])
def test_launch_scripts_are_valid_bash(script):
    path = LAUNCH / script
    assert path.is_file() and os.access(path, os.X_OK), f"{path} missing or not executable"
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        proc = subprocess.run([shellcheck, str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout
