"""Helpers shared by the tests: variables and counts without compiling ``init``, and the
repository's config files.

Compiling a model's ``init`` (hundreds of random initialisers) costs far more CPU time than the
tests themselves, so the tests take shapes from ``jax.eval_shape`` and fill them from NumPy.
"""

import functools
import importlib.util
import pathlib
import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

CONFIG_DIR = pathlib.Path(__file__).parent.parent / "configs"


def _example(value):
    """An input of ``module.init``: arrays stay, a shape (tuple of ints) becomes float32 zeros."""
    if isinstance(value, Sequence) and all(isinstance(d, int | np.integer) for d in value):
        return jax.ShapeDtypeStruct(tuple(int(d) for d in value), jnp.float32)
    return value


def abstract_variables(module: nn.Module, *inputs, **init_kwargs) -> dict:
    """The variables ``module.init(key, *inputs, **init_kwargs)`` makes, as shapes only.

    Each input is an array or the shape (tuple of ints) of a float32 one.
    """
    init = functools.partial(module.init, **init_kwargs)
    return jax.eval_shape(init, jax.random.key(0), *map(_example, inputs))


def abstract_init(module: nn.Module, *inputs, **init_kwargs) -> tuple[dict, object]:
    """``(variables, output)`` of ``module.init_with_output``, as shapes only (inputs as above)."""
    init = functools.partial(module.init_with_output, **init_kwargs)
    output, variables = jax.eval_shape(init, jax.random.key(0), *map(_example, inputs))
    return variables, output


def random_variables(module: nn.Module, *inputs, seed: int = 0, **init_kwargs) -> dict:
    """Variables shaped as ``module.init`` makes them, filled from NumPy (nothing compiles).

    The values are generic rather than initial: He-scaled kernels, biases and BatchNorm means
    of scale 0.1, BatchNorm scales and variances in [0.5, 1.5] (so the statistics matter).

    Args:
      module: the Flax module.
      *inputs: its ``init`` inputs: arrays, or shapes (tuples of ints) of float32 arrays.
      seed: NumPy seed of the values.
      **init_kwargs: keyword arguments of ``init`` (``train=False`` …).
    """
    shapes = abstract_variables(module, *inputs, **init_kwargs)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name in ("var", "scale"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif name == "kernel":
            value = rng.normal(size=leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        else:
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def tree_size(tree) -> int:
    """Number of scalars in every leaf of ``tree`` (arrays or shapes)."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def num_params(module: nn.Module, shape: Sequence[int] = (1, 64, 64, 3)) -> int:
    """Parameter count of ``module`` initialised on float32 images of ``shape``."""
    return tree_size(abstract_variables(module, shape)["params"])


def conv_dilations(fn, *args) -> set[tuple[int, ...]]:
    """The ``rhs_dilation`` of every convolution in ``fn(*args)``'s jaxpr, nested ones included."""
    found = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                found.add(tuple(eqn.params["rhs_dilation"]))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def compiled_computations(fn, *args) -> tuple[list[str], str]:
    """The bodies of every computation (fusions included) of ``jax.jit(fn)`` compiled for
    ``args``, and the whole optimised HLO text."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return re.findall(r"^%?[\w.\-]+ \([^\n]*\{\n(.*?)\n\}", text, re.M | re.S), text


def conv_rates(module: nn.Module, x) -> set[int]:
    """The atrous rates of ``module``'s (square-dilated) convolutions on ``x`` in eval mode."""
    variables = abstract_variables(module, x)
    apply = functools.partial(module.apply, train=False)
    return {rate for rate, *_ in conv_dilations(apply, variables, x)}


def assert_bitwise_equal(actual, expected) -> None:
    """Same tree structure, and every leaf the same dtype and bits (checkpoint comparisons)."""
    assert jax.tree_util.tree_structure(actual) == jax.tree_util.tree_structure(expected)
    flat_a = jax.tree_util.tree_flatten_with_path(actual)[0]
    for (path, a), b in zip(flat_a, jax.tree.leaves(expected), strict=True):
        name = jax.tree_util.keystr(path)
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{name} differs"


def config_module(path: pathlib.Path):
    """The config file at ``path`` as a module (its ``get_config``), loaded afresh."""
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(file_name: str, arg: str | None = "runlocal"):
    """``get_config(arg)`` of ``configs/<file_name>`` (default: its smoke-test variant)."""
    return config_module(CONFIG_DIR / file_name).get_config(arg)
