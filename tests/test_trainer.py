import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from segjax import optim, sharding, tasks, trainer
from segjax.config import base_config


def _batch(config, seed=0, batch=8):
    rng = np.random.default_rng(seed)
    h, w = config.data.crop_size
    return {
        "image": rng.normal(size=(batch, h, w, 3)).astype(np.float32),
        "mask": rng.integers(0, config.model.num_classes, (batch, h, w)).astype(np.uint8),
    }


def _micro_config():
    config = base_config()
    config.model.kwargs = ml_collections.ConfigDict({"width": 2, "depth": 1})
    config.model.name = "unet"
    config.data.crop_size = (8, 8)
    config.optim.name = "adamw"
    config.optim.lr = 1e-2
    return config


class TrainStepTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_step_updates_params_and_batch_stats(self):
        config = _micro_config()
        model = tasks.create_model(config)
        tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
        state = trainer.make_init_fn(model, tx, config)(jax.random.key(0))
        step = self.variant(trainer.make_train_step(model, tx, schedule, config))
        batch = _batch(config, batch=2)
        new_state, metrics = step(state, batch)
        assert int(new_state.step) == 1 and int(new_state.nonfinite) == 0
        chex.assert_tree_all_finite((new_state.params, metrics))
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
        assert all(jax.tree.leaves(changed))
        moved = jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)), state.batch_stats, new_state.batch_stats
        )
        assert all(jax.tree.leaves(moved))
        # Same numbers with and without jit (each variant is compared against plain jit).
        ref_state, ref_metrics = jax.jit(trainer.make_train_step(model, tx, schedule, config))(
            state, batch
        )
        chex.assert_trees_all_close(metrics, ref_metrics, rtol=1e-4, atol=1e-6)
        chex.assert_trees_all_close(new_state.params, ref_state.params, rtol=1e-4, atol=1e-6)


def test_nonfinite_batch_skips_update():
    config = _micro_config()
    t = trainer.Trainer(config, mesh=sharding.make_mesh(config.mesh, jax.devices()[:1]))
    state = t.init_state()
    before = jax.device_get(state.params)
    bad = _batch(config)
    bad["image"][0, 0, 0, 0] = np.nan
    state, metrics = t.train_step(state, sharding.host_to_global(bad, t.mesh))
    assert not np.isfinite(float(metrics["loss"]))
    assert int(state.nonfinite) == 1 and int(state.step) == 1
    chex.assert_trees_all_equal(jax.device_get(state.params), before)
    state, metrics = t.train_step(state, sharding.host_to_global(_batch(config), t.mesh))
    assert np.isfinite(float(metrics["loss"])) and int(state.nonfinite) == 1


def _losses_on(config, devices, steps=5):
    mesh = sharding.make_mesh(config.mesh, devices)
    t = trainer.Trainer(config, mesh=mesh)
    state = t.init_state()
    out = []
    for i in range(steps):
        state, m = t.train_step(state, sharding.host_to_global(_batch(config, seed=i), mesh))
        out.append(float(m["loss"]))
    return np.array(out), jax.device_get(state.params), state


def test_eight_devices_match_one_device():
    assert jax.device_count() == 8
    config = _micro_config()
    losses_1, params_1, _ = _losses_on(config, jax.devices()[:1])
    losses_8, params_8, state_8 = _losses_on(config, jax.devices())
    np.testing.assert_allclose(losses_8, losses_1, rtol=2e-5)
    chex.assert_trees_all_close(params_8, params_1, rtol=1e-4, atol=1e-5)
    # The batch really was split over 8 devices.
    assert state_8.step.sharding.mesh.devices.size == 8


def test_fsdp_mesh_shards_kernels_and_matches():
    config = _micro_config()
    config.model.kwargs.width = 4
    config.mesh.data, config.mesh.fsdp = 2, 4
    config.mesh.min_shard_size = 0
    losses_f, params_f, state = _losses_on(config, jax.devices())
    config.mesh.data, config.mesh.fsdp = -1, 1
    losses_1, params_1, _ = _losses_on(config, jax.devices()[:1])
    np.testing.assert_allclose(losses_f, losses_1, rtol=2e-5)
    chex.assert_trees_all_close(params_f, params_1, rtol=1e-4, atol=1e-5)
    flat = jax.tree_util.tree_flatten_with_path(state.params)[0]
    kernels = [(sharding.path_to_str(p), x) for p, x in flat if "kernel" in sharding.path_to_str(p)]
    sharded = [n for n, x in kernels if "fsdp" in str(x.sharding.spec)]
    assert sharded, "no kernel was sharded over fsdp"
    for name, x in kernels:
        if any(d % 4 == 0 for d in x.shape):
            assert name in sharded, name
    # Optimiser state (Adam moments) follows its parameter.
    opt_flat = jax.tree_util.tree_flatten_with_path(state.opt_state)[0]
    for path, leaf in opt_flat:
        name = sharding.path_to_str(path)
        if name.endswith("kernel") and leaf.ndim == 4 and any(d % 4 == 0 for d in leaf.shape):
            assert "fsdp" in str(leaf.sharding.spec), name


def test_mesh_errors():
    import ml_collections
    import pytest

    with pytest.raises(ValueError, match="does not match 8 devices"):
        sharding.make_mesh(ml_collections.ConfigDict({"data": 3, "fsdp": 2}))
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": -1}))


@pytest.mark.parametrize("key", ["train", "eval"])
def test_batch_that_does_not_split_over_the_devices_is_one_line(key):
    config = _micro_config()
    config[key].batch_size = 6
    with pytest.raises(
        ValueError, match=rf"config\.{key}\.batch_size=6 does not split over the mesh's 8 devices"
    ):
        trainer.Trainer(config, mesh=sharding.make_mesh(config.mesh, jax.devices()))
