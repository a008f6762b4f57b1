"""Fine-tuning imported torchvision Mask R-CNN weights on a COCO-format export with other
classes (configs/maskrcnn_finetune.py): the predictors that no longer fit start afresh and the
``init_from`` report names them; the rest starts from the imported weights."""

import json

import jax
import numpy as np

from segjax import checkpoint, trainer
from segjax.weights import torchvision as tv
from tests import test_data_coco as coco_export
from tests import test_maskrcnn_parity as parity
from tests.helpers import load_config

# The predictors of the fixture's 5 classes (4 + background); the export has 2 categories.
HEADS = ("box_predictor/cls_score", "box_predictor/bbox_pred", "mask_predictor/mask_fcn_logits")
STEPS = 6


def _export(root):
    """An annotation tool's export: train.json, val.json and images/ (2 categories)."""
    coco_export._write_images(root / "images")
    train, val = coco_export._annotations()
    coco_export._write_json(root / "train.json", train)
    coco_export._write_json(root / "val.json", val)
    return root


def _get(tree, path: str):
    for key in path.split("/"):
        tree = tree[key]
    return np.asarray(tree)


def test_finetune_from_torchvision_weights_reinitialises_the_heads(tmp_path, capsys):
    # torchvision-structured weights (the parity fixture's slim Mask R-CNN, maskrcnn_tiny's
    # structure) converted as segjax.weights.import_torchvision converts them.
    imported = tv.convert(parity.fixture_state_dict(), parity.ARCH, module=parity.fixture_model())
    checkpoint.save_variables(str(tmp_path / "imported"), imported)
    export = _export(tmp_path / "export")

    # batch 8: the 8 test devices.
    config = load_config("maskrcnn_finetune.py", f"classes=2,batch=8,steps={STEPS}")
    assert config.model.num_classes == 3 and config.optim.lr == 0.02
    assert config.optim.decay_steps == (2, 4, 5)
    config.model.name = "maskrcnn_tiny"
    assert config.model.kwargs.bn_eps == 0.0  # torchvision's COCO weights' (and the fixture's)
    config.init_from = str(tmp_path / "imported")
    # The fixture's weights are random (gradient norm ~400, where a trained model's are ~1–10):
    # at the recipe's lr they diverge within 3 steps.
    config.optim.lr = 1e-4
    config.runtime.conv_impl = "xla"  # compile time; the matmul convolutions are tested elsewhere
    config.data.data_dir = str(tmp_path / "tfds")
    for split, name in (("train", "train"), ("val", "val")):
        config.data.coco[f"{split}_json"] = str(export / f"{name}.json")
        config.data.coco[f"{split}_images"] = str(export / "images")
    config.data.instances.min_size, config.data.instances.max_size = (64,), 64
    config.data.instances.pad_size = (64, 64)
    config.train.checkpoint_every = STEPS
    config.eval.batch_size = 8
    summary = trainer.run(config, str(tmp_path / "run"))
    out = capsys.readouterr().out

    mismatched = [f"params/roi_heads/{h}/{leaf}" for h in HEADS for leaf in ("bias", "kernel")]
    assert f"{len(mismatched)} shape mismatches" in out
    for name in mismatched:
        assert f"shape_mismatch: {name}: " in out, name
    final = checkpoint.read_weights(str(tmp_path / f"run/checkpoints/{STEPS}/default"))
    assert _get(final, "params/roi_heads/box_predictor/cls_score/kernel").shape[-1] == 3
    assert _get(final, "params/roi_heads/box_predictor/bbox_pred/kernel").shape[-1] == 4 * 3
    # torchvision's trainable_backbone_layers=3: conv1 and layer1 keep the imported bits,
    # the trained layers moved away from them.
    leaves = jax.tree_util.tree_flatten_with_path(imported["params"])[0]
    names = ["params/" + "/".join(k.key for k in path) for path, _ in leaves]
    frozen = [
        n
        for n in names
        if n.startswith(("params/backbone/body/conv1/", "params/backbone/body/layer1_"))
    ]
    assert frozen
    for name in frozen:
        np.testing.assert_array_equal(_get(final, name), _get(imported, name), err_msg=name)
    rpn = "params/rpn/head/conv/kernel"
    assert rpn in names and not np.array_equal(_get(final, rpn), _get(imported, rpn))
    rows = [json.loads(line) for line in open(tmp_path / "run/metrics.jsonl")]
    assert all(np.isfinite(r["loss"]) for r in rows if "loss" in r)
    assert summary["step"] == STEPS and -1 <= summary["segm/AP"] <= 1
