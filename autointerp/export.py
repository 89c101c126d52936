"""Labels and scores in files other tools read: parquet, JSON lines, and Neuronpedia's explanation records."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def neuronpedia_source(hook: str, kind: str) -> str:
    """A Neuronpedia-style source id: '<layer>-<site>' (e.g. 6-mlp-neurons, 8-res-sae)."""
    m = re.match(r"blocks\.(\d+)\.(.+)", hook)
    layer = m.group(1) if m else "0"
    site = m.group(2) if m else hook
    short = {"mlp.hook_post": "mlp", "hook_resid_post": "res", "hook_resid_pre": "res-pre",
             "hook_resid_mid": "res-mid", "hook_mlp_out": "mlp-out", "hook_attn_out": "att"}.get(site, site)
    return f"{layer}-{short}-{'neurons' if kind == 'neurons' else 'sae'}"


def neuronpedia_records(rows: list[dict[str, Any]], model_id: str, source: str) -> list[dict[str, Any]]:
    """One record per ok label, with the fields of Neuronpedia's explanation exports and uploads."""
    return [{"modelId": model_id, "layer": source, "index": str(r["feature"]), "description": r["label"],
             "explanationModelName": r["explainer"],
             "typeName": "autointerp-token-lookup" if r["explainer"].startswith("baseline:") else "autointerp"}
            for r in rows if r["status"] == "ok" and r["label"]]


def write(rows: list[dict[str, Any]], fmt: str, out: Path, model_id: str = "", source: str = "") -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), out)
        return len(rows)
    if fmt == "jsonl":
        with out.open("w") as fh:
            for r in rows:
                fh.write(json.dumps(r, default=str) + "\n")
        return len(rows)
    records = neuronpedia_records(rows, model_id, source)
    out.write_text(json.dumps(records, indent=1))
    return len(records)
