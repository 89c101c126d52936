"""autointerp: label, score and query every feature of a language model."""

__version__ = "0.1.0"
