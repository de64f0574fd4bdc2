"""Keep a long run's resident memory at what it uses, not at what it once used.

glibc serves large allocations with ``mmap`` (returned to the OS on ``free``) only above a threshold
that it raises *dynamically* up to 32 MiB each time such a block is freed. After the first freed
shard, every volume-sized array (2 MiB at 2 mm, 18 MiB at 1 mm) then comes from the heap, whose
fragments are not returned: a run's resident set creeps up with the number of shards it has processed.
Fixing the threshold at 1 MiB keeps volume-sized arrays on ``mmap``, so memory is held only while an
array is alive. Measured in-process at 2 mm, N = 400: the SSIM stage peaked at 846 MiB instead of
1,096 MiB, and the resident set between metrics stayed near 500 MiB instead of climbing to 1,090 MiB
(README, "Scaling out").
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import sys

log = logging.getLogger("braingenbench.memory")

HEAP_POLICIES = ("trim", "bounded")  # see apply_heap_policy
#: The default: flat memory in N at 2 mm (+6.5 % from N = 100 to 400) and 17 % faster than 'bounded'
#: (docs/scaling.md, "The heap policy").
DEFAULT_HEAP = "trim"
MMAP_THRESHOLD = 1 << 20  # bytes; arrays at least this large are mmapped and unmapped on free
COMPUTE_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic threshold (64-bit)
_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)


@functools.lru_cache(maxsize=1)
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - glibc only (musl has no mallopt)
        return libc
    except (OSError, AttributeError):
        return None


def bound_heap_growth(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold in this process and in the processes it starts from now on.

    The environment variable ``MALLOC_MMAP_THRESHOLD_`` is set (unless the user set it) so that worker
    processes (radiomics pool, Ray workers of a private cluster) inherit the policy. Returns whether
    this process's allocator accepted it (False off glibc, where nothing changes).
    """
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(int(threshold)))
    libc = _libc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(os.environ["MALLOC_MMAP_THRESHOLD_"])))
    if not ok:
        log.debug("mallopt(M_MMAP_THRESHOLD) was refused; memory may creep with the number of shards")
    return ok


def apply_heap_policy(policy: str) -> bool:
    """Put a run's heap policy in force in this process (and the processes it starts from now on).

    ``trim``: glibc's own dynamic mmap threshold; the executor returns free heap pages to the OS after
    every task and the runner after every metric (:func:`release_free_memory`). ``bounded``: the
    threshold is fixed at :data:`MMAP_THRESHOLD` (:func:`bound_heap_growth`), so volume-sized arrays
    are unmapped when freed, at the cost of zero-filling every large allocation anew. Returns whether a
    threshold was set.
    """
    check_heap_policy(policy)
    return bound_heap_growth() if policy == "bounded" else False


def check_heap_policy(policy: str) -> None:
    """Raise ``ValueError`` (naming the policies) unless ``policy`` is one of :data:`HEAP_POLICIES`."""
    if policy not in HEAP_POLICIES:
        from core.names import did_you_mean

        raise ValueError(f"unknown heap policy {policy!r}{did_you_mean(policy, HEAP_POLICIES, 1)} "
                         f"(available: {', '.join(HEAP_POLICIES)})")


def release_free_memory() -> None:
    """Return free heap pages to the OS (``malloc_trim(0)``); a no-op off glibc."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@contextlib.contextmanager
def compute_allocation(threshold: int = COMPUTE_MMAP_THRESHOLD):
    """Within the block, serve allocations below ``threshold`` from the heap again; then restore the run's
    threshold and trim the heap.

    Torch's activations are short-lived arrays of a few MiB. Under the run's 1 MiB threshold each one is
    a fresh ``mmap`` that the kernel zero-fills page by page, which made ldm3d sampling inside
    ``bench run`` ~1.5x slower than the same call in a plain process (docs/scaling.md, "The heap policy"). A compute block
    (a generator's ``generate``) holds only its own working set, so the heap it grows is returned by the
    ``malloc_trim`` on exit. Does nothing when the run's policy is not in force (no
    ``MALLOC_MMAP_THRESHOLD_``, or one already at least ``threshold``) or off glibc.
    """
    libc = _libc()
    try:
        current = int(os.environ.get("MALLOC_MMAP_THRESHOLD_", ""))
    except ValueError:
        current = None
    if libc is None or current is None or current >= threshold:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_THRESHOLD, current)
        release_free_memory()
