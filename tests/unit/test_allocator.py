"""The process's allocator (autointerp.allocator): each setting against a plain process, in fresh interpreters, since
what the allocator does is decided before the first allocation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(probe: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "THP_MEM_ALLOC_ENABLE"}
    return subprocess.run([sys.executable, "-c", probe, *args], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


_THP_PROBE = """
import sys
if sys.argv[1] == "autointerp first":
    import autointerp  # noqa: F401
import torch
x = torch.ones(64 << 20)  # 256 MiB
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages:"):
        print(int(line.split()[1]) // 1024)
"""


def test_importing_autointerp_first_puts_large_torch_allocations_on_huge_pages():
    """Set before PyTorch's first allocation, THP_MEM_ALLOC_ENABLE makes its large CPU allocations (a batch's
    activations) ask for huge pages; the kernel's `madvise` mode then grants them only
    to memory that asks, so the probe tells the two imports apart."""
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not mode.exists() or "[madvise]" not in mode.read_text():
        pytest.skip("transparent huge pages are not in madvise mode here")

    def huge_mib(order: str) -> int:
        return int(_run(_THP_PROBE, order))

    assert huge_mib("autointerp first") >= 200
    assert huge_mib("torch alone") < 64


_REUSE_PROBE = """
import resource, sys
if sys.argv[1] == "autointerp":
    import autointerp  # noqa: F401
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f0 = faults()
for _ in range(50):
    a = bytearray(3 << 20)
    b = bytearray(2 << 20)
    del a, b
print(faults() - f0)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc thresholds")
def test_importing_autointerp_keeps_freed_blocks_for_reuse_instead_of_faulting_them_in_again():
    """Blocks of a few MiB allocated and freed over and over (a batch's tensors) are reused after `import
    autointerp`; glibc's moving thresholds otherwise hand some back and fault them in again."""
    def faults(first: str) -> int:
        return int(_run(_REUSE_PROBE, first))

    five_mib = 5 << 8  # pages: what the first round must fault in whatever the allocator does
    with_autointerp, without = faults("autointerp"), faults("plain")
    assert with_autointerp < 1.2 * five_mib < without


_HEAP_PROBE = """
import contextlib, resource, sys
import autointerp  # noqa: F401
import torch
from autointerp.allocator import heap_only

def in_heap(address):
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(a, 16) for a in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() >> 20

with heap_only() if sys.argv[1] == "heap" else contextlib.nullcontext():
    x = torch.ones(16 << 20)  # 64 MiB: over the 32 MiB above which glibc maps a block on its own
    heap = in_heap(x.data_ptr())
    del x
    x = torch.ones(64 << 20)  # 256 MiB, freed inside
    del x
    inside = rss_mib()
outside = rss_mib()
print(int(heap), inside - outside)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_heap_only_takes_large_blocks_from_the_heap_and_hands_the_free_heap_back_on_leaving():
    """A block over glibc's largest mmap threshold (a 65k-latent SAE's pre-activations for one batch) is mapped on
    its own, so freeing it unmaps it and the next batch's faults in afresh; inside heap_only it comes from the heap,
    where the next block of its size can reuse it. On leaving, the free heap goes back to the kernel."""
    heap, kept = map(int, _run(_HEAP_PROBE, "heap").split())
    plain, _ = map(int, _run(_HEAP_PROBE, "plain").split())
    assert heap == 1 and plain == 0
    assert kept >= 200  # the 256 MiB freed inside stayed in the heap until heap_only handed it back


_SMALL_PAGES_PROBE = """
import resource, sys
import numpy as np
from autointerp.allocator import lazy_zeros

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() >> 20

def huge_kib(start, end):  # over every mapping of [start, end): an madvise splits one mapping into several
    inside, total = False, 0
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and ":" not in fields[0]:
            lo, hi = (int(a, 16) for a in fields[0].split("-"))
            inside = lo < end and start < hi
        elif inside and fields[0] == "AnonHugePages:":
            total += int(fields[1])
    return total

before = rss_mib()
a = lazy_zeros((64 << 20,)) if sys.argv[1] == "lazy" else np.zeros(64 << 20, np.float32)  # 256 MiB
untouched = rss_mib() - before
a[: 32 << 20] = 1.0  # the first half
print(untouched, rss_mib() - before, huge_kib(a.ctypes.data, a.ctypes.data + a.nbytes), float(a[(32 << 20) - 1] + a[-1]))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/smaps")
def test_lazy_zeros_costs_nothing_until_written_and_stays_on_small_pages():
    """The collector's buffers: no memory until a row is written, then only the pages written, and never huge pages
    (each a whole 2 MiB block the host backs afresh on this VM), where numpy's own zeros ask for them."""
    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    untouched, written, huge, values = _run(_SMALL_PAGES_PROBE, "lazy").split()
    assert int(untouched) < 8 and 120 <= int(written) < 160 and float(values) == 1.0
    assert int(huge) == 0
    if mode.exists() and "[never]" not in mode.read_text():  # the probe can see huge pages here: numpy's get them
        assert int(_run(_SMALL_PAGES_PROBE, "numpy").split()[2]) > 0
