"""Prompt templates: files under prompts/, rendered by one function, pinned by hash."""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from string import Template
from typing import Any

from autointerp.resources import data_dir


@cache
def template(name: str) -> str:
    return (data_dir("prompts") / f"{name}.txt").read_text()


def render(name: str, **values: object) -> str:
    """Fill $placeholders of prompts/NAME.txt; a missing value is an error, not a blank."""
    return Template(template(name)).substitute({k: str(v) for k, v in values.items()}).strip("\n")


def templates_hash(*names: str, version: str = "") -> str:
    """The hash stored with every result made from these templates; `version` names a format built in
    code (excerpt layout) that the templates do not show, so changing it changes the hash."""
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode() + b"\0" + template(n).encode() + b"\0")
    if version:
        h.update(b"format\0" + version.encode() + b"\0")
    return h.hexdigest()[:16]


def escape_data(text: str) -> str:
    """Token text shown inside a prompt: delimiters and line structure cannot be forged by the data."""
    return (text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
            .replace("<<", "‹‹").replace(">>", "››").replace("<", "‹").replace(">", "›"))


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def reply_json_field(text: str, field: str) -> Any:
    """The value of `field` in the JSON object of an LLM reply (text around the object is allowed);
    ValueError says what was wrong, for a re-ask."""
    m = _JSON_OBJECT.search(text)
    if not m:
        raise ValueError("no JSON object in the reply")
    try:
        data = json.loads(m.group(0))
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or field not in data:
        raise ValueError(f"no '{field}' in the JSON object")
    return data[field]
