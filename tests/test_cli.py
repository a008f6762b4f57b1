"""segjax.cli: flag groups shared by the tools, option parsing, one-line errors."""

import importlib

import pytest
from absl import flags

from segjax import cli, tasks
from segjax.config import base_config
from segjax.evaluation import inference


def test_tools_import_side_by_side_sharing_their_flag_groups():
    modules = [
        importlib.import_module(f"segjax.{name}")
        for name in ("train", "evaluate", "predict", "export")
    ]
    # One definition per flag, whatever imported first: the groups are the same objects.
    assert modules[1]._FLAGS.config is modules[0]._FLAGS.config is modules[3]._FLAGS.config
    assert modules[1]._FLAGS.mode is modules[2]._FLAGS.mode
    assert cli.define_inference_flags() is cli.define_inference_flags()
    assert not hasattr(modules[0]._FLAGS, "mode")  # training takes no inference flags


def test_inference_options_from_flags():
    f = cli.define_inference_flags()
    flags.FLAGS(["prog", "--mode=slide", "--crop=32", "--scales=0.5,1", "--flip"], known_only=True)
    try:
        options = tasks.get("semantic").inference_options(base_config(), f)
    finally:
        flags.FLAGS.unparse_flags()
    assert options == inference.InferenceOptions(
        mode="slide", crop=(32, 32), stride=(21, 21), scales=(0.5, 1.0), flip=True
    )


@pytest.mark.parametrize(
    "arg, expected",
    [
        (
            "--config.train.num_stepz=5",
            "--config.train.num_stepz: no config key 'num_stepz'; did you mean 'num_steps'?",
        ),
        ("--config.modl.name=x", "--config.modl.name: no config key 'modl'; did you mean 'model'?"),
    ],
)
def test_misspelt_override_is_named_with_the_closest_key(arg, expected):
    config = base_config()
    config.lock()
    key = arg.split("=")[0].split(".")[1:]
    with pytest.raises(AttributeError) as e:  # what ml_collections raises for the override
        target = config
        for part in key:
            target = getattr(target, part)
    assert cli._unknown_override(["prog", arg], e.value) == expected
