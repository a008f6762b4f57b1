"""The U-Net paper recipe end to end: instance-mask folder data → border weight map → elastic
deformation → CE + Dice → object-level metrics in training's logs and in ``segjax.evaluate``.

(That a killed and resumed run with this recipe ends bitwise equal is tests/test_resilience.py.)
"""

import json

import numpy as np
import pytest

from segjax import data as data_lib
from segjax import evaluate, losses, trainer
from segjax.input import pipeline


def _eval_rows(workdir):
    with open(workdir / "metrics.jsonl") as f:
        return [row for row in map(json.loads, f) if "split" in row]


def test_training_and_evaluate_report_object_metrics(cells_config, tmp_path):
    workdir = tmp_path / "run"
    summary = trainer.run(cells_config, str(workdir))
    for key in ("miou", "mdice", "object_precision", "object_recall", "object_f1", "aji"):
        assert key in summary
    (logged,) = _eval_rows(workdir)
    assert logged["object_f1"] == summary["object_f1"] and logged["aji"] == summary["aji"]
    # Counts are of the 4 validation images' true cells: recomputed here from the data.
    source = data_lib.get_source(cells_config.data)
    true_cells = sum(
        len(np.unique(ex["instances"])) - 1 for ex in source.as_dataset("val").as_numpy_iterator()
    )
    assert logged["object_tp"] + logged["object_fn"] == true_cells

    result = evaluate.run(cells_config, workdir=str(workdir), output_dir=str(tmp_path / "eval"))
    written = json.loads((tmp_path / "eval" / "eval_val.json").read_text())
    for key in ("object_tp", "object_fp", "object_fn", "aji"):
        assert written[key] == result[key] == summary[key]


def test_training_batches_carry_the_weight_map_and_it_changes_the_loss(cells_config):
    source = data_lib.get_source(cells_config.data)
    assert source.info.fields == ("instances", "weights")
    batch = next(pipeline.train_iterator(source, cells_config))
    assert set(batch) == {"image", "mask", "weights"}
    weights, mask = batch["weights"], batch["mask"]
    assert np.all(weights[mask == 255] == 0)  # ignored (padding) pixels weigh nothing
    assert weights.max() > 2  # the border term between touching cells (w0 = 10)
    logits = np.random.default_rng(0).normal(size=mask.shape + (2,)).astype(np.float32)
    weighted, _ = losses.cross_entropy(logits, mask, weights=weights)
    plain, _ = losses.cross_entropy(logits, mask)
    assert abs(float(weighted) - float(plain)) > 1e-3


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.loss.dicee", 1.0, r"config\.train\.loss\.dicee: unknown loss term"),
        ("train.loss.dice", -1.0, r"config\.train\.loss\.dice=-1\.0"),
    ],
)
def test_bad_loss_config_stops_before_training(cells_config, tmp_path, key, value, message):
    node, leaf = cells_config, key.split(".")
    for part in leaf[:-1]:
        node = node[part]
    node[leaf[-1]] = value
    with pytest.raises(ValueError, match=message):
        trainer.run(cells_config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir()
    )


def _interior(shape, margin):
    inside = np.zeros(shape, bool)
    inside[margin:-margin, margin:-margin] = True
    return inside


@pytest.mark.parametrize("elastic_sigma", [0.0, 1.5])
def test_augmented_weight_map_is_the_map_of_the_augmented_instances(elastic_sigma):
    """The stored map, carried through crop / flip / elastic, equals the map recomputed from
    the transformed instance mask, away from the crop border (where instances are cut off)."""
    import tensorflow as tf

    from segjax.data import blobs
    from segjax.input import augment

    rng = np.random.default_rng(3)
    image, instances, _ = blobs.touching_blobs(rng, 96, radius_range=(6, 9))
    class_mask = (instances > 0).astype(np.uint8)
    options = {"w0": 10.0, "sigma": 3.0, "class_weights": (1.0, 1.0)}  # w_c fixed: crop-proof
    stored = losses.unet_weight_map(instances, class_mask, **options)
    elastic = augment.ElasticParams(grid=3, sigma=elastic_sigma)
    for seed in range(4):
        out = augment.train_transform_fields(
            {
                "image": np.repeat(image[..., None], 3, axis=-1),
                "mask": class_mask,
                "weights": stored,
                "instances": instances.astype(np.int32),
            },
            tf.constant([seed, 7], tf.int64),
            crop_size=(64, 64),
            scale_range=(1.0, 1.0),
            elastic=elastic,
        )
        mask, weights, ids = (out[k].numpy() for k in ("mask", "weights", "instances"))
        recomputed = losses.unet_weight_map(ids, mask, **options)
        inside = _interior(mask.shape, margin=12)
        diff = np.abs(weights - recomputed)[inside]
        if elastic_sigma == 0:  # a rigid transform keeps distances: exact up to float32
            np.testing.assert_allclose(weights[inside], recomputed[inside], atol=1e-4)
        else:  # the deformation stretches distances a little: small against w0 = 10
            assert diff.mean() < 0.2 and np.quantile(diff, 0.95) < 1.0, (diff.mean(), diff.max())
        assert np.corrcoef(weights[inside], recomputed[inside])[0, 1] > 0.95


def test_instance_model_on_semantic_data_is_refused_with_one_line(tiny_config, tmp_path):
    tiny_config.model.name = "maskrcnn_tiny"
    expected = r"^config\.model\.name='maskrcnn_tiny' is an instance model but dataset 'shapes'"
    with pytest.raises(ValueError, match=expected):
        trainer.run(tiny_config, str(tmp_path / "run"))
