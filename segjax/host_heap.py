"""The process's C heap (glibc malloc): keep the step's buffers mapped, return the compiler's.

XLA:CPU allocates a compiled step's temporary buffer (1.4 GiB for a ResNet-50 train step at
batch 4, 256²) with ``posix_memalign`` on every execution. glibc serves an allocation that
large with a fresh ``mmap`` (from a worker thread's arena it always does, whatever
``M_MMAP_THRESHOLD`` says) and unmaps it on free, so every step page-faults its whole temp
buffer in again: ~400 000 minor faults and 0.7 s of kernel time per deeplabv3_resnet50 step on
2 cores, ~10 % of the step (docs/PERFORMANCE.md, 2026-12-03). :func:`reuse_freed_memory` makes
glibc serve every allocation from the one main heap and keep what is freed there, so the next
step reuses the same pages; the peak is unchanged, since a step's buffers are freed before the
next step's are taken. :func:`release_freed_heap` returns free heap memory to the OS on demand
(after a compile, whose ~2 GiB working memory would otherwise stay resident).

Both are no-ops (returning False) where the C library is not glibc.
"""

import ctypes
import os

# mallopt(3) parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

# Set to 0 to leave glibc's defaults alone (e.g. to measure their cost).
OPT_OUT_ENV = "SEGJAX_REUSE_HEAP"


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def reuse_freed_memory(environ=None) -> bool:
    """Makes freed C-heap memory stay mapped for reuse (glibc ``mallopt``); True when applied.

    One arena (``M_ARENA_MAX=1``: threads started after this call share the main heap, whose
    large allocations obey the next setting), no ``mmap`` for large allocations
    (``M_MMAP_MAX=0``) and no automatic trimming of the heap top (``M_TRIM_THRESHOLD``). Call it
    early, before JAX's backend (and its thread pool) starts: :func:`segjax.cli.setup_runtime`
    does. ``SEGJAX_REUSE_HEAP=0`` in the environment skips it.
    """
    environ = os.environ if environ is None else environ
    libc = _libc()
    if libc is None or environ.get(OPT_OUT_ENV, "1") == "0":
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
    return all(libc.mallopt(param, value) == 1 for param, value in settings)


def release_freed_heap() -> bool:
    """Returns the C heap's free memory to the OS (glibc ``malloc_trim(0)``); False elsewhere.

    XLA's compiler frees its working memory (~2 GiB for a ResNet-50 train step) into glibc's
    heap, which keeps it: without this the process's RSS stays at the compiler's peak and the
    step's buffers are mapped on top of it (docs/PERFORMANCE.md, 2026-12-02).
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
