"""Tests of segjax.runtime.host_heap: a restarted command maps its large buffers as huge pages."""

import os
import subprocess
import sys

import pytest

from segjax.runtime import host_heap

# Restarts itself with the tunable (unless opted out), then a worker thread (as XLA's are)
# allocates and touches a 256 MiB buffer; prints the tunables it runs with and the faults.
_CHILD = """
import os, resource, threading
from segjax.runtime import host_heap
host_heap.restart_with_huge_pages()
def touch(out):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buf = bytearray(256 * 2**20)
    buf[::4096] = b"x" * len(buf[::4096])
    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
out = []
t = threading.Thread(target=touch, args=(out,))
t.start()
t.join()
print(os.environ.get("GLIBC_TUNABLES", "-"), out[0])
"""


def _child_faults(**env) -> tuple[str, int]:
    environ = {k: v for k, v in os.environ.items() if k != host_heap.TUNABLES_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        capture_output=True,
        text=True,
        check=True,
        env={**environ, **env},
    )
    tunables, faults = proc.stdout.split()
    return tunables, int(faults)


@pytest.mark.skipif(
    host_heap.transparent_huge_pages_mode() not in ("always", "madvise"),
    reason="needs Linux transparent huge pages",
)
def test_restarted_process_faults_huge_pages():
    tunables, faults = _child_faults()
    assert tunables == host_heap.HUGE_PAGES_TUNABLE
    opted_out, default_faults = _child_faults(**{host_heap.OPT_OUT_ENV: "0"})
    assert opted_out == "-"
    pages = 256 * 2**20 // 4096
    assert default_faults > pages // 2  # 4 KiB pages: every page of the buffer faults
    assert faults < pages // 4  # 2 MiB pages (128 faults), unless the kernel had none free


def test_huge_page_environment():
    env = host_heap.huge_page_environment({"A": "1"}, thp_mode="madvise")
    assert env["A"] == "1" and env[host_heap.TUNABLES_ENV] == host_heap.HUGE_PAGES_TUNABLE
    other = {host_heap.TUNABLES_ENV: "glibc.malloc.arena_max=2"}
    env = host_heap.huge_page_environment(other, thp_mode="always")
    assert env[host_heap.TUNABLES_ENV] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    # Nothing to do: already set (no restart loop), opted out, or no THP in this kernel.
    assert host_heap.huge_page_environment(env, thp_mode="madvise") is None
    assert host_heap.huge_page_environment({host_heap.OPT_OUT_ENV: "0"}, "madvise") is None
    assert host_heap.huge_page_environment({}, thp_mode="never") is None
    assert host_heap.huge_page_environment({}, thp_mode=None) is None


def test_transparent_huge_pages_mode(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert host_heap.transparent_huge_pages_mode(str(path)) == "madvise"
    assert host_heap.transparent_huge_pages_mode(str(tmp_path / "missing")) is None


def test_environment_before_restart_undoes_the_tunable():
    for before in ({"A": "1"}, {"A": "1", host_heap.TUNABLES_ENV: "glibc.malloc.arena_max=2"}):
        restarted = host_heap.huge_page_environment(before, thp_mode="madvise")
        assert restarted != before
        assert host_heap.environment_before_restart(restarted) == before
    assert host_heap.environment_before_restart({"A": "1"}) == {"A": "1"}  # never restarted
