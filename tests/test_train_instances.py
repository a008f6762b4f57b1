"""Mask R-CNN through the one trainer (issue: instance segmentation II): the instance task's
loss terms, frozen layers, COCO evaluation in training and in ``segjax.evaluate``, and the same
losses on 1 and 8 devices."""

import json

import jax
import numpy as np
import pytest

from segjax import data as data_lib
from segjax import evaluate as evaluate_cli
from segjax import optim, sharding, tasks, trainer
from segjax.models.maskrcnn import losses as maskrcnn_losses


def test_instance_run_logs_five_losses_and_coco_ap_and_evaluate_agrees(instance_config, tmp_path):
    workdir = tmp_path / "run"
    summary = trainer.run(instance_config, str(workdir))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train_rows = [r for r in rows if "split" not in r]
    assert [r["step"] for r in train_rows] == [2, 4]
    for row in train_rows:
        terms = [row[name] for name in maskrcnn_losses.LOSS_NAMES]
        assert all(np.isfinite(terms)) and min(terms) >= 0
        np.testing.assert_allclose(sum(terms), row["loss"], rtol=1e-5)
    final = [r for r in rows if r.get("split") == "validation"][-1]
    for key in ("bbox/AP", "segm/AP", "segm/AP50", "bbox/ARl"):
        assert key in final and -1 <= final[key] <= 1, key
    assert summary["step"] == 4 and summary["segm/AP"] == final["segm/AP"]
    # segjax.evaluate on the checkpoint: the same images, the same statistics.
    result = evaluate_cli.run(instance_config, workdir=str(workdir), output_dir=str(tmp_path))
    assert result["num_images"] == 8 and result["step"] == 4
    for key in ("bbox/AP", "segm/AP", "segm/AR100"):
        assert result[key] == pytest.approx(final[key], abs=1e-9), key
    written = json.load(open(tmp_path / "eval_validation.json"))
    assert written["segm/AP"] == result["segm/AP"]


def test_frozen_layers_get_no_update_and_no_optimizer_state(instance_config):
    config = instance_config
    config.model.kwargs.trainable_layers = 3  # torchvision's default: conv1 and layer1 frozen
    config.optim.weight_decay = 0.1  # would move a frozen kernel if it reached it
    config.optim.lr = 0.05
    t = trainer.Trainer(config, mesh=sharding.make_mesh(config.mesh, jax.devices()[:1]))
    state = t.init_state()
    before = jax.device_get(state.params)
    source = data_lib.get_source(config.data)
    batch = next(t.task.train_stream(source, config))
    batch = sharding.host_to_global(t.task.loss_inputs(batch), t.mesh)
    state, step_metrics = t.train_step(state, batch)
    after = jax.device_get(state.params)
    frozen, trained = 0, 0
    for path, old in jax.tree_util.tree_flatten_with_path(before)[0]:
        name = sharding.path_to_str(path)
        new = after
        for k in path:
            new = new[k.key]
        if name.startswith(("backbone/body/conv1/", "backbone/body/layer1_")):
            np.testing.assert_array_equal(new, old, err_msg=name)
            frozen += 1
        elif not np.array_equal(new, old):
            trained += 1
    assert frozen and trained
    # SGD momentum traces exist only for the trained parameters.
    opt_names = [
        sharding.path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    ]
    assert not [n for n in opt_names if "layer1_" in n or "body/conv1/" in n]
    assert np.isfinite(float(step_metrics["loss"]))


def test_eight_devices_train_the_same_losses_as_one(instance_config):
    config = instance_config
    config.train.batch_size = 8
    source = data_lib.get_source(config.data)
    batches = tasks.for_config(config).train_stream(source, config)
    host = [next(batches) for _ in range(5)]

    def losses_on(devices):
        t = trainer.Trainer(config, mesh=sharding.make_mesh(config.mesh, devices))
        state, out = t.init_state(), []
        for b in host:
            batch = sharding.host_to_global(t.task.loss_inputs(b), t.mesh)
            state, m = t.train_step(state, batch)
            out.append([float(m[k]) for k in ("loss", *maskrcnn_losses.LOSS_NAMES)])
        return np.array(out)

    one, eight = losses_on(jax.devices()[:1]), losses_on(jax.devices())
    np.testing.assert_allclose(eight, one, rtol=1e-4, atol=1e-6)


def test_multistep_schedule_and_its_errors():
    from segjax.config import base_config

    c = base_config().optim
    c.schedule, c.lr, c.decay_steps, c.decay_factor = "multistep", 0.02, (100, 150), 0.1
    c.warmup_steps, c.warmup_init_factor = 10, 1e-3
    schedule = optim.learning_rate_schedule(c, 200)
    assert float(schedule(0)) == pytest.approx(0.02e-3, rel=1e-4)
    for step, lr in ((10, 0.02), (99, 0.02), (100, 0.002), (149, 0.002), (150, 0.0002)):
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-5), step
    c.decay_steps = (5,)
    with pytest.raises(ValueError, match=r"decay_steps=\(5,\)"):
        optim.learning_rate_schedule(c, 200)


def test_instance_task_is_chosen_by_the_model_and_checks_the_data(instance_config):
    model = tasks.create_model(instance_config)
    assert tasks.for_config(instance_config).name == "instance"
    # The model resizes for prediction as the data pipeline does.
    assert (model.transform.min_size, model.transform.max_size) == (64, 64)
    info = data_lib.get_source(instance_config.data).info
    instance_config.model.num_classes = 3
    with pytest.raises(ValueError, match="num_classes=3 but dataset 'instance_shapes' has 4"):
        tasks.for_config(instance_config).check_dataset(instance_config, info)


def test_coco_recipe_follows_torchvision():
    from segjax import recipes
    from segjax.config import base_config

    c = base_config()
    recipes.coco_maskrcnn(c, batch_size=8)
    per_epoch = recipes.COCO_TRAIN_IMAGES // 8
    assert c.optim.lr == pytest.approx(0.01)
    assert c.train.num_steps == 26 * per_epoch
    assert tuple(c.optim.decay_steps) == (16 * per_epoch, 22 * per_epoch)
    assert (c.optim.warmup_steps, c.optim.warmup_init_factor) == (1000, 1e-3)
    assert (c.optim.momentum, c.optim.weight_decay) == (0.9, 1e-4)
    assert tuple(c.data.instances.min_size) == (800,) and c.data.instances.max_size == 1333
