"""torchvision checkpoints ↔ segjax variables, with exact numerical parity.

:func:`convert` turns a torchvision ``state_dict`` (NumPy arrays or torch tensors) into the
``{"params", "batch_stats"}`` of the matching segjax model; :func:`export` is its exact inverse.
Every Flax leaf of the *target* module (found with ``jax.eval_shape``, no compilation) is
mapped to one torchvision key by the rules below, so missing, unexpected and mis-shaped keys
are all detected before anything is returned.

=============================  ================================================================
torchvision ``arch``            target (Flax paths)
=============================  ================================================================
``vgg16``                       ``backbone/…`` of the FCN-VGG16 models (``features_{i}``, fc6 as
                                a 7×7 conv, fc7 as a 1×1 conv; ``classifier.6`` is ignored);
                                DeepLab v1 takes its 13 convs
``resnet50``, ``resnet101``     ``backbone/…`` of every ResNet model (FCN, DeepLab v2/v3/v3+,
                                PSPNet); ``fc.*`` is ignored
``mobilenet_v3_large``          ``backbone/features_{i}/…`` of the MobileNetV3 models
                                (DeepLab v3, LR-ASPP); ``classifier.*`` is ignored
``fcn_resnet50/101``            the whole ``fcn_resnet50/101`` model
``deeplabv3_resnet50/101``      the whole ``deeplabv3_resnet50/101`` model
``deeplabv3_mobilenet_v3_large``  the whole ``deeplabv3_mobilenet_v3_large`` model
``lraspp_mobilenet_v3_large``   the whole ``lraspp_mobilenet_v3_large`` model
``maskrcnn_resnet50_fpn``       the whole ``maskrcnn_resnet50_fpn`` model (``backbone_only=True``:
                                its ``backbone/body/…`` from an ImageNet ``resnet50`` checkpoint)
=============================  ================================================================

Layouts: conv kernels OIHW → HWIO (depthwise ``[C, 1, k, k]`` → ``[k, k, 1, C]``); VGG16's
``Linear`` fc6 ``[4096, 512·7·7]`` → ``[7, 7, 512, 4096]`` (torch flattens C, H, W) and fc7
``[4096, 4096]`` → ``[1, 1, 4096, 4096]``; BatchNorm ``weight``/``bias`` → ``params``
``scale``/``bias``, ``running_mean``/``running_var`` → ``batch_stats`` ``mean``/``var``;
``num_batches_tracked`` has no counterpart. A backbone conversion covers only ``backbone/…``:
load it into a segmentation model with ``config.init_from`` (``checkpoint.merge_pretrained``),
which leaves the heads at their initial values and logs what was loaded.

Mask R-CNN: its frozen BatchNorms keep all four buffers in ``batch_stats``
(``scale``/``bias``/``mean``/``var`` ← ``weight``/``bias``/``running_mean``/``running_var``);
``Linear`` weights ``[out, in]`` → Dense ``[in, out]``, except the box head's fc6
``[R, C·7·7]`` → ``[7, 7, C, R]`` (as VGG's fc6); the mask predictor's ``ConvTranspose2d``
weight ``[in, out, 2, 2]`` takes a conv's transpose (segjax stores it HWOI). Checkpoints saved by
torchvision < 0.13 (the published COCO weights among them) name the FPN, RPN and mask-head convs
``inner_blocks.{i}.weight``, ``rpn.head.conv.weight`` and ``mask_head.mask_fcn{i}.weight``;
they are read as the current ``inner_blocks.{i}.0.weight``, ``rpn.head.conv.0.0.weight`` and
``mask_head.{i-1}.0.weight``, as torchvision's own ``load_state_dict`` does. The frozen-BN
epsilon is not in a checkpoint: build the model for torchvision's COCO_V1 weights with
``bn_eps=0.0`` (see :attr:`Arch.model_kwargs`). An ImageNet ResNet-50 initialises the Mask R-CNN
backbone through ``convert(resnet50_state_dict, "maskrcnn_resnet50_fpn", backbone_only=True)``
(``init_from`` cannot take an imported ``resnet50`` directly: there the body is ``backbone/…``
with BatchNorm affines in ``params``, here ``backbone/body/…`` with all of them in ``batch_stats``).
"""

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from segjax import models
from segjax.errors import ConversionError
from segjax.models.backbones import mobilenet, resnet, vgg

BN_TORCH_LEAVES = {
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
    # Frozen BatchNorm (Mask R-CNN): the affine is a buffer too.
    ("batch_stats", "scale"): "weight",
    ("batch_stats", "bias"): "bias",
}


# --------------------------------------------------------------------------- path rules
#
# Each rule rewrites a Flax *module* path ("backbone/layer1_0/conv1") to a torch module path
# ("backbone.layer1.0.conv1"); the first fully matching rule wins. Leaf names are mapped
# separately (kernel → weight, …). A replacement is a template or a function of the match.

Rule = tuple[str, str | Callable[[re.Match], str]]

_RESNET_RULES: list[Rule] = [
    (r"(conv1|bn1)", r"\1"),
    (r"layer(\d)_(\d+)/(conv\d|bn\d)", r"layer\1.\2.\3"),
    (r"layer(\d)_(\d+)/downsample_conv", r"layer\1.\2.downsample.0"),
    (r"layer(\d)_(\d+)/downsample_bn", r"layer\1.\2.downsample.1"),
]

_VGG_RULES: list[Rule] = [
    (r"features_(\d+)", r"features.\1"),
    (r"fc6", "classifier.0"),
    (r"fc7", "classifier.3"),
]


def _mobilenet_rules(features_prefix: str) -> list[Rule]:
    # ConvBN's conv/bn are the .0/.1 of torchvision's Conv2dNormActivation.
    p = features_prefix
    return [
        (r"features_(\d+)/conv", p + r"\1.0"),
        (r"features_(\d+)/bn", p + r"\1.1"),
        (r"features_(\d+)/block_(\d+)/conv", p + r"\1.block.\2.0"),
        (r"features_(\d+)/block_(\d+)/bn", p + r"\1.block.\2.1"),
        (r"features_(\d+)/block_(\d+)/(fc[12])", p + r"\1.block.\2.\3"),
    ]


def _fcn_head_rules(head: str) -> list[Rule]:
    # fcn.FCNHead's conv / bn / cls are the .0 / .1 / .4 of torchvision's FCNHead Sequential.
    return [
        (f"{head}/conv", f"{head}.0"),
        (f"{head}/bn", f"{head}.1"),
        (f"{head}/cls", f"{head}.4"),
    ]


_AUX_HEAD_RULES = _fcn_head_rules("aux_classifier")
_FCN_HEAD_RULES = _fcn_head_rules("classifier") + _AUX_HEAD_RULES

_DEEPLAB_HEAD_RULES: list[Rule] = [
    (r"classifier/aspp/convs_([0-3])/conv", r"classifier.0.convs.\1.0"),
    (r"classifier/aspp/convs_([0-3])/bn", r"classifier.0.convs.\1.1"),
    # The image-pooling branch: AdaptiveAvgPool2d is its .0.
    (r"classifier/aspp/convs_4/conv", "classifier.0.convs.4.1"),
    (r"classifier/aspp/convs_4/bn", "classifier.0.convs.4.2"),
    (r"classifier/aspp/project/conv", "classifier.0.project.0"),
    (r"classifier/aspp/project/bn", "classifier.0.project.1"),
    (r"classifier/conv/conv", "classifier.1"),
    (r"classifier/conv/bn", "classifier.2"),
    (r"classifier/out", "classifier.4"),
    *_AUX_HEAD_RULES,
]

_LRASPP_HEAD_RULES: list[Rule] = [
    (r"classifier/cbr/conv", "classifier.cbr.0"),
    (r"classifier/cbr/bn", "classifier.cbr.1"),
    (r"classifier/scale", "classifier.scale.1"),
    (r"classifier/(low_classifier|high_classifier)", r"classifier.\1"),
]


def _mask_fcn_module(match: re.Match) -> str:
    # segjax's mask_fcn{i} (1-based, torchvision's old names) is entry i − 1 of torchvision
    # ≥ 0.13's MaskRCNNHeads Sequential, a Conv2dNormActivation whose conv is its .0.
    return f"roi_heads.mask_head.{int(match.group(1)) - 1}.0"


_MASKRCNN_HEAD_RULES: list[Rule] = [
    (r"backbone/fpn/(inner|layer)_blocks_(\d+)", r"backbone.fpn.\1_blocks.\2.0"),
    (r"rpn/head/conv", "rpn.head.conv.0.0"),
    (r"rpn/head/(cls_logits|bbox_pred)", r"rpn.head.\1"),
    (r"roi_heads/(box_head|box_predictor|mask_predictor)/(\w+)", r"roi_heads.\1.\2"),
    (r"roi_heads/mask_head/mask_fcn(\d+)", _mask_fcn_module),
]

# torchvision < 0.13 key → current key (its modules' _load_from_state_dict renames the same).
_MASKRCNN_LEGACY_KEYS: list[Rule] = [
    (
        r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)\.(weight|bias)",
        r"backbone.fpn.\1_blocks.\2.0.\3",
    ),
    (r"rpn\.head\.conv\.(weight|bias)", r"rpn.head.conv.0.0.\1"),
    (
        r"roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)",
        lambda m: f"roi_heads.mask_head.{int(m.group(1)) - 1}.0.{m.group(2)}",
    ),
]


def _prefixed(rules: list[Rule], flax_prefix: str, torch_prefix: str) -> list[Rule]:
    return [(flax_prefix + pattern, torch_prefix + repl) for pattern, repl in rules]


@dataclasses.dataclass(frozen=True)
class Arch:
    """How one torchvision architecture maps onto segjax.

    Attributes:
      name: torchvision's name.
      family: ``"vgg"``, ``"resnet"`` or ``"mobilenet_v3"`` (the backbone).
      segmentation: a full segmentation model (else an ImageNet backbone).
      rules: Flax module path → torch module path rewrites (full paths, ``backbone/`` included).
      ignored_prefixes: torch keys deliberately dropped (ImageNet classifiers).
      head_keys: torch module paths of the final classifier layers (their output channels
        are the classes; ``drop_head`` leaves them out).
      aux_prefix: torch prefix of the auxiliary head (its presence decides ``aux``).
      users: segjax models whose ``backbone`` this checkpoint initialises (documentation and
        ``--target`` suggestions).
      linear_convs: Flax module paths of Linear layers stored as convs over the whole input
        (Mask R-CNN's fc6; VGG16's fc6/fc7 are found by name).
      legacy_keys: old torch key → current torch key rewrites applied before matching.
      backbone_arch: the ImageNet arch whose checkpoint ``backbone_only=True`` converts.
      backbone_path: where that backbone sits in this model's variables.
      model_kwargs: constructor options the published checkpoint needs that no array records
        (Mask R-CNN's COCO_V1 weights: ``bn_eps=0.0``), with why.
    """

    name: str
    family: str
    segmentation: bool
    rules: tuple[Rule, ...]
    ignored_prefixes: tuple[str, ...] = ()
    head_keys: tuple[str, ...] = ()
    aux_prefix: str | None = None
    users: tuple[str, ...] = ()
    linear_convs: tuple[str, ...] = ()
    legacy_keys: tuple[Rule, ...] = ()
    backbone_arch: str | None = None
    backbone_path: tuple[str, ...] = ()
    model_kwargs: tuple[tuple[str, Any, str], ...] = ()


def _backbone_rules(family: str, seg: bool) -> list[Rule]:
    if family == "resnet":
        return _prefixed(_RESNET_RULES, "backbone/", "backbone." if seg else "")
    if family == "vgg":
        return _prefixed(_VGG_RULES, "backbone/", "")
    if family == "mobilenet_v3":
        # Segmentation models wrap ``mobilenet_v3_large().features`` itself as ``backbone``.
        return _prefixed(_mobilenet_rules("backbone." if seg else "features."), "backbone/", "")
    raise ValueError(family)


def _backbone_arch(name: str, family: str, ignored: str, users: tuple[str, ...]) -> Arch:
    return Arch(name, family, False, tuple(_backbone_rules(family, False)), (ignored,), users=users)


def _segmentation_arch(
    name: str,
    family: str,
    head_rules: list[Rule],
    head_keys: tuple[str, ...] = ("classifier.4", "aux_classifier.4"),
    aux_prefix: str | None = "aux_classifier.",
) -> Arch:
    # The defaults: FCN and DeepLab v3 end in classifier.4 and, with aux_loss, an FCNHead
    # aux_classifier.
    rules = tuple(_backbone_rules(family, True) + head_rules)
    return Arch(name, family, True, rules, head_keys=head_keys, aux_prefix=aux_prefix)


def _make_archs() -> dict[str, Arch]:
    archs = {
        "vgg16": _backbone_arch(
            "vgg16",
            "vgg",
            "classifier.6.",
            ("fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "deeplabv1_vgg16 (convs)"),
        ),
        "mobilenet_v3_large": _backbone_arch(
            "mobilenet_v3_large",
            "mobilenet_v3",
            "classifier.",
            ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"),
        ),
    }
    for depth in (50, 101):
        users = (
            f"fcn_resnet{depth}",
            f"deeplabv3_resnet{depth}",
            f"deeplabv3plus_resnet{depth}",
            f"pspnet_resnet{depth}",
        ) + (("deeplabv2_resnet101",) if depth == 101 else ())
        archs[f"resnet{depth}"] = _backbone_arch(f"resnet{depth}", "resnet", "fc.", users)
        for name, head_rules in (("fcn", _FCN_HEAD_RULES), ("deeplabv3", _DEEPLAB_HEAD_RULES)):
            arch = f"{name}_resnet{depth}"
            archs[arch] = _segmentation_arch(arch, "resnet", head_rules)
    archs["deeplabv3_mobilenet_v3_large"] = _segmentation_arch(
        "deeplabv3_mobilenet_v3_large", "mobilenet_v3", _DEEPLAB_HEAD_RULES
    )
    archs["lraspp_mobilenet_v3_large"] = _segmentation_arch(
        "lraspp_mobilenet_v3_large",
        "mobilenet_v3",
        _LRASPP_HEAD_RULES,
        head_keys=("classifier.low_classifier", "classifier.high_classifier"),
        aux_prefix=None,
    )
    archs["maskrcnn_resnet50_fpn"] = _maskrcnn_arch("maskrcnn_resnet50_fpn", "resnet50")
    return archs


def _maskrcnn_arch(name: str, backbone_arch: str) -> Arch:
    rules = _prefixed(_RESNET_RULES, "backbone/body/", "backbone.body.") + _MASKRCNN_HEAD_RULES
    return Arch(
        name,
        "resnet",
        True,
        tuple(rules),
        head_keys=(
            "roi_heads.box_predictor.cls_score",
            "roi_heads.box_predictor.bbox_pred",
            "roi_heads.mask_predictor.mask_fcn_logits",
        ),
        linear_convs=("roi_heads/box_head/fc6",),
        legacy_keys=tuple(_MASKRCNN_LEGACY_KEYS),
        backbone_arch=backbone_arch,
        backbone_path=("backbone", "body"),
        model_kwargs=(
            (
                "bn_eps",
                0.0,
                "torchvision's COCO_V1 weights run their frozen BatchNorm with eps 0 "
                "(overwrite_eps); a model trained in torchvision from ImageNet weights uses 1e-5",
            ),
        ),
    )


ARCHS: dict[str, Arch] = _make_archs()


def arch_spec(arch: str) -> Arch:
    """The :class:`Arch` of torchvision name ``arch``.

    Raises:
      ConversionError: unknown name (the message lists the known ones).
    """
    if arch not in ARCHS:
        raise ConversionError(
            f"unknown torchvision arch {arch!r}; expected one of: {', '.join(sorted(ARCHS))}"
        )
    return ARCHS[arch]


# --------------------------------------------------------------------------- target modules


def default_module(arch: str, *, num_classes: int | None = None, aux: bool = True):
    """The full-size segjax module a conversion of ``arch`` targets.

    Backbone archs target the backbone module alone (its variables are nested under
    ``backbone`` in the result, where every segjax segmentation model keeps its backbone);
    segmentation archs target ``segjax.models.create(arch, num_classes=…)``.
    """
    spec = arch_spec(arch)
    if not spec.segmentation:
        if spec.family == "vgg":
            return vgg.VGG16()
        if spec.family == "resnet":
            return resnet.ResNet(depth=int(arch[len("resnet") :]))
        return mobilenet.MobileNetV3Large(dilated=False)
    if num_classes is None:
        raise ConversionError(f"{arch}: num_classes is needed to build the segmentation model")
    kwargs = {} if spec.aux_prefix is None else {"aux": aux}
    return models.create(arch, num_classes=num_classes, **kwargs)


def abstract_variables(module, spec: Arch, image_size: int = 64) -> dict:
    """Shapes of ``module``'s variables (``jax.eval_shape``; nothing is computed).

    For a backbone arch the result is nested under ``backbone`` like in the segmentation
    models. Returns a fresh tree (the callers' to edit).
    """
    try:
        shapes = _cached_shapes(module, spec.segmentation, image_size)
    except TypeError:  # an unhashable module (list-valued options): trace it every time
        shapes = _variable_shapes(module, spec.segmentation, image_size)
    return jax.tree.map(lambda leaf: leaf, shapes)


def _variable_shapes(module, segmentation: bool, image_size: int) -> dict:
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.PRNGKey(0), x, train=False), images)
    shapes = {k: v for k, v in shapes.items() if k in ("params", "batch_stats")}
    if not segmentation:
        shapes = {k: {"backbone": v} for k, v in shapes.items()}
    return shapes


# Tracing a whole model's init takes seconds (a full Mask R-CNN: its proposal and detection
# steps too); conversions of the same module (tests, export after convert) reuse the shapes.
_cached_shapes = functools.lru_cache(maxsize=16)(_variable_shapes)


# --------------------------------------------------------------------------- leaf mapping


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One Flax leaf and its torchvision counterpart."""

    collection: str
    path: tuple[str, ...]  # module path + leaf name, without the collection
    shape: tuple[int, ...]  # Flax shape
    torch_key: str
    layout: str  # "conv" (OIHW ↔ HWIO), "linear_conv" (Linear ↔ k×k conv), "linear" or "same"

    @property
    def flax_name(self) -> str:
        return "/".join((self.collection, *self.path))

    def torch_shape(self) -> tuple[int, ...]:
        """The shape torchvision stores for this leaf."""
        if self.layout == "conv":
            h, w, i, o = self.shape
            return (o, i, h, w)
        if self.layout == "linear_conv":
            h, w, i, o = self.shape
            return (o, i * h * w)
        if self.layout == "linear":
            i, o = self.shape
            return (o, i)
        return self.shape


def _torch_module(spec: Arch, module_path: str) -> str:
    for pattern, repl in spec.rules:
        if re.fullmatch(pattern, module_path):
            return re.sub(pattern, repl, module_path, count=1)
    raise ConversionError(
        f"{spec.name}: no torchvision counterpart for the segjax module {module_path!r}; "
        "the target model does not have torchvision's structure (check its options)"
    )


def plan(spec: Arch, abstract: Mapping[str, Any]) -> list[Leaf]:
    """Maps every leaf of ``abstract`` (from :func:`abstract_variables`) to a torch key."""
    leaves = []
    flat, _ = jax.tree_util.tree_flatten_with_path(dict(abstract))
    for key_path, value in flat:
        names = tuple(str(getattr(k, "key", k)) for k in key_path)
        collection, path = names[0], names[1:]
        module_path, leaf = "/".join(path[:-1]), path[-1]
        torch_module = _torch_module(spec, module_path)
        shape = tuple(value.shape)
        if leaf == "kernel":
            torch_leaf = "weight"
            is_fc = spec.family == "vgg" and path[-2] in ("fc6", "fc7")
            if is_fc or module_path in spec.linear_convs:
                layout = "linear_conv"
            else:
                layout = "linear" if len(value.shape) == 2 else "conv"
        elif (collection, leaf) in BN_TORCH_LEAVES:
            torch_leaf, layout = BN_TORCH_LEAVES[(collection, leaf)], "same"
        else:
            raise ConversionError(f"{spec.name}: unexpected segjax leaf {collection}/{path}")
        leaves.append(Leaf(collection, path, shape, f"{torch_module}.{torch_leaf}", layout))
    return leaves


def _to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        value = value.numpy()
    return np.asarray(value)


def _to_flax(leaf: Leaf, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if leaf.layout == "conv":
        return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
    if leaf.layout == "linear_conv":
        h, w, i, o = leaf.shape
        return np.ascontiguousarray(value.reshape(o, i, h, w).transpose(2, 3, 1, 0))
    if leaf.layout == "linear":
        return np.ascontiguousarray(value.T)
    return value


def _to_torch(leaf: Leaf, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value)
    if leaf.layout == "conv":
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if leaf.layout == "linear_conv":
        o = leaf.shape[3]
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1).reshape(o, -1))
    if leaf.layout == "linear":
        return np.ascontiguousarray(value.T)
    return value


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


# --------------------------------------------------------------------------- public API


def strip_wrappers(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Unwraps ``{"model": sd}`` / ``{"state_dict": sd}`` and a DataParallel ``module.`` prefix."""
    sd = dict(state_dict)
    for wrapper in ("model", "state_dict"):
        if set(sd) == {wrapper} or (wrapper in sd and isinstance(sd[wrapper], Mapping)):
            sd = dict(sd[wrapper])
            break
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def head_classes(state_dict: Mapping[str, Any], arch: str) -> int | None:
    """Number of classes of a segmentation checkpoint's head (``None`` for backbones)."""
    spec = arch_spec(arch)
    if not spec.segmentation:
        return None
    key = spec.head_keys[0] + ".weight"
    if key not in state_dict:
        return None
    return int(_to_numpy(state_dict[key]).shape[0])


def has_aux(state_dict: Mapping[str, Any], arch: str) -> bool:
    """Whether a segmentation checkpoint holds an auxiliary head (``aux_classifier.*``)."""
    spec = arch_spec(arch)
    return spec.aux_prefix is not None and any(k.startswith(spec.aux_prefix) for k in state_dict)


def _is_head(spec: Arch, torch_key: str) -> bool:
    return any(torch_key.startswith(h + ".") for h in spec.head_keys)


def is_ignored(spec: Arch, torch_key: str) -> bool:
    """Keys dropped on purpose: ``num_batches_tracked`` and ImageNet classifier layers."""
    return torch_key.endswith("num_batches_tracked") or any(
        torch_key.startswith(p) for p in spec.ignored_prefixes
    )


def _listing(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" … and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _wrong_kind_hint(spec: Arch, given: set[str], unexpected: set[str], backbone_only: bool):
    """A line telling a backbone checkpoint from a full one, or None."""
    full = any(k.startswith("backbone.") for k in unexpected)
    if backbone_only and full:
        return (
            "  keys start with 'backbone.': this is a full model checkpoint; convert it as one "
            "(without backbone_only / --backbone_only)"
        )
    if not spec.segmentation and full:
        return (
            "  keys start with 'backbone.': this is a segmentation checkpoint; use its "
            "segmentation arch (e.g. fcn_resnet50, deeplabv3_resnet101)"
        )
    if spec.segmentation and unexpected and not any(k.startswith("backbone.") for k in given):
        if spec.backbone_arch is not None:
            return (
                f"  no key starts with 'backbone.': this looks like an ImageNet "
                f"{spec.backbone_arch} checkpoint; convert it with backbone_only=True "
                "(--backbone_only) to initialise the backbone"
            )
        return (
            "  no key starts with 'backbone.': this looks like an ImageNet backbone checkpoint; "
            "use its backbone arch (vgg16, resnet50, resnet101, mobilenet_v3_large)"
        )
    return None


def _check_keys(
    spec: Arch,
    state_dict: Mapping[str, Any],
    leaves: list[Leaf],
    drop_head: bool,
    backbone_only: bool = False,
):
    expected = {leaf.torch_key for leaf in leaves}
    given = {k for k in state_dict if not is_ignored(spec, k)}
    if drop_head:
        given = {k for k in given if not _is_head(spec, k)}
    missing, unexpected = expected - given, given - expected
    if not missing and not unexpected:
        return
    lines = [f"state dict does not match torchvision {spec.name!r}:"]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
    hint = _wrong_kind_hint(spec, given, unexpected, backbone_only)
    if hint:
        lines.append(hint)
    raise ConversionError("\n".join(lines))


def modernise_keys(state_dict: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """``state_dict`` with keys of older torchvision releases renamed to the current ones.

    Mask R-CNN checkpoints saved before torchvision 0.13 (such as the published COCO weights)
    have e.g. ``rpn.head.conv.weight`` for today's ``rpn.head.conv.0.0.weight``. Other archs:
    returned unchanged.

    Raises:
      ConversionError: a key present in both its old and its new form.
    """
    spec = arch_spec(arch)
    out: dict[str, Any] = {}
    renamed: dict[str, str] = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in spec.legacy_keys:
            if re.fullmatch(pattern, key):
                new = re.sub(pattern, repl, key, count=1)
                break
        if new in out:
            old = renamed.get(new, key)
            raise ConversionError(
                f"{arch}: the state dict has both {old!r} and {new!r} (torchvision's old and new "
                "name of one array); keep one of them"
            )
        if new != key:
            renamed[new] = key
        out[new] = value
    return out


def _resolve_classes(spec: Arch, state_dict, num_classes, drop_head) -> int:
    """The class count of a full model conversion (checks ``num_classes`` against the head)."""
    arch = spec.name
    found = head_classes(state_dict, arch)
    if num_classes is not None and found is not None and found != num_classes and not drop_head:
        raise ConversionError(
            f"{arch}: the checkpoint's head ({spec.head_keys[0]}.weight) has {found} "
            f"classes, but num_classes={num_classes} was asked. To fine-tune on "
            f"{num_classes} classes, either import with the checkpoint's {found} classes "
            "(omit --num_classes) or drop the head (--drop_head / drop_head=True), then "
            f"train the {num_classes}-class model with config.init_from=DIR: "
            "checkpoint.merge_pretrained loads everything else and keeps the new head "
            "at its initial value (reported as kept_initial / shape_mismatch)."
        )
    if num_classes is not None:
        return num_classes
    if found is None:
        if spec.backbone_arch and not any(k.startswith("backbone.") for k in state_dict):
            raise ConversionError(
                f"{arch}: no key starts with 'backbone.': this looks like an ImageNet "
                f"{spec.backbone_arch} checkpoint; convert it with backbone_only=True "
                "(--backbone_only) to initialise the backbone"
            )
        raise ConversionError(
            f"{arch}: no {spec.head_keys[0]}.weight in the checkpoint to read the "
            "number of classes from; pass num_classes"
        )
    return found


def conversion_spec(arch: str, backbone_only: bool = False) -> Arch:
    """The :class:`Arch` whose keys a conversion of ``arch`` reads (its backbone's when
    ``backbone_only``).

    Raises:
      ConversionError: ``backbone_only`` for an arch without a separate backbone checkpoint.
    """
    spec = arch_spec(arch)
    if not backbone_only:
        return spec
    if spec.backbone_arch is None:
        with_backbone = sorted(a for a, s in ARCHS.items() if s.backbone_arch)
        raise ConversionError(
            f"{arch}: backbone_only applies to archs whose backbone is a separate ImageNet "
            f"checkpoint ({', '.join(with_backbone)}); for {arch} convert the backbone arch itself"
        )
    return arch_spec(spec.backbone_arch)


def _backbone_abstract(spec: Arch, abstract: Mapping[str, Any]) -> dict:
    """The backbone part of a full model's shapes, nested under ``backbone`` as a backbone
    arch's conversion is."""
    out = {}
    for collection, tree in abstract.items():
        for name in spec.backbone_path:
            tree = tree.get(name, {}) if isinstance(tree, Mapping) else {}
        if tree:
            out[collection] = {"backbone": tree}
    return out


def _nest_backbone(spec: Arch, variables: dict) -> dict:
    """Backbone-arch variables (``{collection: {"backbone": …}}``) moved to
    ``spec.backbone_path`` of the full model."""
    out = {}
    for collection, tree in variables.items():
        tree = tree["backbone"]
        for name in reversed(spec.backbone_path):
            tree = {name: tree}
        out[collection] = tree
    return out


def _convert_leaves(arch: str, state_dict: Mapping[str, Any], leaves: list[Leaf]) -> dict:
    variables: dict = {}
    for leaf in leaves:
        value = _to_numpy(state_dict[leaf.torch_key])
        if tuple(value.shape) != leaf.torch_shape():
            raise ConversionError(
                f"{arch}: shape mismatch for {leaf.torch_key}: checkpoint {tuple(value.shape)}, "
                f"expected {leaf.torch_shape()} (segjax {leaf.flax_name} {leaf.shape})"
            )
        _set(variables, (leaf.collection, *leaf.path), _to_flax(leaf, value))
    return variables


def convert(
    state_dict: Mapping[str, Any],
    arch: str,
    *,
    num_classes: int | None = None,
    drop_head: bool = False,
    module=None,
    backbone_only: bool = False,
) -> dict:
    """Converts a torchvision state dict to segjax variables.

    Args:
      state_dict: torch key → array (NumPy or torch tensor), e.g. ``torch.load(path)`` or
        ``safetensors.numpy.load_file(path)``.
      arch: torchvision's name (see :data:`ARCHS`).
      num_classes: segmentation archs only: the classes the caller expects. ``None`` takes
        the checkpoint's. A different number is an error (see ``drop_head``).
      drop_head: segmentation archs only: leave the final classifier layers out (to fine-tune
        on other classes with ``init_from``, which keeps those at their initial value).
      module: the target Flax module (default :func:`default_module`); tests pass tiny
        variants with torchvision's structure. Backbone archs: the backbone module.
      backbone_only: ``state_dict`` is the ImageNet checkpoint of ``arch``'s backbone
        (``maskrcnn_resnet50_fpn``: a torchvision ``resnet50``); the result holds only the
        model's backbone part (``backbone/body/…``), for ``config.init_from``.

    Returns:
      ``{"params": …, "batch_stats": …}`` of float32 NumPy arrays (``batch_stats`` omitted for
      VGG16). Backbone archs give only ``backbone/…``.

    Raises:
      ConversionError: unknown arch, missing / unexpected keys (listed), a shape mismatch
        (key and both shapes), or a class count that differs from the checkpoint's head.
    """
    spec = arch_spec(arch)
    keys_spec = conversion_spec(arch, backbone_only)
    if backbone_only and drop_head:
        raise ConversionError(f"{arch}: drop_head and backbone_only exclude each other")
    state_dict = modernise_keys(strip_wrappers(state_dict), arch)
    aux = True
    if spec.segmentation and not backbone_only:
        num_classes = _resolve_classes(spec, state_dict, num_classes, drop_head)
        aux = has_aux(state_dict, arch)
    if module is None:
        if backbone_only and num_classes is None:
            num_classes = 91  # any count: only the backbone's shapes are used
        module = default_module(arch, num_classes=num_classes, aux=aux)
    abstract = abstract_variables(module, spec)
    if backbone_only:
        abstract = _backbone_abstract(spec, abstract)
    leaves = plan(keys_spec, abstract)
    if drop_head:
        leaves = [leaf for leaf in leaves if not _is_head(spec, leaf.torch_key)]
    _check_keys(keys_spec, state_dict, leaves, drop_head, backbone_only)
    variables = _convert_leaves(arch, state_dict, leaves)
    return _nest_backbone(spec, variables) if backbone_only else variables


def export(
    variables: Mapping[str, Any],
    arch: str,
    *,
    num_batches_tracked: bool = False,
) -> dict[str, np.ndarray]:
    """The inverse of :func:`convert`: segjax variables → torchvision state dict (NumPy).

    Args:
      variables: ``{"params": …, "batch_stats": …}`` as :func:`convert` returns them (or a
        segjax model's variables; backbone archs read only ``backbone/…``).
      arch: torchvision's name.
      num_batches_tracked: also emit a zero ``num_batches_tracked`` for every BatchNorm, so
        ``torch_model.load_state_dict({k: torch.from_numpy(v) …})`` works with ``strict=True``.

    Returns:
      torch key → NumPy array in torch layout (float32, bit-identical to the converted input).
    """
    spec = arch_spec(arch)
    abstract = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
    if not spec.segmentation:
        abstract = {k: {"backbone": v["backbone"]} for k, v in abstract.items() if "backbone" in v}
    out: dict[str, np.ndarray] = {}
    for leaf in plan(spec, jax.tree.map(np.asarray, abstract)):
        tree = abstract[leaf.collection]
        for name in leaf.path:
            tree = tree[name]
        out[leaf.torch_key] = _to_torch(leaf, np.asarray(tree))
        if num_batches_tracked and leaf.torch_key.endswith(".running_mean"):
            prefix = leaf.torch_key[: -len("running_mean")]
            out[prefix + "num_batches_tracked"] = np.zeros((), np.int64)
    return out
