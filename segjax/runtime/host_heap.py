"""The process's C heap (glibc malloc): huge pages for the step's buffers, the compiler's returned.

XLA:CPU allocates a compiled step's temporary buffer (1.4 GiB for a ResNet-50 train step at
batch 4, 256²; 14 GiB at batch 8, 512²) with ``posix_memalign`` on every execution. glibc
serves an allocation that large with a fresh ``mmap`` and unmaps it on free, so every step
page-faults its whole temp buffer in again, one 4 KiB page at a time: ~400 000 minor faults and
0.7 s of kernel time per deeplabv3_resnet50 step on 2 cores, ~10 % of the step
(docs/PERFORMANCE.md, 2026-12-03).

:func:`restart_with_huge_pages` re-executes the command with glibc's ``glibc.malloc.hugetlb=1``
tunable, which ``madvise``\\s the memory malloc maps as transparent huge pages: the same buffer
then faults in 2 MiB at a time (512× fewer faults), and is still unmapped when freed, so the
peak is the step's own. (Keeping the freed buffer mapped instead — ``mallopt`` with one arena
and no ``mmap`` — removed the faults too, but small allocations then split the freed block and
the next step's buffer no longer fit in it: at batch 8, 512² the process grew past 24 GiB.)
Tunables are read only when a process starts, hence the re-exec, done by the command-line
entry points before anything heavy runs (:func:`segjax.cli.run_tool`).

:func:`release_freed_heap` returns free heap memory to the OS on demand (after a compile, whose
~2 GiB working memory would otherwise stay resident). Both do nothing where the C library is
not glibc.
"""

import ctypes
import os
import sys

TUNABLES_ENV = "GLIBC_TUNABLES"
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35; older ones ignore it
# Set to 0 to keep glibc's 4 KiB pages (e.g. to measure their cost).
OPT_OUT_ENV = "SEGJAX_HUGE_PAGES"
# What GLIBC_TUNABLES was before the restart added the tunable ("" for unset).
_BEFORE_ENV = "SEGJAX_GLIBC_TUNABLES_BEFORE_RESTART"
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


def huge_page_environment(environ=None, thp_mode: str | None = "") -> dict | None:
    """``environ`` with :data:`HUGE_PAGES_TUNABLE` added to ``GLIBC_TUNABLES``, or None when the
    tunable is there already, was opted out of (``SEGJAX_HUGE_PAGES=0``) or cannot apply (no
    glibc, or the kernel's THP mode is ``never`` or unknown; ``thp_mode`` overrides the one read
    from sysfs)."""
    environ = dict(os.environ if environ is None else environ)
    tunables = environ.get(TUNABLES_ENV, "")
    if environ.get(OPT_OUT_ENV, "1") == "0" or "glibc.malloc.hugetlb" in tunables:
        return None  # checked first: the restarted process (and any later call) stops here
    mode = transparent_huge_pages_mode() if thp_mode == "" else thp_mode
    if mode not in ("always", "madvise") or _libc() is None:
        return None
    environ[TUNABLES_ENV] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
    environ[_BEFORE_ENV] = tunables
    return environ


def environment_before_restart(environ=None) -> dict:
    """``environ`` (default ``os.environ``) as it was before :func:`restart_with_huge_pages` added
    the tunable: for a child that should run as it would have been run without segjax (the
    torchvision peer of the benchmarks)."""
    environ = dict(os.environ if environ is None else environ)
    if _BEFORE_ENV in environ:
        before = environ.pop(_BEFORE_ENV)
        if before:
            environ[TUNABLES_ENV] = before
        else:
            environ.pop(TUNABLES_ENV, None)
    return environ


def restart_with_huge_pages() -> None:
    """Re-executes this command (``sys.orig_argv``) with glibc's huge-page tunable when it applies
    (:func:`huge_page_environment`); returns only when it does not. Call it first thing in a
    command-line entry point: whatever ran before is run again."""
    environ = huge_page_environment()
    if environ is None or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)


def release_freed_heap() -> bool:
    """Returns the C heap's free memory to the OS (glibc ``malloc_trim(0)``); False elsewhere.

    XLA's compiler frees its working memory (~2 GiB for a ResNet-50 train step) into glibc's
    heap, which keeps it: without this the process's RSS stays at the compiler's peak and the
    step's buffers are mapped on top of it (docs/PERFORMANCE.md, 2026-12-02).
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
