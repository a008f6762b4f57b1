"""Fine-tune torchvision's COCO Mask R-CNN on your own COCO-format dataset (new classes).

Import torchvision's COCO weights once, then train on an annotation tool's export (a COCO
annotations JSON and the image folder its ``file_name`` entries are relative to, for a train
and a validation split):

    python -m segjax.weights.import_torchvision --arch maskrcnn_resnet50_fpn \\
        --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --output /ckpt/maskrcnn_r50_fpn
    python -m segjax.train --config configs/maskrcnn_finetune.py:classes=2 --workdir /tmp/ft \\
        --config.init_from=/ckpt/maskrcnn_r50_fpn \\
        --config.data.coco.train_json=/data/export/train.json \\
        --config.data.coco.train_images=/data/export/images \\
        --config.data.coco.val_json=/data/export/val.json \\
        --config.data.coco.val_images=/data/export/images

``classes`` is the number of object categories in the export (the model gets one more, the
background); their ids become contiguous labels 1…K in the order of ``categories``. The box and
mask predictors of COCO's 91 classes no longer fit: they start from scratch and the
``init_from`` report lists them (``shape_mismatch``); everything else starts from the COCO
weights. The recipe is torchvision's fine-tuning tutorial (``TorchVision Object Detection
Finetuning Tutorial``): SGD momentum 0.9, lr 0.005 at batch 2 (scaled linearly with
``batch``), weight decay 5e-4, lr × 0.1 after 30%, 60% and 90% of ``steps``, layers 2–4 of the
backbone trained; torchvision's 800/1333 resize with flip. Images without annotations are
dropped from train and kept (all background) in validation.

``:runlocal`` runs the same recipe for a few steps of ``maskrcnn_tiny`` on the built-in
``instance_shapes`` (tiny) data.
"""

import ml_collections

from segjax import recipes
from segjax.config import base_config, parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, classes=1, batch=2, steps=2000)
    c = base_config()
    c.model.name = "maskrcnn_resnet50_fpn"
    c.model.num_classes = args.classes + 1
    # torchvision's COCO weights run their frozen BatchNorms with eps = 0 (overwrite_eps).
    c.model.kwargs = ml_collections.ConfigDict({"bn_eps": 0.0})
    recipes.finetune_maskrcnn(c, batch_size=args.batch, num_steps=args.steps)
    if args.runlocal:
        recipes.runlocal_instances(c, model_name="maskrcnn_tiny")
        c.model.kwargs = ml_collections.ConfigDict()
    return c
