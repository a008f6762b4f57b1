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

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import types  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402


def _define_flags():
    """The command-line flags (defined only when run as a program, so the module can be
    imported next to other segjax tools)."""
    config = config_flags.DEFINE_config_file(
        "config", None, "Path to a config file (optionally file.py:arg).", lock_config=True
    )
    workdir = flags.DEFINE_string("workdir", None, "Run directory (checkpoints/ inside it).")
    checkpoint = flags.DEFINE_string(
        "checkpoint", None, "A checkpoints/ directory or a variables checkpoint."
    )
    step = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
    output = flags.DEFINE_string("output", None, "Output directory.")
    platforms = flags.DEFINE_list("platforms", ["cpu"], "Platforms to lower for (cpu, cuda, tpu).")
    probabilities = flags.DEFINE_bool("probabilities", False, "Output softmax instead of logits.")
    uint8_input = flags.DEFINE_bool(
        "uint8_input", False, "Take uint8 RGB images and normalise inside (config mean/std)."
    )
    return types.SimpleNamespace(**locals())


FILENAME = "model.stablehlo"
METADATA = "model.json"


def size_multiple(model) -> int:
    """The multiple the model pads its input sides to in Python (1 if none is known)."""
    from segjax.models import unet

    if isinstance(model, unet.UNet):
        return 2**model.depth
    return 1


def _pad_indices(n, total, reflect):
    import jax.numpy as jnp

    i = jnp.arange(total)
    reflected = jnp.where(i < n, i, 2 * (n - 1) - i)
    return jnp.where(reflect, reflected, jnp.minimum(i, n - 1))


def pad_to_multiple(images, multiple: int):
    """Pads the bottom/right of ``images`` to sides divisible by ``multiple`` with the padded
    U-Net's rule (reflection when the pad is smaller than both sides, else edge), using only
    operations that work with symbolic sizes."""
    import jax.numpy as jnp

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
    import jax
    import jax.numpy as jnp

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

    Raises:
      ValueError: the model's forward pass needs concrete image sizes (the message names it).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import export

    host_vars = jax.tree.map(np.asarray, jax.device_get(variables))
    fn = serving_fn(model, host_vars, probabilities=probabilities, mean=mean, std=std)
    b, h, w = export.symbolic_shape("b, h, w")
    dtype = jnp.uint8 if mean is not None else jnp.float32
    spec = jax.ShapeDtypeStruct((b, h, w, 3), dtype)
    try:
        return export.export(jax.jit(fn), platforms=tuple(platforms))(spec)
    except (
        jax.errors.InconclusiveDimensionOperation,
        jax.errors.ConcretizationTypeError,
        TypeError,  # e.g. a symbolic size where Python needs an int (adaptive pooling)
    ) as e:
        raise ValueError(
            f"model {type(model).__name__} cannot be exported for symbolic image sizes: its "
            f"forward pass branches on the size ({str(e).splitlines()[0]})"
        ) from None


def save(exported, directory: str, metadata: dict) -> str:
    """Writes ``model.stablehlo`` and ``model.json`` into ``directory``; returns the first."""
    import json

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
    from jax import export

    if os.path.isdir(path):
        path = os.path.join(path, FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no exported model at {path}")
    with open(path, "rb") as f:
        return export.deserialize(bytearray(f.read()))


def main(argv):
    f = _FLAGS
    from segjax import cli

    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    config = cli.require_config(f.config.value, "--config")
    if not f.workdir.value and not f.checkpoint.value:
        cli.fail("give --workdir (its checkpoints/) or --checkpoint DIR")
    if not f.output.value:
        cli.fail("--output is required")
    output = cli.require_workdir(f.output.value)
    cli.setup_runtime()
    from segjax import inference

    with cli.clean_errors():
        trainer, variables, step = inference.load_variables(
            config,
            workdir=f.workdir.value,
            checkpoint_dir=f.checkpoint.value,
            step=f.step.value,
        )
        mean = tuple(config.data.mean) if f.uint8_input.value else None
        std = tuple(config.data.std) if f.uint8_input.value else None
        exported = export_model(
            trainer.model,
            variables,
            probabilities=f.probabilities.value,
            mean=mean,
            std=std,
            platforms=f.platforms.value,
        )
        metadata = {
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
        path = save(exported, output, metadata)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)", flush=True)


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(main, flags_parser=lambda argv: __import__("segjax.cli").cli.parse_flags(argv))
