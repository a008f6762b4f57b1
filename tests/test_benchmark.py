"""Tests of the benchmarks package (train_step, torchvision_step, profile_step, common)."""

import pathlib
import subprocess
import sys

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, profile_step, torchvision_step, train_step
from segjax import optim, trainer
from segjax.runtime import host_heap


class _TinyNet(nn.Module):
    """Every conv kind a segmentation model uses (strided, atrous, depthwise, 1×1), small."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, images, *, train=False):
        x = nn.Conv(8, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)), name="stem")(images)
        x = nn.Conv(8, (3, 3), padding=((2, 2), (2, 2)), kernel_dilation=(2, 2), name="atrous")(x)
        x = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=8, name="dw")(x)
        x = nn.Conv(self.num_classes, (1, 1), name="head")(nn.relu(x))
        return {"out": jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2).astype(jnp.float32)}


def test_run_jax_tiny_model_figures():
    result = train_step.run_jax(
        _TinyNet(), batch=2, size=16, steps=1, num_classes=3, peak=(1e11, "test peak")
    )
    figures = ("compile_s", "step_ms", "train_img_s", "eval_img_s", "flops_per_step", "mfu")
    for key in (*figures, "executed_flops_per_step"):
        assert np.isfinite(result[key]) and result[key] > 0, (key, result[key])
    assert result["peak_memory_bytes"] > 0
    assert result["peak_flops"] == 1e11 and result["peak_source"] == "test peak"
    np.testing.assert_allclose(
        result["mfu"], result["flops_per_step"] / (result["step_ms"] / 1e3) / 1e11, rtol=1e-6
    )
    assert result["conv_impl"] == "gemm" and result["model"] == "_TinyNet"
    assert result["huge_pages"] == host_heap.huge_pages_requested()  # as this process started
    assert result["devices"] == 2  # batch 2 split over 2 of the 8 test devices
    assert np.isfinite(result["loss"])
    np.testing.assert_allclose(result["train_img_s"], 2 / (result["step_ms"] / 1e3), rtol=1e-6)


def test_he_init_state_has_the_trainers_init_structure():
    """The benchmark's state is make_init_fn's (same tree, shapes, dtypes), He-initialised."""
    net = _TinyNet()
    cfg = train_step.benchmark_config(None, 2, 16, num_classes=3)
    tx, _ = optim.make_optimizer(cfg.optim, cfg.train.num_steps)
    state = train_step.he_init_state(net, tx, cfg)
    want = jax.eval_shape(trainer.make_init_fn(net, tx, cfg), jax.random.key(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(state, want)
    assert int(state.step) == 0 and int(state.nonfinite) == 0
    kernel = np.asarray(state.params["head"]["kernel"])  # 1×1, 8 → 3: fan_in 8
    assert 0.2 < kernel.std() < 0.8 and not np.asarray(state.params["head"]["bias"]).any()


def test_run_jax_rejects_unknown_conv_impl():
    with pytest.raises(ValueError, match="conv_impl"):
        train_step.run_jax(_TinyNet(), batch=1, size=8, conv_impl="cudnn")


@pytest.mark.skipif(
    host_heap.huge_page_environment() is None, reason="needs glibc and transparent huge pages"
)
def test_huge_pages_both_reports_the_step_with_and_without(capsys):
    """Two child processes, one with glibc's huge-page tunable and one without, a tiny model."""
    tiny = ["--model", "unet_small", "--batch", "1", "--size", "16", "--steps", "1", "--no-eval"]
    runs = train_step.main([*tiny, "--huge-pages", "both"])
    assert runs["huge_pages"]["huge_pages"] and not runs["no_huge_pages"]["huge_pages"]
    for side in ("huge_pages", "no_huge_pages"):
        assert runs[side]["step_ms"] > 0 and np.isfinite(runs[side]["loss"])
    assert runs["huge_pages_speedup"] == pytest.approx(
        runs["no_huge_pages"]["step_ms"] / runs["huge_pages"]["step_ms"]
    )
    assert "huge pages: train step" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="measures segjax alone"):
        train_step.main([*tiny, "--huge-pages", "both", "--compare", "torchvision"])


def test_compare_without_torchvision_equivalent_is_one_line():
    with pytest.raises(SystemExit, match="no torchvision equivalent of 'unet_small'"):
        train_step.main(
            ["--model", "unet_small", "--compare", "torchvision", "--torch-python", "py"]
        )


def test_torch_python_error_without_torch(monkeypatch):
    monkeypatch.delenv("SEGJAX_TORCH_PYTHON", raising=False)
    monkeypatch.setattr(torchvision_step.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="torch and torchvision"):
        torchvision_step.torch_python(None)
    assert torchvision_step.torch_python("/some/python") == "/some/python"


def test_run_torch_unknown_model():
    with pytest.raises(KeyError, match="no torchvision equivalent"):
        torchvision_step.run_torch("unet_small", 1, 8)


def test_random_batch_labels():
    images, labels = common.random_batch(2, 16, 5)
    chex.assert_shape(images, (2, 16, 16, 3))
    assert set(np.unique(labels)) <= set(range(5)) | {255}
    assert (labels == 255).any() and (labels < 5).any()


def test_torch_side_imports_without_jax():
    """The torch child interpreter may lack JAX: its modules must import without it."""
    code = (
        "import sys; sys.modules['jax'] = None\n"
        "import benchmarks.torchvision_step, benchmarks.conv_impl"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=common.REPO_ROOT)


def test_benchmarks_edit_no_sys_path():
    """Every benchmark runs as python -m benchmarks.<name>, so none edits sys.path."""
    folder = pathlib.Path(common.REPO_ROOT, "benchmarks")
    for path in folder.glob("*.py"):
        assert "sys.path" not in path.read_text(), path


@pytest.mark.torch
def test_run_torch_lraspp_small():
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    result = torchvision_step.run_torch("lraspp_mobilenet_v3_large", 1, 32, steps=1, num_classes=3)
    assert result["train_img_s"] > 0 and result["eval_img_s"] > 0
    assert np.isfinite(result["loss"])


def test_profile_step_attributes_time_to_layers():
    """benchmarks/profile_step.py traces a real step and names the layers its ops belong to."""
    wall_ms, rows, by_kind = profile_step.main(
        ["--model", "unet_small", "--batch", "2", "--size", "32", "--top", "3"]
    )
    assert wall_ms > 0 and rows and all(ms >= 0 for ms, *_ in rows)
    assert sum(by_kind.values()) > 0
    # Forward and backward ops of the model's layers are told apart by their op_name.
    op_names = [op for *_, op in rows]
    assert any("jvp(UNet)" in op and "transpose(" not in op for op in op_names)
    assert any("transpose(jvp(UNet))" in op for op in op_names)


_SERVING_CHILD = """
from benchmarks import common
calls = []
def train():
    calls.append("train")
    return {"loss": float(len(calls))}
common.serve_steps({"train": train}, lambda: {"calls": len(calls)})
"""


def test_step_peer_interleaves_with_a_serving_child():
    """StepPeer drives a real child through serve_steps: one reply per action, then figures."""
    with common.StepPeer([sys.executable, "-c", _SERVING_CHILD]) as peer:
        replies = [peer.run("train") for _ in range(3)]
        assert [r["loss"] for r in replies] == [1.0, 2.0, 3.0]
        assert all(r["ms"] >= 0 for r in replies)
        assert peer.finish() == {"calls": 3}
    assert peer.proc.returncode == 0


def test_step_peer_reports_a_failed_child():
    with common.StepPeer([sys.executable, "-c", _SERVING_CHILD]) as peer:
        with pytest.raises(RuntimeError, match="exited with code"):
            peer.run("bogus")  # serve_steps raises on an unknown command and exits non-zero


def test_interleaved_keeps_peer_times_and_loss():
    interleaved = train_step.Interleaved(
        lambda: common.StepPeer([sys.executable, "-c", _SERVING_CHILD])
    )
    interleaved.start()
    with interleaved.peer:
        interleaved.step("train", timed=False)
        interleaved.step("train")
        interleaved.step("train")
        figures = train_step._peer_figures(interleaved, batch=2)
    assert len(figures["step_times_ms"]) == 2 and figures["loss"] == 3.0
    assert figures["calls"] == 3 and figures["train_img_s"] > 0


def test_timed_train_steps_alternate_with_the_peer():
    """Every timed step of either side follows one of the other's; equal step counts."""
    events = []

    class Peer:
        block = 1

        def start(self):
            events.append("peer warm-up")  # StepPeer starts after its own warm-up step

        def step(self, action, timed=True):
            events.append(f"peer {action}{'' if timed else ' untimed'}")

    def compiled(state, data):
        events.append("ours")
        return state + 1, {"loss": jnp.float32(state)}

    state, times, loss = train_step._timed_train_steps(compiled, 0, None, 2, Peer())
    assert events == [
        "peer warm-up", "ours", "peer train untimed",
        "ours", "peer train", "ours", "peer train", "ours",
    ]  # fmt: skip
    assert len(times) == 2 and state == 4 and loss == 3.0
    assert events.count("ours") == len([e for e in events if e.startswith("peer")])


def test_timed_train_steps_alternate_in_blocks_each_led_by_an_untimed_step():
    """Blocks of 2: ours, then the peer's, each led by an untimed step whose time is kept apart;
    both sides take as many steps; a last, shorter block when the block does not divide."""
    events = []

    class FakeStepPeer:  # what Interleaved drives: run(action) -> reply with "ms"
        def run(self, action):
            events.append(f"peer {action}")
            return {"ms": float(len(events)), "loss": 0.5}

    def compiled(state, data):
        events.append("ours")
        return state + 1, {"loss": jnp.float32(state)}

    interleaved = train_step.Interleaved(FakeStepPeer, block=2)
    state, times, loss = train_step._timed_train_steps(compiled, 0, None, 3, interleaved)
    assert events == (
        ["ours"] + ["ours"] * 2 + ["peer train"] * 3  # warm-up, block 1; the peer's lead + 2
        + ["ours"] * 2 + ["peer train"] * 2  # our lead + the last block of 1, the peer's
        + ["ours"]  # the step whose loss is reported
    )  # fmt: skip
    assert len(times) == 3 and len(interleaved.times["train"]) == 3
    assert len(interleaved.lead_times["segjax"]["train"]) == 1
    assert len(interleaved.lead_times["peer"]["train"]) == 2
    # the peer's own warm-up step (taken when it starts) evens the count
    assert events.count("ours") == events.count("peer train") + 1 and state == 6 and loss == 5.0
    with pytest.raises(ValueError, match="interleave block: 0 steps"):
        train_step.Interleaved(FakeStepPeer, block=0)
