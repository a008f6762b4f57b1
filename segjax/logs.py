"""Run logs: a progress line on stdout, ``metrics.jsonl`` and TensorBoard events in the workdir.

Only process 0 writes files (``enabled=False`` elsewhere).
"""

import json
import math
import os
import sys
import time

import numpy as np


def info(message: str) -> None:
    """A log line on stdout (process 0 only)."""
    import jax

    if jax.process_index() == 0:
        print(message, flush=True)


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    return v


def colorize(mask: np.ndarray, palette) -> np.ndarray:
    """Class ids ``[H, W]`` → RGB ``[H, W, 3]``; 255 (ignore) is white."""
    table = np.full((256, 3), 255, np.uint8)
    table[: len(palette)] = np.asarray(palette, np.uint8)
    return table[np.asarray(mask, np.int64).clip(0, 255)]


class MetricLogger:
    """Appends metric rows to ``metrics.jsonl`` and TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, row: dict, split: str | None = None) -> None:
        """One JSON line ``{"step", ["split"], metrics…}`` and a TensorBoard scalar per float."""
        if not self.enabled:
            return
        record = {"step": int(step)}
        if split is not None:
            record["split"] = split
        record.update({k: _jsonable(v) for k, v in row.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        prefix = f"{split}/" if split else "train/"
        for k, v in row.items():
            if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool):
                if math.isfinite(float(v)):
                    self._tb.add_scalar(prefix + k, float(v), step)
        self._tb.flush()

    def images(self, step: int, triples, info, mean, std) -> None:
        """Writes (image | ground truth | prediction) strips to TensorBoard."""
        if not self.enabled or not triples:
            return
        strips = []
        for image, mask, pred in triples:
            rgb = np.clip(image * np.asarray(std) + np.asarray(mean), 0, 255).astype(np.uint8)
            strips.append(
                np.concatenate(
                    [rgb, colorize(mask, info.palette), colorize(pred, info.palette)], axis=1
                )
            )
        self.pictures(step, strips)

    def pictures(self, step: int, pictures, tag: str = "predictions") -> None:
        """Writes uint8 ``[H, W, 3]`` pictures to TensorBoard as ``tag/0``, ``tag/1`` …"""
        if not self.enabled or not pictures:
            return
        for i, picture in enumerate(pictures):
            self._tb.add_image(f"{tag}/{i}", picture, step, dataformats="HWC")
        self._tb.flush()

    def last_eval(self, split: str) -> dict | None:
        """The last evaluation row of ``split`` in ``metrics.jsonl``, or None."""
        if not os.path.exists(self.path):
            return None
        last = None
        with open(self.path) as f:
            for line in f:
                row = json.loads(line)
                if row.get("split") == split:
                    last = row
        return last

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class Progress:
    """steps/s, images/s and ETA since the start of this process's run."""

    def __init__(self, start_step: int, num_steps: int, batch_size: int):
        self.start_step, self.num_steps, self.batch_size = start_step, num_steps, batch_size
        self.t0 = time.time()
        self._last = (start_step, self.t0)

    def update(self, step: int) -> dict:
        now = time.time()
        last_step, last_t = self._last
        self._last = (step, now)
        rate = (step - last_step) / max(now - last_t, 1e-9)
        return {"steps_per_sec": rate, "images_per_sec": rate * self.batch_size}

    def line(self, step: int, loss: float) -> str:
        step_rate = (self._last[0] - self.start_step) / max(self._last[1] - self.t0, 1e-9)
        eta = (self.num_steps - step) / step_rate if step_rate > 0 else float("inf")
        eta_s = "?" if not math.isfinite(eta) else f"{int(eta // 60)}m{int(eta % 60):02d}s"
        return (
            f"step {step}/{self.num_steps}  loss {loss:.4f}  {step_rate:.2f} steps/s  "
            f"{step_rate * self.batch_size:.1f} img/s  ETA {eta_s}"
        )


def fail(message: str, code: int = 2) -> None:
    """Prints a one-line error to stderr and exits (no traceback)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)
