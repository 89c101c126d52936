"""autointerp: label, score and query every feature of a language model."""

import os

# PyTorch backs its CPU allocations of 2 MiB and more with transparent huge pages when this is set before its first
# allocation: a batch's activations and the collector's buffers then take a 512th of the page faults, and on a VM
# that backs guest memory lazily each fault is dear (docs/collect-performance.md). A value already set is kept.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
