"""The U-Net paper recipe end to end: instance-mask folder data → border weight map → elastic
deformation → CE + Dice → object-level metrics in training's logs and in ``segjax.evaluate``.

(That a killed and resumed run with this recipe ends bitwise equal is tests/test_resilience.py.)
"""

import json

import numpy as np
import pytest

from segjax import data as data_lib
from segjax import evaluate, input_pipeline, losses, trainer


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
    batch = next(input_pipeline.train_iterator(source, cells_config))
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
