"""Compile time of the same command in a first and a second process (the persistent cache).

    python -m benchmarks.compile_cache -- segjax.train --config configs/quickstart.py \\
        --workdir /tmp/cc/run{run}
    python -m benchmarks.compile_cache -- benchmarks.train_step --model deeplabv3_resnet50 \\
        --batch 4 --size 256 --steps 1

Runs ``python -m MODULE ARGS`` ``--runs`` times (default 2), one process after another, all
with ``SEGJAX_COMPILE_CACHE`` set to one cache directory: a new temporary one (removed at the
end) unless ``--cache DIR`` names one, so the first run is cold. ``{run}`` in ``ARGS`` becomes
the run's number (1, 2 …), e.g. for a workdir per run. Each child turns the cache on with
``segjax.runtime.compile_cache.setup`` before it runs the module (``segjax.*`` commands do it
again in ``setup_runtime``, which changes nothing), so modules that do not call it, such as the
benchmarks, are measured too.

Reported per run: wall time of the process; "compile s", the sum of JAX's backend compile
durations (``/jax/core/compile/backend_compile_duration``, which for a cache hit is the time
to load the executable); compilations, persistent-cache hits and entries written; the slowest
compilations; the 1-minute load average at the start (the machine is shared: trust the
ratios); with ``--show-output``, the module's own output (e.g. ``benchmarks.train_step``'s
table with its ``compile_s``). Then the first ÷ second ratios of compile and wall time, and
the cache's size.
"""

import argparse
import json
import os
import runpy
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks import common

_RESULT_TAG = "COMPILE_CACHE_RESULT "


def _child(module: str, args: list[str]) -> None:
    """Runs ``module`` as ``__main__`` with the cache on; prints the compile record as JSON."""
    from segjax.runtime import compile_cache

    start = time.perf_counter()
    directory = compile_cache.setup()
    code = 0
    with compile_cache.record() as seen:
        sys.argv = [module, *args]
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:  # absl.app.run exits, also on success
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    result = {
        "cache_dir": directory,
        "exit_code": code,
        "wall_s": time.perf_counter() - start,
        "compile_s": seen.compile_secs,
        "compiles": seen.compiles,
        "hits": seen.hits,
        "writes": seen.writes,
        "slowest": seen.slowest(4),
    }
    sys.stdout.flush()
    print(_RESULT_TAG + json.dumps(result), flush=True)
    raise SystemExit(code)


def _run_once(module: str, args: list[str], run: int, cache: str) -> dict:
    """One child process; returns its record plus the load average at its start."""
    env = dict(os.environ, SEGJAX_COMPILE_CACHE=cache)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (common.REPO_ROOT, env.get("PYTHONPATH")) if p)
    load = os.getloadavg()[0]
    cmd = [sys.executable, "-m", "benchmarks.compile_cache", "--child", module]
    cmd += [a.replace("{run}", str(run)) for a in args]
    proc = subprocess.run(cmd, env=env, cwd=common.REPO_ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise SystemExit(f"run {run} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    output = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith(_RESULT_TAG))
    record = json.loads(lines[-1][len(_RESULT_TAG) :])
    return dict(record, run=run, load_average_1min=load, output=output)


def _dir_bytes(path: str) -> int:
    """Total size of the files under ``path``."""
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def _print_report(module: str, runs: list[dict], cache: str) -> None:
    """One line per run, then the first ÷ second ratios."""
    print(f"python -m {module}: {len(runs)} processes sharing the compile cache {cache}")
    header = f"{'run':>3}  {'load':>5}  {'wall s':>7}  {'compile s':>9}  {'compiles':>8}  "
    print(header + f"{'hits':>5}  {'written':>7}  slowest compilations (s)")
    for r in runs:
        slowest = ", ".join(f"{name} {secs:.2f}" for name, secs in r["slowest"][:3])
        print(
            f"{r['run']:>3}  {r['load_average_1min']:>5.2f}  {r['wall_s']:>7.1f}  "
            f"{r['compile_s']:>9.2f}  {r['compiles']:>8}  {r['hits']:>5}  {r['writes']:>7}  "
            + slowest
        )
    if len(runs) >= 2:
        first, second = runs[0], runs[1]
        print(
            f"first / second process: compile {first['compile_s'] / second['compile_s']:.1f}× "
            f"({first['compile_s']:.1f} s → {second['compile_s']:.1f} s), wall "
            f"{first['wall_s'] / second['wall_s']:.2f}× ({first['wall_s']:.1f} s → "
            f"{second['wall_s']:.1f} s); cache {_dir_bytes(cache) / 2**20:.1f} MiB"
        )


def _parser() -> argparse.ArgumentParser:
    """The command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=2, help="processes, one after another")
    p.add_argument("--cache", default=None, help="cache directory (default: a new temporary one)")
    p.add_argument("--json", action="store_true", help="also print the records as JSON")
    p.add_argument("--show-output", action="store_true", help="print each run's own stdout")
    p.add_argument("module", help="the module to run with python -m (then its arguments)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    """CLI entry point; returns the per-run records (also printed)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2:])
    if argv[:1] == ["--"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    cache = args.cache or tempfile.mkdtemp(prefix="segjax_compile_cache_")
    try:
        runs = []
        for i in range(args.runs):
            runs.append(_run_once(args.module, args.args, i + 1, cache))
            if args.show_output:
                print(f"--- run {i + 1}: stdout of python -m {args.module}\n{runs[-1]['output']}")
        _print_report(args.module, runs, cache)
    finally:
        if args.cache is None:
            shutil.rmtree(cache, ignore_errors=True)
    if args.json:
        print(json.dumps(runs))
    return runs


if __name__ == "__main__":
    main()
