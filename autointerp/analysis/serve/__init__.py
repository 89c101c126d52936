"""The feature browser (`autointerp serve`): a read-only local web app over the store."""

from autointerp.analysis.serve.app import create_app

__all__ = ["create_app"]
