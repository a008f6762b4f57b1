"""Tests of segjax.host_heap: freed large buffers stay mapped, so reusing them does not fault."""

import subprocess
import sys

import pytest

from segjax import host_heap

# A worker thread (as XLA's are) allocates, touches and frees a 256 MiB buffer twice; prints
# whether the policy was applied and the minor page faults of the second round.
_CHILD = """
import resource, sys, threading
from segjax import host_heap
applied = host_heap.reuse_freed_memory() if sys.argv[1] == "1" else False
def rounds(out):
    for _ in range(2):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = bytearray(256 * 2**20)
        buf[::4096] = b"x" * len(buf[::4096])
        del buf
        out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
out = []
t = threading.Thread(target=rounds, args=(out,))
t.start()
t.join()
print(applied, out[1])
"""


def _second_round_faults(reuse: bool) -> tuple[bool, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, "1" if reuse else "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    applied, faults = proc.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_freed_buffers_are_reused_without_page_faults():
    applied, faults = _second_round_faults(reuse=True)
    assert applied
    _, default_faults = _second_round_faults(reuse=False)
    pages = 256 * 2**20 // 4096
    assert default_faults > pages // 2  # glibc's default: a fresh mmap, every page faulted again
    assert faults < pages // 20


def test_opt_out_leaves_defaults():
    assert host_heap.reuse_freed_memory(environ={host_heap.OPT_OUT_ENV: "0"}) is False
