"""Mask R-CNN ResNet-50-FPN on COCO 2017, as torchvision's ``maskrcnn_resnet50_fpn`` (91 classes).

Train with torchvision's COCO recipe (:func:`segjax.recipes.coco_maskrcnn`: SGD 0.9, lr 0.02 at
batch 16 with linear scaling, 1000 warm-up steps, weight decay 1e-4, 26 epochs with lr × 0.1
after 16 and 22, 800/1333 resize with flip) from an ImageNet backbone:

    python -m segjax.weights.import_torchvision --arch maskrcnn_resnet50_fpn --backbone_only \\
        --checkpoint resnet50-0676ba61.pth --output /ckpt/r50_backbone
    python -m segjax.train --config configs/maskrcnn_resnet50_fpn_coco.py --workdir /tmp/mrcnn \\
        --config.init_from=/ckpt/r50_backbone --config.data.manual_dir=/data/coco

(``manual_dir`` holds ``train2017.zip``, ``val2017.zip`` and
``annotations_trainval2017.zip`` or their extracted folders; labels are COCO's category ids,
torchvision's 91-slot layout). ``:batch=8`` scales the recipe to a global batch of 8.
Evaluate (COCO bbox and segm AP on val2017) or predict with torchvision's COCO weights,
imported once:

    python -m segjax.weights.import_torchvision --arch maskrcnn_resnet50_fpn \\
        --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output /ckpt/maskrcnn_r50_fpn
    python -m segjax.evaluate --config configs/maskrcnn_resnet50_fpn_coco.py \\
        --checkpoint /ckpt/maskrcnn_r50_fpn --config.data.manual_dir=/data/coco
    python -m segjax.predict --config configs/maskrcnn_resnet50_fpn_coco.py \\
        --checkpoint /ckpt/maskrcnn_r50_fpn IMAGE_OR_FOLDER ... --output /tmp/pred

``:runlocal`` swaps in ``maskrcnn_tiny`` on the built-in ``instance_shapes`` (tiny) data for
smoke tests.
"""

import ml_collections

from segjax import recipes
from segjax.config import base_config, parse_arg
from segjax.data import coco_names


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, batch=16)
    c = base_config()
    c.model.name = "maskrcnn_resnet50_fpn"
    c.model.num_classes = coco_names.NUM_CLASSES  # torchvision's layout: label = COCO id
    # torchvision's COCO_V1 weights run their frozen BatchNorms with eps = 0 (overwrite_eps).
    c.model.kwargs = ml_collections.ConfigDict({"bn_eps": 0.0})
    recipes.coco_maskrcnn(c, batch_size=args.batch)
    c.data.coco.label_map = "category_id"
    c.data.class_names = coco_names.CATEGORIES
    if args.runlocal:
        recipes.runlocal_instances(c, model_name="maskrcnn_tiny")
        c.model.kwargs = ml_collections.ConfigDict()
        # maskrcnn_tiny's own resize (64 / 128, the transform's buckets) for mixed-size inputs.
        c.data.instances.max_size = 128
        c.data.instances.pad_size = ()
    return c
