"""Text renderings for the terminal: tables and highlighted contexts. Pure functions returning strings."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from typing import Any

# C0 controls, DEL and C1 controls: any of them can move the cursor, retitle or recolour a terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def printable(text: str, keep: str = "") -> str:
    """`text` with control characters (but those in `keep`) written as escapes (\\x1b, \\n), so that text
    from outside (labels, LLM replies, corpus text) cannot drive the terminal it is printed to."""
    def escape(m: re.Match[str]) -> str:
        ch = m.group(0)
        if ch in keep:
            return ch
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}.get(ch, f"\\x{ord(ch):02x}")

    return _CONTROL.sub(escape, text)


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | tuple) and len(v) > 8:
        return "[" + ", ".join(_cell(x) for x in v[:8]) + f", ... ({len(v)})]"
    return printable(str(v))


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_width: int = 60) -> str:
    cells = [[_cell(v)[:max_width] for v in r] for r in rows]
    columns = [printable(c) for c in columns]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, rule, *body, f"({len(rows)} row{'s' if len(rows) != 1 else ''})"])


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return str(v)


def as_json(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return json.dumps([{c: _jsonable(v) for c, v in zip(columns, r, strict=True)} for r in rows], indent=1)


def as_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    # newlines and tabs are CSV's to quote; every other control character is escaped
    w.writerow([printable(c, keep="\n\t") for c in columns])
    w.writerows([[json.dumps(v) if isinstance(v, list) else printable(v, keep="\n\t") if isinstance(v, str) else v
                  for v in r] for r in rows])
    return out.getvalue().rstrip("\n")


FORMATS = {"table": table, "json": as_json, "csv": as_csv}

# 256-colour backgrounds from faint to strong green.
_SHADES = (22, 28, 34, 40, 46)


def highlight(tokens: Sequence[str], acts: Sequence[float], scale: float, color: bool) -> str:
    """Tokens with activations marked: coloured background in a terminal, [token|0.42] otherwise."""
    out = []
    for tok, a in zip(tokens, acts, strict=True):
        t = printable(tok)
        frac = a / scale if scale > 0 else 0.0
        if frac <= 0.05:
            out.append(t)
        elif color:
            shade = _SHADES[min(int(frac * len(_SHADES)), len(_SHADES) - 1)]
            out.append(f"\x1b[48;5;{shade}m\x1b[30m{t}\x1b[0m")
        else:
            out.append(f"[{t}|{a:.2f}]")
    return "".join(out)
