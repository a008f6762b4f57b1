import chex
import jax
import numpy as np

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
    loaded = checkpoint.load_variables(str(tmp_path / "w"))
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
