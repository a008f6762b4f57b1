"""What several benchmarks share: timers, process figures, child interpreters, the step recipe.

Imports neither JAX nor torch: the torchvision side of :mod:`benchmarks.train_step` and of
:mod:`benchmarks.conv_impl` runs in an interpreter that may have torch and no JAX, and imports
this module there.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

# The repository root: a child interpreter gets it on PYTHONPATH to find ``benchmarks``.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The train step both frameworks run (segjax.config's loss and SGD, set explicitly so that the
# torchvision side, which cannot import segjax, uses the same numbers).
AUX_WEIGHT = 0.4
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 1e-4
IGNORE = 255  # segjax.evaluation.metrics.IGNORE_INDEX, repeated here for the same reason


def cpu_cores() -> int:
    """Number of CPU cores this process may run on (what XLA:CPU's thread pool uses)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes, or None where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far.

    ``VmHWM`` of ``/proc/self/status`` where it exists: unlike ``getrusage``'s ``ru_maxrss``,
    which Linux carries over from the parent process across fork + exec, it is this program's own.
    """
    peak = _proc_status_bytes("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) * (1 if sys.platform == "darwin" else 1024)


def current_rss_bytes() -> int:
    """This process's resident set size now (``VmRSS``), or 0 where unknown."""
    return _proc_status_bytes("VmRSS") or 0


def times_ms(fn: Callable[[], object], steps: int) -> list[float]:
    """Wall time in ms of each of ``steps`` calls of ``fn()`` (no warm-up)."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def median_ms(fn: Callable[[], object], steps: int) -> float:
    """Median wall time in ms of ``steps`` calls of ``fn()`` (no warm-up)."""
    return statistics.median(times_ms(fn, steps))


def warm_median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in ms of ``repeats`` calls of ``fn()`` after one untimed call."""
    fn()
    return median_ms(fn, repeats)


def jitted_median_ms(fn: Callable, *args, repeats: int) -> float:
    """Median ms of ``repeats`` calls of the jitted ``fn(*args)``, after compile + warm-up.

    Waits for the result of every call (``jax.block_until_ready``), so the time is the
    computation's, not the dispatch's.
    """
    import jax  # here, not at the top: this module must import without JAX (module docstring)

    return warm_median_ms(lambda: jax.block_until_ready(fn(*args)), repeats)


def random_batch(batch: int, size: int, num_classes: int, seed: int = 0):
    """Random NHWC float images and int32 labels with 5 % ignored (255) pixels."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=(batch, size, size)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.05] = IGNORE
    return images, labels


def module_json(
    python: str, module: str, args: Sequence[str], env: dict[str, str] | None = None
) -> dict:
    """Runs ``python -m benchmarks.<module> <args>`` and returns the JSON of its last stdout line.

    The child finds ``benchmarks`` (and ``segjax``) through ``PYTHONPATH``, whatever the current
    directory and whether or not segjax is installed in that interpreter.

    Raises:
      RuntimeError: the child exited non-zero (the message holds its command and stderr tail).
    """
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    cmd = [python, "-m", f"benchmarks.{module}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def serve_steps(
    actions: dict[str, Callable[[], dict]],
    finish: Callable[[], dict],
    stdin=None,
    stdout=None,
) -> dict:
    """The child half of an interleaved benchmark: runs named actions when the parent asks.

    Prints ``{"ready": true}``, then for each command line read from ``stdin`` (an ``actions``
    key) runs that action and prints ``{"ms": wall time, **its result}``; on ``finish`` (or end
    of input) prints ``finish()``'s figures and returns them. One JSON object per line, flushed,
    so that the parent (:class:`StepPeer`) can time its own steps between this child's: both
    frameworks then see the same machine, whatever its speed does meanwhile.

    Raises:
      ValueError: a command that is not an action (the parent's bug).
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def reply(obj: dict) -> None:
        stdout.write(json.dumps(obj) + "\n")
        stdout.flush()

    reply({"ready": True})
    for line in stdin:
        command = line.strip()
        if command == "finish":
            break
        if command not in actions:
            raise ValueError(f"unknown command {command!r}; expected one of {sorted(actions)}")
        start = time.perf_counter()
        result = actions[command]()
        reply({"ms": (time.perf_counter() - start) * 1e3, **result})
    figures = finish()
    reply(figures)
    return figures


class StepPeer:
    """The parent half of an interleaved benchmark: a child running :func:`serve_steps`.

    ``StepPeer(cmd)`` starts ``cmd`` (stderr passed through) and waits for it to be ready;
    ``run(action)`` has it run one action and returns the reply (``"ms"``: its wall time);
    ``finish()`` returns its final figures and waits for it to exit. Use as a context manager
    so that the child is killed if the parent fails midway.

    Raises:
      RuntimeError: the child exited or answered something that is not JSON.
    """

    def __init__(self, cmd: Sequence[str], env: dict[str, str] | None = None):
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
        self.cmd = list(cmd)
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self._read()  # {"ready": true}

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"{' '.join(self.cmd)} exited with code {code} before answering")
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise RuntimeError(
                f"{' '.join(self.cmd)} answered {line.strip()!r}, not JSON"
            ) from None

    def run(self, action: str) -> dict:
        """Has the child run ``action`` once; returns its reply (``"ms"`` and its result)."""
        self.proc.stdin.write(action + "\n")
        self.proc.stdin.flush()
        return self._read()

    def finish(self) -> dict:
        """The child's final figures; the child has exited when this returns."""
        self.proc.stdin.write("finish\n")
        self.proc.stdin.flush()
        figures = self._read()
        self.proc.wait()
        return figures

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return False
