"""segjax.runtime.compile_cache: JAX's persistent compilation cache, on by default for every
command.

Processes that should use a cache are subprocesses with a temporary cache directory, so this
session's JAX (and the user's home) is never touched: a cold process writes one entry per
compiled step variant; a second process on the same program loads them (cache hits, bitwise
the same results, less compile time); a changed ``conv_impl`` or ``cpu_scheduler`` is a new
entry, not a reuse; ``off`` writes nothing; the environment, config and default directories
are honoured; ``segjax.cli.setup_runtime`` takes the ``--config`` flag's block.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache

from segjax.runtime import compile_cache

ROOT = pathlib.Path(__file__).parent.parent
VARIANTS = [("gemm", "memory"), ("xla", "memory"), ("gemm", "concurrency")]

# Compiles a small conv net's loss and gradients through segjax.runtime.jit for each variant of
# the spec, after the spec's environment changes and compile_cache.setup; prints JSON.
_STEP_CHILD = r"""
import hashlib, json, os, sys, time, types
import flax.linen as nn, jax, jax.numpy as jnp, ml_collections, numpy as np
from segjax import runtime
from segjax.runtime import compile_cache

class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3))(x))
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(16, (3, 3), kernel_dilation=2)(x))
        return nn.Conv(3, (1, 1))(x)

def loss_and_grads(variables, images):
    return jax.value_and_grad(lambda v: jnp.mean(Net().apply(v, images) ** 2))(variables)

def numpy_variables(rng):  # numpy, not Net().init: nothing compiles but the measured step
    shapes = {"Conv_0": (3, 3, 3, 8), "Conv_1": (3, 3, 8, 16), "Conv_2": (3, 3, 16, 16),
              "Conv_3": (1, 1, 16, 3)}
    return {"params": {name: {"kernel": jnp.asarray(rng.normal(0, 0.3, s).astype(np.float32)),
                              "bias": jnp.asarray(np.full(s[-1], 0.1, np.float32))}
                       for name, s in shapes.items()}}

spec = json.loads(sys.argv[1])
results = []
for i, step in enumerate(spec["steps"]):
    for name, value in step.get("env", {}).items():
        os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)
    directory = compile_cache.setup(
        ml_collections.ConfigDict({"compile_cache": dict(compile_cache.DEFAULT_SETTINGS,
                                                         **step.get("settings", {}))}))
    rng = np.random.default_rng(0)
    size = 16 + 4 * step.get("shape_index", 0)
    images = jnp.asarray(rng.normal(size=(2, size, size, 3)).astype(np.float32))
    variables = numpy_variables(rng)
    for conv_impl, cpu_scheduler in step["variants"]:
        options = types.SimpleNamespace(conv_impl=conv_impl, cpu_scheduler=cpu_scheduler)
        with compile_cache.record() as seen:
            compiled = runtime.jit(loss_and_grads, options).lower(variables, images).compile()
        out = jax.tree.leaves(jax.block_until_ready(compiled(variables, images)))
        digest = hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in out)).hexdigest()
        results.append({"dir": directory, "hits": seen.hits, "writes": seen.writes,
                        "compile_secs": seen.compile_secs, "digest": digest})
print(json.dumps(results))
"""

# segjax.cli.setup_runtime with the --config flag of a tool, then with SEGJAX_COMPILE_CACHE=off.
_CLI_CHILD = r"""
import json, os, sys
import jax
from segjax import cli, config
from segjax.runtime import compile_cache

cli.define_run_flags()

def main(argv):
    out = {"defaults": config.base_config().runtime.compile_cache.to_dict()}
    out["returned"] = cli.setup_runtime()
    out["jax_dir"] = jax.config.jax_compilation_cache_dir
    os.environ[compile_cache.ENV_VAR] = "off"
    out["returned_off"] = cli.setup_runtime()
    out["enabled_off"] = jax.config.jax_enable_compilation_cache
    print(json.dumps(out))

sys.argv = ["tool", "--config", sys.argv[1], "--config.runtime.compile_cache.dir=" + sys.argv[2]]
cli.run_tool(main)
"""


def _child_env(**changes) -> dict:
    """This environment without any compile-cache setting, one CPU device, plus ``changes``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (compile_cache.ENV_VAR, "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")
    }
    env.update(XLA_FLAGS="", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **changes)
    return env


def _run(code: str, *args: str, env: dict) -> object:
    """Runs ``python -c code args``; returns the JSON of its last stdout line."""
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _entries(directory: pathlib.Path) -> list[str]:
    """The child's step executables in a JAX cache directory (``<module>-<hash>-cache``; the
    small jits around the step, such as the placement of its inputs, have their own)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.glob("jit_loss_and_grads-*-cache"))


def test_second_process_loads_every_variant_bitwise(tmp_path):
    cache = tmp_path / "cache"
    spec = json.dumps(
        {"steps": [{"env": {compile_cache.ENV_VAR: str(cache)}, "variants": VARIANTS}]}
    )
    cold = _run(_STEP_CHILD, spec, env=_child_env())
    cold_entries = _entries(cache)
    # One entry per variant: a changed conv_impl (another program) or cpu_scheduler (another
    # compile option) is a miss, never a reuse of the first variant's executable.
    assert [r["hits"] for r in cold] == [0, 0, 0]
    assert [r["writes"] for r in cold] == [1, 1, 1]
    assert len(cold_entries) == 3
    assert all(r["dir"] == str(cache) for r in cold)

    warm = _run(_STEP_CHILD, spec, env=_child_env())
    assert [r["hits"] for r in warm] == [1, 1, 1]
    assert [r["writes"] for r in warm] == [0, 0, 0]
    assert _entries(cache) == cold_entries
    assert [r["digest"] for r in warm] == [r["digest"] for r in cold]
    cold_secs = sum(r["compile_secs"] for r in cold)
    warm_secs = sum(r["compile_secs"] for r in warm)
    assert warm_secs < 0.5 * cold_secs, (cold_secs, warm_secs)


def test_off_writes_nothing_and_each_setting_picks_its_directory(tmp_path):
    config_dir, env_dir, jax_dir = tmp_path / "config", tmp_path / "env", tmp_path / "jax_env"
    xdg = tmp_path / "xdg"
    variant = [VARIANTS[0]]
    steps = [
        # off wins over the config's directory and over JAX's own environment variable
        {"env": {compile_cache.ENV_VAR: "off"}, "settings": {"dir": str(config_dir)}},
        {"env": {compile_cache.ENV_VAR: None}, "settings": {"enabled": False}},
        {"env": {compile_cache.ENV_VAR: str(env_dir)}, "settings": {"dir": str(config_dir)}},
        {"env": {compile_cache.ENV_VAR: None}, "settings": {"dir": str(config_dir)}},
        {"env": {"JAX_COMPILATION_CACHE_DIR": None}},  # the default: $XDG_CACHE_HOME/segjax/jax
    ]
    for i, step in enumerate(steps):
        step.update(variants=variant, shape_index=i)  # a new shape: no in-memory reuse
    results = _run(
        _STEP_CHILD,
        json.dumps({"steps": steps}),
        env=_child_env(XDG_CACHE_HOME=str(xdg), JAX_COMPILATION_CACHE_DIR=str(jax_dir)),
    )
    default = xdg / "segjax" / "jax"
    assert [r["dir"] for r in results] == [None, None, str(env_dir), str(config_dir), str(default)]
    assert [r["writes"] for r in results] == [0, 0, 1, 1, 1]
    assert not jax_dir.exists()
    assert len(_entries(env_dir)) == len(_entries(config_dir)) == len(_entries(default)) == 1


def test_setup_runtime_takes_the_config_flag(tmp_path):
    flag_dir = tmp_path / "from_flag"
    out = _run(_CLI_CHILD, str(ROOT / "configs" / "quickstart.py"), str(flag_dir), env=_child_env())
    assert out["defaults"] == compile_cache.DEFAULT_SETTINGS  # segjax.config agrees
    assert out["returned"] == out["jax_dir"] == str(flag_dir)
    assert out["returned_off"] is None and out["enabled_off"] is False


_DIR_SETTING = "config.runtime.compile_cache.dir"


@pytest.mark.parametrize(
    "env, settings, expected, source",
    [
        ({}, {}, "XDG/segjax/jax", "default"),
        ({"SEGJAX_COMPILE_CACHE": "OFF"}, {"dir": "/c"}, None, "SEGJAX_COMPILE_CACHE"),
        ({"SEGJAX_COMPILE_CACHE": "0"}, {}, None, "SEGJAX_COMPILE_CACHE"),
        ({"SEGJAX_COMPILE_CACHE": "/e"}, {"enabled": False}, "/e", "SEGJAX_COMPILE_CACHE"),
        ({"SEGJAX_COMPILE_CACHE": "on"}, {"enabled": False, "dir": "/c"}, "/c", "config"),
        ({}, {"enabled": False, "dir": "/c"}, None, "config.runtime.compile_cache.enabled"),
        ({"JAX_COMPILATION_CACHE_DIR": "/j"}, {"dir": "/c"}, "/c", _DIR_SETTING),
        ({"JAX_COMPILATION_CACHE_DIR": "/j"}, {}, "/j", "JAX_COMPILATION_CACHE_DIR"),
        ({}, {"dir": "rel/dir"}, "CWD/rel/dir", _DIR_SETTING),
    ],
)
def test_resolve_order(tmp_path, monkeypatch, env, settings, expected, source):
    monkeypatch.chdir(tmp_path)
    environ = {"XDG_CACHE_HOME": str(tmp_path / "XDG"), **env}
    chosen = compile_cache.resolve(dict(compile_cache.DEFAULT_SETTINGS, **settings), environ)
    if expected is not None:
        expected = expected.replace("XDG", str(tmp_path / "XDG")).replace("CWD", str(tmp_path))
    assert chosen.directory == expected
    assert chosen.source.startswith(source)


def test_default_dir_without_xdg_is_under_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compile_cache.default_dir({}) == str(tmp_path / ".cache" / "segjax" / "jax")


@pytest.fixture
def restore_jax_cache_config():
    """Puts this process's JAX cache settings back after a test that calls setup()."""
    names = (
        "jax_enable_compilation_cache",
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    yield
    for name, value in saved.items():
        jax.config.update(name, value)
    jax_compilation_cache.reset_cache()


def test_unusable_directories(tmp_path, restore_jax_cache_config):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    named = {compile_cache.ENV_VAR: str(blocker / "cache")}
    with pytest.raises(ValueError, match=r"SEGJAX_COMPILE_CACHE: .*a_file/cache"):
        compile_cache.setup(None, named)
    # The default directory unusable: the run goes on without a cache.
    assert compile_cache.setup(None, {"XDG_CACHE_HOME": str(blocker)}) is None
    assert jax.config.jax_enable_compilation_cache is False


def test_negative_min_compile_time_is_an_error():
    with pytest.raises(ValueError, match="min_compile_time_secs=-1.0"):
        compile_cache.resolve({"enabled": True, "dir": "", "min_compile_time_secs": -1}, {})
