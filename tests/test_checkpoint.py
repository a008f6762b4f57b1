import chex
import jax
import numpy as np
import pytest

from segjax import checkpoint, sharding, trainer


def test_save_restore_round_trip_onto_other_meshes(tiny_config, tmp_path):
    config = tiny_config
    config.mesh.data, config.mesh.fsdp = 2, 4
    config.mesh.min_shard_size = 0
    t8 = trainer.Trainer(config, mesh=sharding.make_mesh(config.mesh, jax.devices()))
    state = t8.init_state()
    batch = {
        "image": np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32),
        "mask": np.ones((8, 32, 32), np.uint8),
    }
    state, _ = t8.train_step(state, sharding.host_to_global(batch, t8.mesh))
    expected = jax.device_get(state)
    manager = checkpoint.make_manager(str(tmp_path), keep=2)
    checkpoint.save_state(manager, 1, state)
    manager.wait_until_finished()
    assert manager.latest_step() == 1
    for n, (data, fsdp) in ((1, (1, 1)), (4, (2, 2))):
        config.mesh.data, config.mesh.fsdp = data, fsdp
        t = trainer.Trainer(config, mesh=sharding.make_mesh(config.mesh, jax.devices()[:n]))
        restored = checkpoint.restore_state(manager, t.abstract_with_shardings())
        chex.assert_trees_all_equal(jax.device_get(restored), expected)
        assert restored.params is not None
        leaf = jax.tree.leaves(restored.params)[0]
        assert leaf.sharding.mesh.devices.size == n
    manager.close()


def test_variables_checkpoint_and_merge_report(tmp_path):
    pretrained = {
        "params": {
            "backbone": {"conv": {"kernel": np.ones((3, 3, 3, 4), np.float32)}},
            "head": {"kernel": np.ones((1, 1, 4, 21), np.float32)},
            "extra": {"bias": np.zeros((2,), np.float32)},
        }
    }
    checkpoint.save_variables(str(tmp_path / "w"), pretrained)
    loaded = checkpoint.read_weights(str(tmp_path / "w"))
    chex.assert_trees_all_equal(loaded, pretrained)
    model_vars = {
        "params": {
            "backbone": {"conv": {"kernel": np.zeros((3, 3, 3, 4), np.float32)}},
            "head": {"kernel": np.zeros((1, 1, 4, 5), np.float32)},
            "new": {"bias": np.zeros((3,), np.float32)},
        }
    }
    merged, report = checkpoint.merge_pretrained(model_vars, loaded)
    np.testing.assert_array_equal(merged["params"]["backbone"]["conv"]["kernel"], 1.0)
    np.testing.assert_array_equal(merged["params"]["head"]["kernel"], 0.0)
    assert report["loaded"] == ["params/backbone/conv/kernel"]
    assert report["kept_initial"] == ["params/new/bias"]
    assert report["unused"] == ["params/extra/bias"]
    assert report["shape_mismatch"] == ["params/head/kernel: (1, 1, 4, 21) vs (1, 1, 4, 5)"]


def _trained_checkpoint(config, workdir):
    t = trainer.Trainer(config, mesh=sharding.make_mesh(config.mesh, jax.devices()[:1]))
    state = t.init_state()
    manager = checkpoint.make_manager(str(workdir), keep=2)
    checkpoint.save_state(manager, 3, state)
    manager.wait_until_finished()
    manager.close()
    return t, jax.device_get(state)


def test_restore_variables_reads_only_the_model_variables(tiny_config, tmp_path, monkeypatch):
    t, state = _trained_checkpoint(tiny_config, tmp_path)
    # No optimiser may be built to restore for inference.
    monkeypatch.setattr(
        trainer.optim, "make_optimizer", lambda *a, **k: pytest.fail("optimiser built")
    )
    restored = checkpoint.load_for_inference(tiny_config, workdir=str(tmp_path))
    assert restored.step == 3 and set(restored.variables) == {"params", "batch_stats"}
    chex.assert_trees_all_equal(jax.device_get(restored.variables["params"]), state.params)
    chex.assert_trees_all_equal(
        jax.device_get(restored.variables["batch_stats"]), state.batch_stats
    )
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 7 .* steps: \[3\]"):
        checkpoint.load_for_inference(tiny_config, workdir=str(tmp_path), step=7)
    # A variables checkpoint with an extra array the model does not use restores too.
    extra = {"params": dict(state.params, unused_head={"kernel": np.ones(3, np.float32)})}
    checkpoint.save_variables(str(tmp_path / "vars"), dict(extra, batch_stats=state.batch_stats))
    from_vars = checkpoint.load_for_inference(tiny_config, checkpoint_dir=str(tmp_path / "vars"))
    assert from_vars.step is None and "unused_head" not in from_vars.variables["params"]


def test_checkpoint_of_another_model_is_one_clear_error(tiny_config, tmp_path):
    _trained_checkpoint(tiny_config, tmp_path)
    wider = tiny_config.copy_and_resolve_references()
    wider.model.kwargs.width = 2 * tiny_config.model.kwargs.width
    t = trainer.Trainer(wider, mesh=sharding.make_mesh(wider.mesh, jax.devices()[:1]))
    manager = checkpoint.make_manager(str(tmp_path), keep=2)
    with pytest.raises(checkpoint.CheckpointMismatchError) as info:
        checkpoint.restore_state(manager, t.abstract_with_shardings())
    manager.close()
    message = str(info.value)
    assert "\n" not in message and str(tmp_path) in message and "new --workdir" in message
    first = next(
        checkpoint.mismatches(
            checkpoint.stored_tree(f"{tmp_path}/checkpoints/3/default"), t.abstract_state
        )
    )
    assert first in message and first.startswith("params/")
    with pytest.raises(checkpoint.CheckpointMismatchError, match="does not fit"):
        checkpoint.load_for_inference(wider, workdir=str(tmp_path))
