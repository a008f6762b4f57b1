"""Import a torchvision checkpoint as a segjax variables checkpoint (Orbax).

    python -m segjax.weights.import_torchvision --arch resnet101 \
        --checkpoint resnet101-cd907fc2.pth --output /ckpt/resnet101
    python -m segjax.weights.import_torchvision --arch deeplabv3_resnet50 \
        --checkpoint deeplabv3_resnet50_coco-cd0a2569.safetensors --output /ckpt/dlv3_r50
    python -m segjax.weights.import_torchvision --arch maskrcnn_resnet50_fpn \
        --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output /ckpt/maskrcnn_r50
    python -m segjax.weights.import_torchvision --arch maskrcnn_resnet50_fpn --backbone_only \
        --checkpoint resnet50-0676ba61.pth --output /ckpt/maskrcnn_r50_imagenet

``--checkpoint`` is a ``.pth``/``.pt`` file (needs torch: ``pip install 'segjax[torch]'``), a
``.safetensors`` file or a ``.npz`` (no torch needed). The output directory is a plain variables
checkpoint (``segjax.checkpoint.save_variables``): pass it to training as
``--config.init_from=DIR`` (backbones and full models; only matching arrays are loaded and a
report is logged) or to ``segjax.evaluate`` / ``segjax.predict`` as ``--checkpoint DIR`` (full
models, with the config's ``model.name`` / ``model.num_classes`` set to the imported model).
See docs/WEIGHTS.md.
"""

import argparse
import json
import os
import sys

from segjax.errors import ConfigError, ConversionError, MissingFileError, SegjaxError
from segjax.weights import torchvision as tv

PTH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


def read_state_dict(path: str) -> dict:
    """Reads a state dict from ``.pth``/``.pt`` (torch), ``.safetensors`` or ``.npz``.

    Raises:
      MissingFileError: no such file (a ``FileNotFoundError``).
      ConversionError: unknown suffix, an unreadable file, or a ``.pth`` file without torch
        installed (a ``ValueError``).
    """
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint file not found: {path}")
    lower = path.lower()
    if lower.endswith((".safetensors", ".npz")):
        try:
            return _read_arrays(path, lower)
        except Exception as e:  # safetensors and NumPy raise several types for a damaged file
            raise ConversionError(
                f"{path}: cannot read the checkpoint ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from e
    if lower.endswith(PTH_SUFFIXES):
        try:
            import torch
        except ImportError:
            raise ConversionError(
                f"{path}: reading a PyTorch file needs torch (pip install 'segjax[torch]'). "
                'Without torch, convert it once where torch is available: python -c "import '
                "torch; from safetensors.torch import save_file; "
                f"save_file(torch.load('{os.path.basename(path)}', map_location='cpu'), "
                "'model.safetensors')\" and pass the .safetensors file"
            ) from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises UnpicklingError and others for non-tensor pickles
            raise ConversionError(
                f"{path}: torch.load(weights_only=True) failed ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''}). A training checkpoint with "
                "non-tensor objects? If you trust the file, re-save its state dict: "
                "torch.save(torch.load(path, weights_only=False)['model'], 'model.pth')"
            ) from None
        if not isinstance(state, dict):
            raise ConversionError(
                f"{path}: expected a state dict (a mapping of names to tensors), got "
                f"{type(state).__name__}; save model.state_dict() rather than the model"
            )
        return state
    raise ConversionError(
        f"{path}: unknown checkpoint format; expected .pth/.pt (torch), .safetensors or .npz"
    )


def _read_arrays(path: str, lower: str) -> dict:
    """The arrays of a ``.safetensors`` or ``.npz`` file (``lower``: its lower-cased path)."""
    if lower.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    import numpy as np

    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _model_kwargs(text: str) -> dict:
    """``--model_kwargs``: a JSON object of constructor options (ConfigError if not)."""
    try:
        kwargs = json.loads(text) if text else {}
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model_kwargs {text!r}: not JSON ({e})") from None
    if not isinstance(kwargs, dict):
        raise ConfigError(f"--model_kwargs {text!r}: expected a JSON object of options")
    return kwargs


def build_target(arch: str, num_classes: int | None, aux: bool, model_kwargs: dict):
    """The target module with ``model_kwargs`` (None when no kwargs: the default is used)."""
    if not model_kwargs:
        return None
    spec = tv.arch_spec(arch)
    if spec.segmentation:
        from segjax import models

        kwargs = dict(model_kwargs)
        if spec.aux_prefix is not None:
            kwargs.setdefault("aux", aux)
        return models.create(arch, num_classes=num_classes, **kwargs)
    module = tv.default_module(arch)
    return module.clone(**model_kwargs)


def target_report(variables: dict, target: str, num_classes: int, target_kwargs: dict) -> dict:
    """What ``init_from`` would load into segjax model ``target`` (shapes only, no compute)."""
    import jax
    import jax.numpy as jnp

    from segjax import checkpoint, models

    module = models.create(target, num_classes=num_classes, **target_kwargs)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x), images)
    shapes = {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}
    _, report = checkpoint.merge_pretrained(shapes, variables)
    return report


def _parse(argv):
    parser = argparse.ArgumentParser(
        prog="python -m segjax.weights.import_torchvision",
        description="Convert a torchvision checkpoint to a segjax variables checkpoint.",
    )
    parser.add_argument("--arch", required=True, help=f"one of: {', '.join(sorted(tv.ARCHS))}")
    parser.add_argument("--checkpoint", required=True, help=".pth/.pt, .safetensors or .npz")
    parser.add_argument("--output", required=True, help="directory for the Orbax checkpoint")
    parser.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="segmentation archs: expected classes (default: the checkpoint's)",
    )
    parser.add_argument(
        "--drop_head",
        action="store_true",
        help="segmentation archs: leave out the final classifier layers (to fine-tune on "
        "other classes with init_from)",
    )
    parser.add_argument(
        "--backbone_only",
        action="store_true",
        help="the checkpoint is the ImageNet backbone of --arch (maskrcnn_resnet50_fpn: a "
        "torchvision resnet50); write only the model's backbone, for init_from",
    )
    parser.add_argument(
        "--model_kwargs",
        default="",
        help="JSON of constructor options of the target module (e.g. a smaller test variant)",
    )
    parser.add_argument(
        "--target",
        default="",
        help="a segjax model name: report what init_from would load into it",
    )
    parser.add_argument(
        "--target_num_classes", type=int, default=21, help="classes of the --target model"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Runs the import; returns the converted variables (for tests). Exits on bad input."""
    from segjax import checkpoint
    from segjax.logs import fail

    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        model_kwargs = _model_kwargs(args.model_kwargs)
        spec = tv.arch_spec(args.arch)
        keys_spec = tv.conversion_spec(args.arch, args.backbone_only)
        state = tv.strip_wrappers(read_state_dict(args.checkpoint))
        num_classes = args.num_classes
        if spec.segmentation and num_classes is None and not args.backbone_only:
            num_classes = tv.head_classes(state, args.arch)
        aux = tv.has_aux(state, args.arch)
        try:
            module = build_target(
                args.arch, 91 if args.backbone_only else num_classes, aux, model_kwargs
            )
        except TypeError as e:  # a constructor option the module does not take
            raise ConfigError(f"--model_kwargs {args.model_kwargs!r}: {e}") from None
        variables = tv.convert(
            state,
            args.arch,
            num_classes=args.num_classes,
            drop_head=args.drop_head,
            module=module,
            backbone_only=args.backbone_only,
        )
    except SegjaxError as e:  # bad flags or files; anything else is a bug: its traceback
        fail(str(e))
    ignored = sorted(
        k for k in state if tv.is_ignored(keys_spec, k) and "num_batches_tracked" not in k
    )
    params = sum(v.size for v in _leaves(variables["params"]))
    stats = sum(v.size for v in _leaves(variables.get("batch_stats", {})))
    checkpoint.save_variables(args.output, variables)
    what = "backbone" if not spec.segmentation else f"{num_classes}-class model"
    if args.drop_head:
        what = "model without its final classifiers"
    if args.backbone_only:
        what = f"{keys_spec.name} backbone of {args.arch}"
    print(
        f"{args.arch}: wrote {params:,} parameters and {stats:,} BatchNorm statistics ({what}) "
        f"to {os.path.abspath(args.output)}"
    )
    if spec.segmentation and spec.aux_prefix is not None:
        print(f"  auxiliary head: {'yes' if aux else 'no (build the model with aux=False)'}")
    if args.drop_head:
        print(f"  head left out: {', '.join(spec.head_keys)}")
    if ignored:
        print(f"  ignored (ImageNet classifier): {', '.join(ignored)}")
    for line in _usage_lines(args, spec, num_classes):
        print(line)
    if args.target:
        _print_target_report(args, variables)
    return variables


def _usage_lines(args, spec: tv.Arch, num_classes: int | None) -> list[str]:
    """How to use the written checkpoint (and the constructor options it needs)."""
    out = args.output
    if args.backbone_only:
        return [
            f"  use: --config.init_from={out} with model.name={args.arch} (its "
            f"{'/'.join(spec.backbone_path)} is loaded; the rest starts from its initialisation)"
        ]
    lines = [
        f"  build the model with model.kwargs.{name}={value!r}: {why}"
        for name, value, why in spec.model_kwargs
    ]
    if spec.segmentation and not args.drop_head:
        lines.append(
            f"  use: --config.init_from={out} (train), or --checkpoint {out} "
            f"(evaluate / predict) with model.name={args.arch}, model.num_classes={num_classes}"
        )
    elif spec.segmentation:
        lines.append(f"  use: --config.init_from={out} (train; the new head starts afresh)")
    else:
        lines.append(
            f"  use: --config.init_from={out} with a model built on {args.arch} "
            f"({', '.join(spec.users)} …)"
        )
    return lines


def _print_target_report(args, variables: dict) -> None:
    from segjax.logs import fail

    try:
        report = target_report(variables, args.target, args.target_num_classes, {})
    except SegjaxError as e:  # an unknown --target, or weights that do not fit it
        fail(str(e))
    print(
        f"  into {args.target}: loaded {len(report['loaded'])}, kept initial "
        f"{len(report['kept_initial'])}, unused {len(report['unused'])}, shape mismatch "
        f"{len(report['shape_mismatch'])}"
    )
    for key in ("unused", "shape_mismatch"):
        for name in report[key][:20]:
            print(f"    {key}: {name}")


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    else:
        yield tree


if __name__ == "__main__":
    main()
