"""Tests of segjax.runtime.host_heap: a process started with glibc's huge-page tunable maps its
large buffers as huge pages; the environments with and without it."""

import os
import subprocess
import sys

import pytest

from segjax.runtime import host_heap

# A worker thread (as XLA's are) allocates and touches a 256 MiB buffer; prints the tunables the
# process runs with and its minor page faults.
_CHILD = """
import os, resource, threading
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


def _child_faults(environ) -> tuple[str, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, env=environ
    )
    tunables, faults = proc.stdout.split()
    return tunables, int(faults)


@pytest.mark.skipif(
    host_heap.transparent_huge_pages_mode() not in ("always", "madvise"),
    reason="needs Linux transparent huge pages",
)
def test_process_started_with_the_tunable_faults_huge_pages():
    tunables, faults = _child_faults(host_heap.huge_page_environment())
    assert tunables == host_heap.HUGE_PAGES_TUNABLE
    without, default_faults = _child_faults(host_heap.without_huge_pages())
    assert without == "-"
    pages = 256 * 2**20 // 4096
    assert default_faults > pages // 2  # 4 KiB pages: every page of the buffer faults
    assert faults < pages // 4  # 2 MiB pages (128 faults), unless the kernel had none free


def test_huge_page_environment_appends_to_the_tunables():
    env = host_heap.huge_page_environment({"A": "1"}, thp_mode="madvise")
    assert env == {"A": "1", host_heap.TUNABLES_ENV: host_heap.HUGE_PAGES_TUNABLE}
    other = {host_heap.TUNABLES_ENV: "glibc.malloc.arena_max=2"}
    env = host_heap.huge_page_environment(other, thp_mode="always")
    assert env[host_heap.TUNABLES_ENV] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert host_heap.huge_page_environment(env, thp_mode="madvise") == env  # not added twice
    # No THP in this kernel (or unknown): nothing a child could use.
    assert host_heap.huge_page_environment({}, thp_mode="never") is None
    assert host_heap.huge_page_environment({}, thp_mode=None) is None


def test_without_huge_pages_keeps_the_other_tunables():
    both = "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert host_heap.without_huge_pages({host_heap.TUNABLES_ENV: both, "A": "1"}) == {
        host_heap.TUNABLES_ENV: "glibc.malloc.arena_max=2",
        "A": "1",
    }
    assert host_heap.without_huge_pages({host_heap.TUNABLES_ENV: "glibc.malloc.hugetlb=1"}) == {}
    assert host_heap.without_huge_pages({"A": "1"}) == {"A": "1"}


def test_huge_pages_requested():
    assert host_heap.huge_pages_requested({host_heap.TUNABLES_ENV: "a=1:glibc.malloc.hugetlb=1"})
    assert not host_heap.huge_pages_requested({host_heap.TUNABLES_ENV: "glibc.malloc.hugetlb=0"})
    assert not host_heap.huge_pages_requested({})


def test_transparent_huge_pages_mode(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert host_heap.transparent_huge_pages_mode(str(path)) == "madvise"
    assert host_heap.transparent_huge_pages_mode(str(tmp_path / "missing")) is None


def test_no_command_restarts_itself():
    """segjax's commands run as they were started (debuggers, profilers, ``main()`` from Python):
    the tunable is the launcher's to set, none of them re-executes itself."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for folder in ("segjax", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                if name.endswith(".py"):
                    with open(os.path.join(dirpath, name)) as f:
                        text = f.read()
                    assert "os.exec" not in text and "restart_with_huge_pages" not in text, name
