"""autointerp: label, score and query every feature of a language model."""

import ctypes
import os
import sys

# PyTorch backs its CPU allocations of 2 MiB and more with transparent huge pages when this is set before its first
# allocation: a batch's activations and the collector's buffers then take a 512th of the page faults, and on a VM
# that backs guest memory lazily each fault is dear (docs/collect-performance.md). A value already set is kept.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def _keep_freed_memory() -> None:
    """glibc gives freed memory at the top of its heap back to the kernel and maps large blocks afresh, under
    thresholds it moves as blocks come and go: the reader's per-batch tensors, freed around the collector's work,
    then fault in fresh pages every batch (MLP neurons, 60k tokens: 1.8M page faults in collect, none in the
    reader alone; docs/collect-performance.md). Fixed thresholds keep blocks under 32 MiB for reuse and up to
    1 GiB of free heap; larger blocks are still mapped and given back. Thresholds set in the environment are kept."""
    if sys.platform != "linux" or any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc; absent from musl
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 << 20)
    mallopt(m_trim_threshold, 1 << 30)


_keep_freed_memory()

__version__ = "0.1.0"
