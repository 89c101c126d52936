"""How the process allocates host memory: PyTorch's large blocks on huge pages, glibc's thresholds fixed, and the
heap kept whole while a collection runs. Fresh memory is dear (each page is faulted in and zeroed by the kernel, and
on a VM that backs guest memory lazily the host charges again), so blocks that come back every batch are reused
rather than returned and faulted in afresh (docs/collect-performance.md). Settings made in the environment win."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import sys
from collections.abc import Callable, Iterator

import numpy as np

# glibc's mallopt parameters, and M_MMAP_MAX's default
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_DEFAULT_MMAP_MAX = 65536
_TRIM_THRESHOLD = 1 << 30  # free heap top kept (mallopt takes a C int: at most 2 GiB; -1 turns trimming off)


def _glibc() -> tuple[Callable[[int, int], int], Callable[[int], int]] | None:
    """(mallopt, malloc_trim) of glibc on Linux, or None (musl, macOS, Windows)."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None


def setup() -> None:
    """Run on `import autointerp`, before PyTorch's first allocation.

    - PyTorch backs its CPU allocations of 2 MiB and more with transparent huge pages (THP_MEM_ALLOC_ENABLE): a
      batch's activations, faulted in once and reused, take a 512th of the page faults (the collector's buffers,
      written once, stay on small pages: `lazy_zeros`).
    - glibc's trim and mmap thresholds are fixed (blocks under 32 MiB kept for reuse, up to 1 GiB of free heap): under
      its moving thresholds the reader's per-batch blocks, freed around the collector's work, were handed back and
      faulted in again every batch (MLP neurons, 60k tokens: 1.8M page faults in collect, none in the reader alone)."""
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    glibc = _glibc()
    if glibc is None or any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return
    mallopt, _ = glibc
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


@contextlib.contextmanager
def heap_only() -> Iterator[None]:
    """Inside: every block comes from glibc's heap, none is mapped on its own, so a block freed is reused by the next
    batch's block of its size instead of being unmapped and faulted in afresh (glibc maps blocks over 32 MiB, the
    most its mmap threshold allows: a 65k-latent SAE's pre-activations for one batch are 256 MiB). On leaving, the
    free heap is handed back (malloc_trim). Buffers that must stay lazily zeroed come from `lazy_zeros`, mappings of
    their own that this does not touch (a calloc inside would take heap memory and write its zeros). Until the heap's free pieces
    coalesce, small objects left between large blocks make some blocks come from fresh memory and the heap grow by
    a few blocks; so inside, the heap is never cut back (rather than past 1 GiB of free top), or a heap that grew
    past 1 GiB would be cut back and faulted in again every batch (a 65k JumpReLU SAE's reader: 159k page faults
    over 20 batches with 1 GiB kept, 3.3k over 16 batches never cut back). MALLOC_MMAP_MAX_ and
    MALLOC_TRIM_THRESHOLD_ in the environment win."""
    glibc = _glibc()
    if glibc is None or "MALLOC_MMAP_MAX_" in os.environ:
        yield
        return
    mallopt, malloc_trim = glibc
    trim = "MALLOC_TRIM_THRESHOLD_" not in os.environ
    mallopt(_M_MMAP_MAX, 0)
    if trim:
        mallopt(_M_TRIM_THRESHOLD, -1)
    try:
        yield
    finally:
        mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
        if trim:
            mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        malloc_trim(0)


def lazy_zeros(shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> np.ndarray:
    """Zeros in a mapping of their own, faulted in page by page as first written, on small pages: the collector's
    buffers, which live the whole run and of which a feature that never fires touches nothing.

    Not on huge pages (numpy asks for them on every large array): here a huge page is a whole 2 MiB block the guest
    kernel has reported free to the host, which the host backs afresh on first write. Measured on this VM (a GiB
    written once, a fresh process each time, 6 s apart): 2.2-2.4 s with huge pages, 0.4-0.7 s without; TopK 16k
    collection at 60k tokens spent 4.2 s in the kernel with them and 1.1-1.3 s without. On a machine whose memory
    is backed, small pages cost about 0.3 s/GiB more to zero than huge ones (0.4 against 0.1). A mapping of its own
    gets no huge pages in the kernel's `madvise` mode; MADV_NOHUGEPAGE keeps it so in `always` mode."""
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if nbytes == 0:
        return np.zeros(shape, dt)
    region = mmap.mmap(-1, nbytes)  # anonymous: zeroed by the kernel, unmapped when the last view is freed
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        region.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(region, dt).reshape(shape)
