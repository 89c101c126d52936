"""autointerp: label, score and query every feature of a language model."""

from autointerp import allocator

allocator.setup()  # before PyTorch's first allocation

__version__ = "0.1.0"
