"""Export a trained model as serialized StableHLO (``jax.export``) for any image size.

    python -m segjax.export --config configs/quickstart.py --workdir /tmp/run \\
        --output /tmp/exported [--platforms cpu,cuda,tpu] [--probabilities] [--uint8_input]

Writes ``OUTPUT/model.stablehlo`` (the serialized ``jax.export.Exported``, weights embedded as
constants) and ``OUTPUT/model.json`` (what goes in and out). The batch, height and width are
symbolic, so one file serves every image size. Load and run it with only JAX installed::

    exported = segjax.export.load("/tmp/exported")     # or jax.export.deserialize(bytes)
    logits = exported.call(images)                     # [B, H, W, 3] → [B, H, W, C]

Models whose forward pass pads to a multiple of their stride in Python (the padded U-Net) are
wrapped so that the padding happens inside the exported function with symbolic sizes, exactly
as the model does it; the output equals the live model's.
"""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax import export

from segjax import cli, runtime
from segjax.errors import ConfigError, MissingFileError
from segjax.models import unet

_FLAGS = types.SimpleNamespace(
    **vars(cli.define_run_flags()),
    **vars(cli.define_checkpoint_flags()),
    platforms=flags.DEFINE_list("platforms", ["cpu"], "Platforms to lower for (cpu, cuda, tpu)."),
    probabilities=flags.DEFINE_bool("probabilities", False, "Output softmax instead of logits."),
    uint8_input=flags.DEFINE_bool(
        "uint8_input", False, "Take uint8 RGB images and normalise inside (config mean/std)."
    ),
)


FILENAME = "model.stablehlo"
METADATA = "model.json"


def size_multiple(model) -> int:
    """The multiple the model pads its input sides to in Python (1 if none is known)."""
    if isinstance(model, unet.UNet):
        return 2**model.depth
    return 1


def _pad_indices(n, total, reflect):
    i = jnp.arange(total)
    reflected = jnp.where(i < n, i, 2 * (n - 1) - i)
    return jnp.where(reflect, reflected, jnp.minimum(i, n - 1))


def pad_to_multiple(images, multiple: int):
    """Pads the bottom/right of ``images`` to sides divisible by ``multiple`` with the padded
    U-Net's rule (reflection when the pad is smaller than both sides, else edge), using only
    operations that work with symbolic sizes."""
    _, h, w, _ = images.shape
    hp = multiple * ((h + multiple - 1) // multiple)
    wp = multiple * ((w + multiple - 1) // multiple)
    hv, wv = jnp.asarray(h), jnp.asarray(w)
    reflect = (jnp.asarray(hp - h) < hv) & (jnp.asarray(wp - w) < wv)
    images = jnp.take(images, _pad_indices(hv, hp, reflect), axis=1)
    return jnp.take(images, _pad_indices(wv, wp, reflect), axis=2)


def serving_fn(model, variables, *, probabilities=False, mean=None, std=None):
    """``images → logits`` (or probabilities) with ``variables`` baked in, for any size.

    With ``mean``/``std`` the function takes uint8 (or 0..255 float) RGB and normalises it.
    """
    multiple = size_multiple(model)

    def fn(images):
        x = images.astype(jnp.float32)
        if mean is not None:
            x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
        _, h, w, _ = x.shape
        if multiple > 1:
            x = pad_to_multiple(x, multiple)
        logits = model.apply(variables, x, train=False)["out"][:, :h, :w]
        return jax.nn.softmax(logits, axis=-1) if probabilities else logits

    return fn


def export_model(
    model,
    variables,
    *,
    probabilities: bool = False,
    mean=None,
    std=None,
    platforms=("cpu",),
):
    """A ``jax.export.Exported`` of the model with symbolic batch, height and width.

    Traced through :func:`segjax.runtime.jit` like every segjax jit site, always with XLA's own
    convolutions: the GEMM rewrites pick their form from concrete sizes (Winograd tiling,
    taps that only read padding), which a symbolic-size export does not have, and the exported
    program is meant for any platform in ``platforms``.

    Raises:
      ValueError: the model's forward pass needs concrete image sizes (the message names it).
    """
    host_vars = jax.tree.map(np.asarray, jax.device_get(variables))
    fn = serving_fn(model, host_vars, probabilities=probabilities, mean=mean, std=std)
    b, h, w = export.symbolic_shape("b, h, w")
    dtype = jnp.uint8 if mean is not None else jnp.float32
    spec = jax.ShapeDtypeStruct((b, h, w, 3), dtype)
    try:
        settings = types.SimpleNamespace(conv_impl="xla", cpu_scheduler="xla")
        jitted = runtime.jit(fn, settings)
        return export.export(jitted, platforms=tuple(platforms))(spec)
    except (
        jax.errors.InconclusiveDimensionOperation,
        jax.errors.ConcretizationTypeError,
        TypeError,  # e.g. a symbolic size where Python needs an int (adaptive pooling)
    ) as e:
        raise ConfigError(
            f"model {type(model).__name__} cannot be exported for symbolic image sizes: its "
            f"forward pass branches on the size ({str(e).splitlines()[0]})"
        ) from None


def save(exported, directory: str, metadata: dict) -> str:
    """Writes ``model.stablehlo`` and ``model.json`` into ``directory``; returns the first."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, FILENAME)
    with open(path, "wb") as f:
        f.write(exported.serialize())
    with open(os.path.join(directory, METADATA), "w") as f:
        json.dump(metadata, f, indent=2)
    return path


def load(path: str):
    """The ``jax.export.Exported`` stored at ``path`` (a file or a directory written by
    :func:`save`)."""
    if os.path.isdir(path):
        path = os.path.join(path, FILENAME)
    if not os.path.isfile(path):
        raise MissingFileError(f"no exported model at {path}")
    with open(path, "rb") as f:
        return export.deserialize(bytearray(f.read()))


def main(argv):
    """``python -m segjax.export``: see the module docstring."""
    f = _FLAGS
    cli.require_no_arguments(argv)
    config = cli.require_config(f.config.value)
    cli.require_checkpoint_source(f)
    output = cli.require_output(f)
    cli.setup_runtime()
    with cli.clean_errors():
        restored = cli.load_model(config, f)
        mean = tuple(config.data.mean) if f.uint8_input.value else None
        std = tuple(config.data.std) if f.uint8_input.value else None
        exported = export_model(
            restored.model,
            restored.variables,
            probabilities=f.probabilities.value,
            mean=mean,
            std=std,
            platforms=f.platforms.value,
        )
        path = save(exported, output, _metadata(config, f, restored.step))
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)", flush=True)


def _metadata(config, f, step) -> dict:
    """What ``model.json`` says goes in and comes out of the exported function."""
    return {
        "model": config.model.name,
        "model_kwargs": config.model.kwargs.to_dict(),
        "num_classes": config.model.num_classes,
        "step": step,
        "input": "uint8 RGB [B, H, W, 3]"
        if f.uint8_input.value
        else "float32 [B, H, W, 3], normalised with mean/std",
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "output": ("probabilities" if f.probabilities.value else "logits")
        + " float32 [B, H, W, num_classes]",
        "platforms": list(f.platforms.value),
    }


if __name__ == "__main__":
    cli.run_tool(main)
