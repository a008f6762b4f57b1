"""Mask R-CNN with a ResNet-FPN backbone, as torchvision's ``maskrcnn_resnet50_fpn`` (inference).

``MaskRCNN.apply(variables, images, image_sizes, original_sizes, train=False)`` takes a padded,
normalised batch ``[B, H, W, 3]`` (:class:`~segjax.models.maskrcnn.transform.ImageTransform`
makes one) with each image's resized ``(height, width)`` and returns, per image, the
``detections_per_img`` best detections padded to a fixed count:

- ``boxes`` float32 ``[B, D, 4]`` (x1, y1, x2, y2) in original-image pixels when
  ``original_sizes`` is given, else in the pixels of the (resized) input;
- ``scores`` float32 ``[B, D]``, ``labels`` int32 ``[B, D]`` (1 … num_classes − 1);
- ``masks`` float32 ``[B, D, 28, 28]``: the probability of the detection's class over its box
  (paste them at the image size with :func:`~segjax.models.maskrcnn.transform.paste_masks`;
  full-size masks of 100 detections on 800×1344 would be 430 MB per image);
- ``valid`` bool ``[B, D]``; invalid entries are zeros.

Every step has a static shape, so the whole forward pass is one ``jax.jit`` and shards over the
batch. The pieces are methods for parity tests and training: :meth:`MaskRCNN.features`,
:meth:`~MaskRCNN.rpn_outputs`, :meth:`~MaskRCNN.proposals`, :meth:`~MaskRCNN.box_head_outputs`,
:meth:`~MaskRCNN.mask_head_outputs` (``model.apply(variables, …, method=…)``), and for the
training forward (:mod:`segjax.models.maskrcnn.losses`) the same on a computed pyramid:
:meth:`~MaskRCNN.rpn_on_features`, :meth:`~MaskRCNN.box_head_on_features`,
:meth:`~MaskRCNN.mask_head_on_features`.

Variables mirror torchvision's module tree (``backbone/body``, ``backbone/fpn``, ``rpn/head``,
``roi_heads/{box_head,box_predictor,mask_head,mask_predictor}``; see the submodules'
docstrings). ``params`` holds exactly what torchvision's ``parameters()`` counts (44,401,393 for
91 classes); the frozen BatchNorms' weight, bias and statistics are ``batch_stats``.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segjax.errors import ConfigError
from segjax.models.maskrcnn import heads, postprocess, rpn
from segjax.models.maskrcnn.backbone import ResNetFPN
from segjax.models.maskrcnn.transform import ImageTransform
from segjax.ops import roi_align

Dtype = Any

# torchvision's layers_to_train order: trainable_layers = k trains the first k of these.
_TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")


@dataclasses.dataclass(frozen=True)
class RoIConfig:
    """The multi-scale RoIAlign settings of the two heads (torchvision's ``MultiScaleRoIAlign``).

    Attributes:
      box_size: pooled size of the box head (7).
      mask_size: pooled size of the mask head (14).
      sampling_ratio: bilinear samples per bin and axis (2).
      canonical_scale: the LevelMapper's 224.
      canonical_level: the LevelMapper's 4.
    """

    box_size: int = 7
    mask_size: int = 14
    sampling_ratio: int = 2
    canonical_scale: int = 224
    canonical_level: int = 4


def _full_sizes(images: jax.Array) -> jax.Array:
    """Every image's size = the padded size, when no ``image_sizes`` are given."""
    return jnp.broadcast_to(jnp.asarray(images.shape[1:3], jnp.int32), (images.shape[0], 2))


class RegionProposalNetwork(nn.Module):
    """torchvision's ``rpn``: the shared :class:`~segjax.models.maskrcnn.rpn.RPNHead` and the
    proposal selection with train / test counts.

    Attributes:
      train_config: selection while training (torchvision: 2000 / 2000 per level / image).
      test_config: selection at inference (1000 / 1000).
      dtype: compute dtype.
    """

    train_config: rpn.ProposalConfig = rpn.ProposalConfig(2000, 2000)
    test_config: rpn.ProposalConfig = rpn.ProposalConfig(1000, 1000)
    dtype: Dtype = jnp.float32

    def setup(self):
        self.head = rpn.RPNHead(self.test_config.num_anchors(), dtype=self.dtype)

    def __call__(self, features, image_sizes, image_shape, *, train: bool = False):
        """``(objectness, deltas, (boxes [B, P, 4], scores [B, P], valid [B, P]))``."""
        objectness, deltas = self.head(features)
        config = self.train_config if train else self.test_config

        def one_image(obj, dlt, size):
            return rpn.select_proposals(obj, dlt, size, image_shape, config)

        proposals = jax.vmap(one_image)(objectness, deltas, image_sizes)
        return objectness, deltas, proposals


class RoIHeads(nn.Module):
    """torchvision's ``roi_heads``: box head and predictor, mask head and predictor, and the
    detection post-processing.

    Attributes:
      num_classes: classes including the background.
      representation_size: width of the box head's two FC layers (1024).
      mask_layers: channels of the mask head's convs.
      mask_dim_reduced: channels of the mask predictor's transposed conv.
      roi: RoIAlign settings.
      detection: post-processing settings.
      dtype: compute dtype.
    """

    num_classes: int = 91
    representation_size: int = 1024
    mask_layers: tuple[int, ...] = (256, 256, 256, 256)
    mask_dim_reduced: int = 256
    roi: RoIConfig = RoIConfig()
    detection: postprocess.DetectionConfig = postprocess.DetectionConfig()
    dtype: Dtype = jnp.float32

    def setup(self):
        self.box_head = heads.TwoMLPHead(self.representation_size, dtype=self.dtype)
        self.box_predictor = heads.FastRCNNPredictor(self.num_classes, dtype=self.dtype)
        self.mask_head = heads.MaskRCNNHeads(tuple(self.mask_layers), dtype=self.dtype)
        self.mask_predictor = heads.MaskRCNNPredictor(
            self.num_classes, self.mask_dim_reduced, dtype=self.dtype
        )

    def _pool(self, features, boxes, image_shape, size):
        return roi_align.multiscale_roi_align(
            list(features[:4]),
            boxes,
            tuple(image_shape),
            output_size=(size, size),
            sampling_ratio=self.roi.sampling_ratio,
            canonical_scale=self.roi.canonical_scale,
            canonical_level=self.roi.canonical_level,
        )

    def box_outputs(self, features, boxes, image_shape):
        """``(class_logits [B, K, C], box_regression [B, K, 4·C])`` for ``boxes [B, K, 4]``."""
        pooled = self._pool(features, boxes, image_shape, self.roi.box_size)
        return self.box_predictor(self.box_head(pooled))

    def mask_logits(self, features, boxes, image_shape):
        """Per-class mask logits ``[B, K, 28, 28, C]`` for ``boxes [B, K, 4]``."""
        pooled = self._pool(features, boxes, image_shape, self.roi.mask_size)
        return self.mask_predictor(self.mask_head(pooled))

    def __call__(self, features, proposals, proposal_valid, image_sizes, image_shape):
        """Detections (the model's output dict, boxes in input pixels) from proposals."""
        class_logits, box_regression = self.box_outputs(features, proposals, image_shape)

        def one_image(logits, regression, boxes, valid, size):
            return postprocess.detect(logits, regression, boxes, valid, size, self.detection)

        detections = jax.vmap(one_image)(
            class_logits, box_regression, proposals, proposal_valid, image_sizes
        )
        logits = self.mask_logits(features, detections["boxes"], image_shape)
        masks = postprocess.mask_probabilities(logits, detections["labels"])
        detections["masks"] = jnp.where(detections["valid"][..., None, None], masks, 0)
        return detections


class MaskRCNN(nn.Module):
    """Mask R-CNN, ResNet-FPN backbone with frozen BatchNorm: torchvision's ``MaskRCNN``.

    Attributes:
      num_classes: classes including the background (91 for COCO).
      depth: ResNet depth.
      width: ResNet base width (64).
      stage_blocks: ResNet blocks per stage (``None``: the depth's standard counts).
      fpn_channels: pyramid channels (256).
      representation_size: box head width (1024).
      mask_layers: mask head conv channels.
      mask_dim_reduced: mask predictor channels.
      bn_eps: frozen-BN epsilon: 1e-5 (torchvision's default), 0.0 for torchvision's COCO_V1
        Mask R-CNN weights (which run with ``overwrite_eps``).
      trainable_layers: ResNet stages that train, counted from the top (torchvision's
        ``trainable_backbone_layers``, default 3: layer2–4; 5 trains conv1 too). The model
        itself is unaffected; :meth:`frozen_prefixes` tells the trainer what to freeze.
      rpn_train: proposal selection in training (``train=True``).
      rpn_test: proposal selection at inference.
      roi: RoIAlign settings.
      detection: post-processing settings.
      transform: the host-side image transform these settings go with.
      dtype: compute dtype (boxes, scores and logits are float32).
    """

    num_classes: int = 91
    depth: int = 50
    width: int = 64
    stage_blocks: Sequence[int] | None = None
    fpn_channels: int = 256
    representation_size: int = 1024
    mask_layers: tuple[int, ...] = (256, 256, 256, 256)
    mask_dim_reduced: int = 256
    bn_eps: float = 1e-5
    trainable_layers: int = 3
    rpn_train: rpn.ProposalConfig = rpn.ProposalConfig(2000, 2000)
    rpn_test: rpn.ProposalConfig = rpn.ProposalConfig(1000, 1000)
    roi: RoIConfig = RoIConfig()
    detection: postprocess.DetectionConfig = postprocess.DetectionConfig()
    transform: ImageTransform = ImageTransform()
    dtype: Dtype = jnp.float32

    def setup(self):
        if not 0 <= self.trainable_layers <= 5:
            raise ConfigError(
                f"maskrcnn: trainable_layers must be in 0..5, got {self.trainable_layers!r}"
            )
        self.backbone = ResNetFPN(
            depth=self.depth,
            width=self.width,
            stage_blocks=self.stage_blocks,
            fpn_channels=self.fpn_channels,
            bn_eps=self.bn_eps,
            dtype=self.dtype,
        )
        self.rpn = RegionProposalNetwork(self.rpn_train, self.rpn_test, dtype=self.dtype)
        self.roi_heads = RoIHeads(
            num_classes=self.num_classes,
            representation_size=self.representation_size,
            mask_layers=tuple(self.mask_layers),
            mask_dim_reduced=self.mask_dim_reduced,
            roi=self.roi,
            detection=self.detection,
            dtype=self.dtype,
        )

    def frozen_prefixes(self) -> tuple[str, ...]:
        """``params`` path prefixes (``"/"``-joined) that torchvision freezes.

        For ``trainable_layers = k`` every ResNet stage outside the top ``k`` of
        (layer4, layer3, layer2, layer1, conv1): with the default 3, ``backbone/body/conv1/``
        and ``backbone/body/layer1_``. (The frozen BatchNorms are not parameters at all.)
        """
        frozen = _TRAINABLE_ORDER[self.trainable_layers :]
        return tuple(
            "backbone/body/conv1/" if name == "conv1" else f"backbone/body/{name}_"
            for name in frozen
        )

    def features(self, images: jax.Array) -> tuple[jax.Array, ...]:
        """The pyramid ``(P2, P3, P4, P5, P6)`` (torchvision's ``"0"`` … ``"3"``, ``"pool"``)."""
        return self.backbone(images)

    def rpn_outputs(self, images: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
        """RPN head outputs per level: objectness ``[B, H, W, A]``, deltas ``[B, H, W, 4·A]``."""
        return self.rpn.head(self.backbone(images))

    def proposals(self, images, image_sizes=None, *, train: bool = False):
        """``(boxes [B, P, 4], scores [B, P], valid [B, P])``: the RPN's proposals."""
        sizes = _full_sizes(images) if image_sizes is None else image_sizes
        features = self.backbone(images)
        return self.rpn(features, sizes, images.shape[1:3], train=train)[2]

    def box_head_outputs(self, images: jax.Array, boxes: jax.Array):
        """Box head ``(class_logits [B, K, C], box_regression [B, K, 4·C])`` on given boxes.

        ``boxes [B, K, 4]`` are in input pixels (the RoIs, e.g. proposals).
        """
        return self.roi_heads.box_outputs(self.backbone(images), boxes, images.shape[1:3])

    def mask_head_outputs(self, images: jax.Array, boxes: jax.Array) -> jax.Array:
        """Mask logits ``[B, K, 28, 28, num_classes]`` on given boxes ``[B, K, 4]``."""
        return self.roi_heads.mask_logits(self.backbone(images), boxes, images.shape[1:3])

    # The training forward (segjax.models.maskrcnn.losses) runs the backbone once and matches /
    # samples between the RPN and the heads, so it calls these on a computed pyramid.

    def rpn_on_features(self, features, image_sizes, image_shape, *, train: bool = True):
        """``(objectness, deltas, (boxes, scores, valid))`` of the RPN on a pyramid.

        ``features`` is :meth:`features`' output, ``image_shape`` the padded batch's static
        ``(H, W)``; ``train`` picks the training proposal counts.
        """
        return self.rpn(features, image_sizes, tuple(image_shape), train=train)

    def box_head_on_features(self, features, boxes: jax.Array, image_shape):
        """:meth:`box_head_outputs` on a computed pyramid (``boxes [B, K, 4]``)."""
        return self.roi_heads.box_outputs(features, boxes, tuple(image_shape))

    def mask_head_on_features(self, features, boxes: jax.Array, image_shape) -> jax.Array:
        """:meth:`mask_head_outputs` on a computed pyramid (``boxes [B, K, 4]``)."""
        return self.roi_heads.mask_logits(features, boxes, tuple(image_shape))

    def __call__(
        self,
        images: jax.Array,
        image_sizes: jax.Array | None = None,
        original_sizes: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> dict[str, jax.Array]:
        """Detections of a padded batch (module docstring).

        Args:
          images: normalised, zero-padded ``[B, H, W, 3]``.
          image_sizes: int ``[B, 2]`` each image's (height, width) inside the padding; ``None``
            for unpadded images.
          original_sizes: int ``[B, 2]`` sizes before resizing; boxes are mapped to them.
          train: use the training proposal counts (the frozen BN is the same either way).
        """
        sizes = _full_sizes(images) if image_sizes is None else jnp.asarray(image_sizes)
        image_shape = tuple(images.shape[1:3])
        features = self.backbone(images)
        _, _, (proposals, _, proposal_valid) = self.rpn(features, sizes, image_shape, train=train)
        detections = self.roi_heads(features, proposals, proposal_valid, sizes, image_shape)
        if original_sizes is not None:
            detections["boxes"] = postprocess.resize_boxes(
                detections["boxes"], sizes, original_sizes
            )
        return detections


def trainable_mask(model: MaskRCNN, params: Any) -> Any:
    """A pytree like ``params`` of bools: False under the model's :meth:`frozen_prefixes`."""
    prefixes = model.frozen_prefixes()

    def trainable(path, _):
        name = "/".join(str(getattr(k, "key", k)) for k in path) + "/"
        return not any(name.startswith(p) for p in prefixes)

    return jax.tree_util.tree_map_with_path(trainable, params)


def maskrcnn_resnet50_fpn(*, num_classes: int = 91, **kwargs) -> MaskRCNN:
    """torchvision's ``maskrcnn_resnet50_fpn`` (kwargs: :class:`MaskRCNN` attributes)."""
    return MaskRCNN(num_classes=num_classes, **kwargs)


# A tiny variant for tests: the same structure and code paths, a fraction of the size.
TINY_KWARGS = {
    "width": 8,
    "stage_blocks": (1, 1, 1, 1),
    "fpn_channels": 16,
    "representation_size": 32,
    "mask_layers": (16, 16, 16, 16),
    "mask_dim_reduced": 16,
    "rpn_train": rpn.ProposalConfig(pre_nms_top_n=100, post_nms_top_n=64),
    "rpn_test": rpn.ProposalConfig(pre_nms_top_n=64, post_nms_top_n=48),
    "detection": postprocess.DetectionConfig(detections_per_img=16),
    "transform": ImageTransform(min_size=64, max_size=128),
}


# A small variant that learns the built-in instance_shapes on a CPU in minutes (the instance
# quickstart): narrow, one block per stage, every layer trained (it starts from scratch).
SMALL_KWARGS = {
    "width": 16,
    "stage_blocks": (1, 1, 1, 1),
    "fpn_channels": 64,
    "representation_size": 256,
    "mask_layers": (64, 64, 64, 64),
    "mask_dim_reduced": 64,
    "trainable_layers": 5,
    "rpn_train": rpn.ProposalConfig(pre_nms_top_n=300, post_nms_top_n=150),
    "rpn_test": rpn.ProposalConfig(pre_nms_top_n=150, post_nms_top_n=100),
    "detection": postprocess.DetectionConfig(detections_per_img=50),
    "transform": ImageTransform(min_size=128, max_size=128),
}


def maskrcnn_small(*, num_classes: int = 4, **kwargs) -> MaskRCNN:
    """Small Mask R-CNN trained from scratch (ResNet width 16, one block per stage, 64-channel
    FPN, all layers trainable): the instance quickstart's model."""
    return MaskRCNN(num_classes=num_classes, **{**SMALL_KWARGS, **kwargs})


def maskrcnn_tiny(*, num_classes: int = 5, **kwargs) -> MaskRCNN:
    """Tiny Mask R-CNN for tests (ResNet width 8, one block per stage, 16-channel FPN)."""
    return MaskRCNN(num_classes=num_classes, **{**TINY_KWARGS, **kwargs})
