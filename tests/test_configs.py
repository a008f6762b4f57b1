"""Every config in configs/ builds: it loads, uses only schema keys, and its model initialises
(abstractly, with jax.eval_shape, so full-size models cost no compile)."""

import importlib.util
import pathlib

import jax
import pytest

from segjax import optim, trainer
from segjax.config import base_config

CONFIG_DIR = pathlib.Path(__file__).parent.parent / "configs"
CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def _load(path):
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(cfg, prefix=""):
    out = set()
    for k, v in cfg.items():
        if hasattr(v, "items") and k != "kwargs":
            out |= _keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def _variants(module):
    yield None
    try:
        module.get_config("runlocal")
    except ValueError:
        return
    yield "runlocal"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.stem)
def test_config_builds(path):
    module = _load(path)
    assert module.__doc__ and "python -m segjax.train" in module.__doc__, (
        f"{path.name}: the docstring must show the run command"
    )
    schema = _keys(base_config())
    for arg in _variants(module):
        config = module.get_config(arg)
        extra = _keys(config) - schema
        assert not extra, f"{path.name}:{arg} adds keys outside the schema: {sorted(extra)}"
        model = trainer.create_model(config)
        tx, _ = optim.make_optimizer(config.optim, config.train.num_steps)
        state = jax.eval_shape(trainer.make_init_fn(model, tx, config), jax.random.key(0))
        assert jax.tree.leaves(state.params)
        assert config.train.batch_size % config.train.grad_accum_steps == 0


def test_parse_arg_rejects_unknown_keys():
    from segjax.config import parse_arg

    assert parse_arg("runlocal,steps=5", runlocal=False, steps=1).steps == 5
    with pytest.raises(ValueError, match="unknown config argument 'stepz'"):
        parse_arg("stepz=5", runlocal=False, steps=1)
