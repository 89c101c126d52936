"""Prompt templates: files under prompts/, rendered by one function, pinned by hash."""

from __future__ import annotations

import hashlib
from functools import cache
from string import Template

from autointerp.resources import data_dir


@cache
def template(name: str) -> str:
    return (data_dir("prompts") / f"{name}.txt").read_text()


def render(name: str, **values: object) -> str:
    """Fill $placeholders of prompts/NAME.txt; a missing value is an error, not a blank."""
    return Template(template(name)).substitute({k: str(v) for k, v in values.items()}).strip("\n")


def templates_hash(*names: str) -> str:
    """The hash stored with every result made from these templates."""
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode() + b"\0" + template(n).encode() + b"\0")
    return h.hexdigest()[:16]


def escape_data(text: str) -> str:
    """Token text shown inside a prompt: delimiters and line structure cannot be forged by the data."""
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
            .replace("<<", "‹‹").replace(">>", "››").replace("<", "‹").replace(">", "›"))
