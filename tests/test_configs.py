"""Every config in configs/ builds, in every variant it declares and in its ``runlocal`` form: it
loads, uses only schema keys, and its model initialises (abstractly, with jax.eval_shape, so
full-size models cost no compile)."""

import jax
import pytest

from segjax import optim, recipes, tasks, trainer
from segjax.config import base_config, parse_arg
from tests.helpers import CONFIG_DIR, config_module

CONFIG_FILES = sorted(p for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


def _keys(cfg, prefix=""):
    out = set()
    for k, v in cfg.items():
        if hasattr(v, "items") and k != "kwargs":
            out |= _keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def _file_variants():
    """(config file, variant) for every variant a file lists in ``VARIANTS`` (None: it has none)."""
    for path in CONFIG_FILES:
        for variant in getattr(config_module(path), "VARIANTS", (None,)):
            yield pytest.param(path, variant, id=path.stem + (f":{variant}" if variant else ""))


@pytest.mark.parametrize("path, variant", _file_variants())
def test_config_builds(path, variant):
    module = config_module(path)
    command = f"--config configs/{path.name}" + (f":variant={variant}" if variant else "")
    assert module.__doc__ and "python -m segjax.train" in module.__doc__, (
        f"{path.name}: the docstring must show the run command"
    )
    assert command in module.__doc__, f"{path.name}: the docstring must show {command!r}"
    schema = _keys(base_config())
    for extra_arg in (None, "runlocal"):
        arg = ",".join(a for a in (variant and f"variant={variant}", extra_arg) if a) or None
        config = module.get_config(arg)
        extra = _keys(config) - schema
        assert not extra, f"{path.name}:{arg} adds keys outside the schema: {sorted(extra)}"
        model = tasks.create_model(config)
        task = tasks.for_config(config)
        tx, _ = optim.make_optimizer(config.optim, config.train.num_steps, task.trainable(model))
        state = jax.eval_shape(trainer.make_init_fn(model, tx, config), jax.random.key(0))
        assert jax.tree.leaves(state.params)
        assert config.train.batch_size % config.train.grad_accum_steps == 0
        if extra_arg == "runlocal":
            builtin = "instance_shapes" if config.model.name.startswith("maskrcnn") else "shapes"
            assert config.data.name == builtin, f"{path.name}:{arg} must use the {builtin} data"


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if hasattr(config_module(p), "VARIANTS")])
def test_default_variant_is_listed_first_and_unknown_ones_are_refused(path):
    module = config_module(path)
    default = module.get_config(None).to_dict()
    assert default == module.get_config(f"variant={module.VARIANTS[0]}").to_dict()
    with pytest.raises(ValueError, match="unknown variant='nope'.*" + ", ".join(module.VARIANTS)):
        module.get_config("variant=nope")


def test_parse_arg_rejects_unknown_keys():
    assert parse_arg("runlocal,steps=5", runlocal=False, steps=1).steps == 5
    with pytest.raises(ValueError, match="unknown config argument 'stepz'"):
        parse_arg("stepz=5", runlocal=False, steps=1)


def test_parse_arg_choices():
    choices = {"variant": ("r50", "r101")}
    assert parse_arg(None, variant="r50", choices=choices).variant == "r50"
    assert parse_arg("variant=r101", variant="r50", choices=choices).variant == "r101"
    expected = "unknown variant='r18'; this config's variants: r50, r101"
    with pytest.raises(ValueError, match=expected):
        parse_arg("variant=r18", variant="r50", choices=choices)


def test_runlocal_keeps_the_model_unless_named():
    c = base_config()
    c.model.name = "unet"
    c.model.kwargs.width = 32
    recipes.runlocal(c, width=4)
    assert (c.model.name, c.model.kwargs.width, c.train.num_steps) == ("unet", 4, 4)
    recipes.runlocal(c, model_name="unet_tiny")
    assert c.model.name == "unet_tiny"
