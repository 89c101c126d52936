"""A complete Neuronpedia dataset of one dictionary, in the layout Neuronpedia's exporter writes and its admin
import route reads (hijohnnylin/neuronpedia at commit ebb8426f: utils/neuronpedia-utils/neuronpedia_utils/
export-data.py, apps/webapp/app/api/admin/import/route.ts, lib/db/import.ts):

    <out>/config/explanation_type.jsonl, explanation_model_type.jsonl   the type rows the labels name
    <out>/<modelId>/<source>/model.jsonl, sourceset.jsonl, source.jsonl  one row each, created when absent
    <out>/<modelId>/<source>/features/batch-N.jsonl.gz                   `Neuron` rows: every stored feature
    <out>/<modelId>/<source>/activations/batch-N.jsonl.gz                `Activation` rows: the top contexts
    <out>/<modelId>/<source>/explanations/batch-N.jsonl.gz               `Explanation` rows: the labels

The route inserts each features / activations batch with one INSERT ... FROM jsonb_to_recordset, taking the
columns from the batch's first line: every line of a file carries the same keys, and a row that breaks a foreign
key fails its whole batch. Rows already there are skipped (ON CONFLICT DO NOTHING), so ids are derived from
what the row says: the same export gives the same ids, a changed type or model name gives new ones.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autointerp.errors import BadInput

NP_BATCH_ROWS = 1024  # FEATURES_EXPLANATIONS_BATCH_SIZE and ACTIVATIONS_BATCH_SIZE in export-data.py
# The seed's bot user (apps/webapp/prisma/seed.ts), which Neuronpedia's exports use as every author and creator.
NP_DEFAULT_AUTHOR_ID = "clkht01d40000jv08hvalcvly"
# ExplanationType of the token-lookup baseline: it is no LLM's label, so it has no ExplanationModelType.
BASELINE_TYPE = "autointerp_token-lookup"
# Explanation method (ExplanationType) and model (ExplanationModelType) names Neuronpedia's own config holds
# (utils/neuronpedia-utils/neuronpedia_utils/batch-autointerp.py VALID_EXPLAINER_*, app/api/explanation/generate,
# "unknown" from convert-llamascope-arrow-to-neuronpedia-export.py): an instance that imported Neuronpedia's
# config has them, and our config rows must not overwrite theirs (the import upserts them).
NP_METHOD_NAMES = ("oai_token-act-pair", "oai_attention-head", "np_max-act-logits", "np_max-act",
                   "np_acts-logits-general", "python-code", "eleuther_acts_top20", "unknown")
NP_MODEL_NAMES = ("gpt-4o-mini", "gpt-4.1-nano", "gpt-5-nano", "gpt-5-mini-2025-08-07", "gemini-2.0-flash",
                  "gemini-2.5-flash", "gemini-2.5-flash-lite", "gpt-oss-120b", "unknown")


def np_id(*parts: object) -> str:
    """A cuid-shaped id (25 characters, 'c' first) derived from what the row says."""
    digest = hashlib.sha256("/".join(["autointerp", *map(str, parts)]).encode()).hexdigest()
    return "c" + digest[:24]


@dataclass(frozen=True)
class Target:
    """Where the rows go on Neuronpedia and who they say made them."""

    model_id: str
    source: str
    source_set: str
    author_id: str = NP_DEFAULT_AUTHOR_ID


# ---------------------------------------------------------------- rows


def config_rows(type_names: Sequence[str | None], model_names: Sequence[str | None],
                author_id: str) -> dict[str, list[dict[str, Any]]]:
    """The ExplanationType / ExplanationModelType rows the labels' names need, except Neuronpedia's own."""
    types = sorted({n for n in type_names if n and n not in NP_METHOD_NAMES})
    models = sorted({n for n in model_names if n and n not in NP_MODEL_NAMES})
    about = {BASELINE_TYPE: "Token lookup baseline (autointerp): the tokens the feature fires on most, no LLM."}
    return {
        "explanation_type": [{"name": n, "displayName": n, "description": about.get(n, f"autointerp labels ({n})"),
                              "featured": False, "creatorName": "autointerp", "creatorId": author_id}
                             for n in types],
        "explanation_model_type": [{"name": n, "displayName": n, "description": f"explainer model {n} (autointerp)",
                                    "featured": False, "creatorName": "autointerp"} for n in models],
    }


def model_row(t: Target, model: str, layers: int, neurons_per_layer: int) -> dict[str, Any]:
    """`Model`: created only when the instance lacks it. `layers` / `neuronsPerLayer` are what this dictionary
    shows (its layer + 1, its width for MLP neurons), lower bounds where the instance lacks the model. A local
    model directory is no TransformerLens name, so it gives no `tlensId`."""
    return {"id": t.model_id, "displayName": t.model_id, "displayNameShort": t.model_id, "creatorId": t.author_id,
            "tlensId": None if model.startswith(("/", ".", "~")) else model, "layers": layers, "neuronsPerLayer": neurons_per_layer, "owner": "autointerp",
            "visibility": "PUBLIC"}


def sourceset_row(t: Target, description: str) -> dict[str, Any]:
    return {"modelId": t.model_id, "name": t.source_set, "description": description, "creatorName": "autointerp",
            "creatorId": t.author_id, "urls": [], "visibility": "PUBLIC"}


def source_row(t: Target, dataset: str, ctx_len: int, n_contexts: int | None, notes: str) -> dict[str, Any]:
    return {"id": t.source, "modelId": t.model_id, "setName": t.source_set, "creatorId": t.author_id,
            "visibility": "PUBLIC", "hasDashboards": True, "dataset": dataset, "num_prompts": n_contexts,
            "num_tokens_in_prompt": ctx_len, "notes": notes}


def neuron_rows(t: Target, hook: str, summaries: Mapping[int, tuple[float, float]]) -> list[dict[str, Any]]:
    """One `Neuron` per feature: max activation and density (frac_nonzero), as export-data.py writes them."""
    return [{"modelId": t.model_id, "layer": t.source, "index": str(f), "maxActApprox": max_act,
             "creatorId": t.author_id, "frac_nonzero": frac, "sourceSetName": t.source_set, "hookName": hook}
            for f, (max_act, frac) in sorted(summaries.items())]


def activation_rows(t: Target, contexts: Mapping[int, Sequence[tuple[list[str], list[float]]]],
                    data_source: str) -> list[dict[str, Any]]:
    """One `Activation` per context (tokens and values), strongest first within a feature."""
    rows = []
    for f, ctxs in sorted(contexts.items()):
        for n, (tokens, values) in enumerate(sorted(ctxs, key=lambda c: -max(c[1], default=0.0))):
            if not tokens or len(tokens) != len(values):
                continue
            top = max(range(len(values)), key=values.__getitem__)
            rows.append({"id": np_id("activation", t.model_id, t.source, f, n, *tokens), "modelId": t.model_id,
                         "layer": t.source, "index": str(f), "creatorId": t.author_id, "dataSource": data_source,
                         "tokens": list(tokens), "values": [float(v) for v in values],
                         "maxValue": float(values[top]), "minValue": float(min(values)), "maxValueTokenIndex": top})
    return rows


def explanation_rows(t: Target, labels: Sequence[Mapping[str, Any]], method_name: str | None,
                     model_name: str | None) -> list[dict[str, Any]]:
    """One `Explanation` per label, every NOT NULL column set. The baseline's labels are typed BASELINE_TYPE with
    no model name; the others take the names given (foreign keys to ExplanationType / ExplanationModelType)."""
    rows = []
    for r in labels:
        baseline = str(r["explainer"]).startswith("baseline:")
        type_name, model = (BASELINE_TYPE, None) if baseline else (method_name, model_name)
        created: Any = r.get("created_at")
        stamp = created.isoformat() if hasattr(created, "isoformat") else str(created)
        rows.append({
            "id": np_id(t.model_id, t.source, int(r["feature"]), r["explanation_id"], type_name, model),
            "modelId": t.model_id, "layer": t.source, "index": str(int(r["feature"])),
            "description": str(r["label"]).strip(), "authorId": t.author_id,
            "typeName": type_name, "explanationModelName": model,
            "scoreV1": 0.0, "createdAt": stamp, "updatedAt": stamp,
        })
    return rows


# ---------------------------------------------------------------- files


def _batches(rows: list[dict[str, Any]], folder: Path, batch_rows: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("batch-*.jsonl.gz"):
        old.unlink()
    paths = []
    for n, start in enumerate(range(0, len(rows), batch_rows)):
        path = folder / f"batch-{n}.jsonl.gz"
        # mtime=0: the same rows give the same bytes on every export
        with gzip.GzipFile(path, "wb", compresslevel=5, mtime=0) as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows[start:start + batch_rows]).encode())
        paths.append(path)
    return paths


def _jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@dataclass(frozen=True)
class Dataset:
    """Every row of a dataset, by the file it goes to."""

    config: dict[str, list[dict[str, Any]]]
    model: dict[str, Any]
    sourceset: dict[str, Any]
    source: dict[str, Any]
    neurons: list[dict[str, Any]]
    activations: list[dict[str, Any]]
    explanations: list[dict[str, Any]]


def write(ds: Dataset, out_dir: Path, batch_rows: int = NP_BATCH_ROWS) -> dict[str, list[Path]]:
    """The files of `ds` under out_dir (old batches there are removed first); returns them by kind."""
    if batch_rows < 1:
        raise BadInput("--np-batch-rows must be at least 1")
    base = out_dir / ds.model["id"] / ds.source["id"]
    known = {r["index"] for r in ds.neurons}
    missing = sorted({r["index"] for r in ds.explanations + ds.activations} - known, key=int)
    if missing:  # each would fail its batch's foreign key to Neuron
        raise BadInput(f"features {', '.join(missing[:5])} have labels or contexts but no stored statistics")
    files: dict[str, list[Path]] = {"config": [], "metadata": []}
    for name, rows in ds.config.items():
        if rows:
            _jsonl(rows, out_dir / "config" / f"{name}.jsonl")
            files["config"].append(out_dir / "config" / f"{name}.jsonl")
    for name, row in (("model", ds.model), ("sourceset", ds.sourceset), ("source", ds.source)):
        _jsonl([row], base / f"{name}.jsonl")
        files["metadata"].append(base / f"{name}.jsonl")
    files["features"] = _batches(ds.neurons, base / "features", batch_rows)
    files["activations"] = _batches(ds.activations, base / "activations", batch_rows)
    files["explanations"] = _batches(ds.explanations, base / "explanations", batch_rows)
    return files
