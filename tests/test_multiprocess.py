"""Two local processes × 4 CPU devices train like one process × 8 devices (CPU collectives)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

WORKER = pathlib.Path(__file__).parent / "multiprocess_worker.py"
ROOT = WORKER.parent.parent


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run(num_processes, local_devices):
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                str(num_processes),
                str(i),
                str(port),
                str(local_devices),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(num_processes)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_processes_match_one():
    single = _run(1, 8)[0]
    multi = _run(2, 4)
    assert single["devices"] == 8 and all(r["devices"] == 8 for r in multi)
    assert sorted(r["process"] for r in multi) == [0, 1]
    for r in multi:
        np.testing.assert_allclose(r["losses"], single["losses"], rtol=2e-5)
