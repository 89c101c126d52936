"""The `autointerp` command line: thin commands grouped by verb; the only package that prints."""

from autointerp.cli import batch, data, planted, serve, work  # noqa: F401  (registers the commands)
from autointerp.cli.base import main

__all__ = ["main"]
