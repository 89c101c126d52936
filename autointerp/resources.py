"""Files shipped with the package (SQL migrations, prompt templates), found the same way installed or in a checkout."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_dir(name: str) -> Path:
    """The directory of shipped files called `name` ('store' or 'prompts')."""
    packaged = resources.files("autointerp") / "_data" / name
    if packaged.is_dir():
        return Path(str(packaged))
    # An editable install or a source checkout: the folder sits beside the package.
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(f"autointerp's {name}/ files are missing from this installation")
