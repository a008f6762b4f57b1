"""The process's C heap (glibc malloc): huge pages for the step's buffers, the compiler's returned.

XLA:CPU allocates a compiled step's temporary buffer (1.4 GiB for a ResNet-50 train step at
batch 4, 256²; 14 GiB at batch 8, 512²) with ``posix_memalign`` on every execution. glibc
serves an allocation that large with a fresh ``mmap`` and unmaps it on free, so every step
page-faults its whole temp buffer in again, one 4 KiB page at a time: ~400 000 minor faults and
0.7 s of kernel time per deeplabv3_resnet50 step on 2 cores, ~10 % of the step.

glibc's ``glibc.malloc.hugetlb=1`` tunable (:data:`HUGE_PAGES_TUNABLE`) ``madvise``\\s the
memory malloc maps as transparent huge pages: the same buffer then faults in 2 MiB at a time
(512× fewer faults), and is still unmapped when freed, so the peak is the step's own. (Keeping
the freed buffer mapped instead — ``mallopt`` with one arena and no ``mmap`` — removed the
faults too, but small allocations then split the freed block and the next step's buffer no
longer fit in it: at batch 8, 512² the process grew past 24 GiB.) Tunables are read only when a
process starts, so segjax does not set it itself: the launch scripts (``launch/*.sh``) export

    GLIBC_TUNABLES=glibc.malloc.hugetlb=1        # appended with ":" to any value already set

and a direct run sets it on its command line (docs/SCALING.md). :func:`huge_page_environment`
and :func:`without_huge_pages` build a child's environment with and without it (the benchmark
reports a step both ways, ``benchmarks.train_step --huge-pages both``).

:func:`release_freed_heap` returns free heap memory to the OS on demand (after a compile, whose
~2 GiB working memory would otherwise stay resident). It does nothing where the C library is
not glibc.
"""

import ctypes
import os
from collections.abc import Mapping

TUNABLES_ENV = "GLIBC_TUNABLES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35; older ones ignore it
_HUGE_PAGES_KEY = HUGE_PAGES_TUNABLE.split("=")[0]
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def transparent_huge_pages_mode(path: str = _THP_MODE_FILE) -> str | None:
    """The kernel's THP mode (``always``, ``madvise`` or ``never``), None where it has none."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_pages_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``environ`` (default ``os.environ``) sets glibc's huge-page tunable."""
    environ = os.environ if environ is None else environ
    return any(
        item.split("=")[0] == _HUGE_PAGES_KEY and item != f"{_HUGE_PAGES_KEY}=0"
        for item in environ.get(TUNABLES_ENV, "").split(":")
    )


def huge_page_environment(environ: Mapping[str, str] | None = None, thp_mode: str | None = ""):
    """``environ`` (default ``os.environ``) with :data:`HUGE_PAGES_TUNABLE` added to
    ``GLIBC_TUNABLES`` (after any tunables already there), or None when it cannot apply: no
    glibc, or the kernel's THP mode is ``never`` or unknown (``thp_mode`` overrides the one read
    from sysfs). A child process started with it maps its large buffers as huge pages."""
    environ = without_huge_pages(environ)
    mode = transparent_huge_pages_mode() if thp_mode == "" else thp_mode
    if mode not in ("always", "madvise") or _libc() is None:
        return None
    tunables = environ.get(TUNABLES_ENV, "")
    environ[TUNABLES_ENV] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
    return environ


def without_huge_pages(environ: Mapping[str, str] | None = None) -> dict:
    """``environ`` (default ``os.environ``) as a dict without glibc's huge-page tunable (the
    other tunables kept; ``GLIBC_TUNABLES`` dropped when nothing is left)."""
    environ = dict(os.environ if environ is None else environ)
    kept = [
        item
        for item in environ.get(TUNABLES_ENV, "").split(":")
        if item and item.split("=")[0] != _HUGE_PAGES_KEY
    ]
    if kept:
        environ[TUNABLES_ENV] = ":".join(kept)
    else:
        environ.pop(TUNABLES_ENV, None)
    return environ


def release_freed_heap() -> bool:
    """Returns the C heap's free memory to the OS (glibc ``malloc_trim(0)``); False elsewhere.

    XLA's compiler frees its working memory (~2 GiB for a ResNet-50 train step) into glibc's
    heap, which keeps it: without this the process's RSS stays at the compiler's peak and the
    step's buffers are mapped on top of it (docs/XLA_CPU.md).
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
