"""Labels and scores in files other tools read: parquet, JSON lines, and Neuronpedia's two ways in.

Neuronpedia (github.com/hijohnnylin/neuronpedia, read at commit ebb8426f) takes explanations either
- as a dataset: gzipped JSON lines `<modelId>/<source>/explanations/batch-N.jsonl.gz`, one `Explanation` row each,
  as utils/neuronpedia-utils/neuronpedia_utils/export-data.py writes them and the admin import
  (apps/webapp/app/api/admin/import/route.ts, lib/db/import.ts) inserts them with jsonb_to_recordset, taking the
  columns from the first line and skipping rows whose id exists; or
- through the public upload-batch route (apps/webapp/app/api/feature/upload-batch/route.tsx): a JSON body
  {modelId, source, features: [{index, density, explanations: [{text, methodName, modelName}],
  activations: [{tokens, values}]}]}, at most 128 features, each with at least one activation.
Neuronpedia computes its own scores and embeddings; ours are not sent.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from autointerp.errors import BadInput

# Neuronpedia model ids and the HF models they are (np_model_to_hf.json, a selection).
NP_MODELS: dict[str, str] = {
    "pythia-70m-deduped": "EleutherAI/pythia-70m-deduped",
    "gpt2-small": "openai-community/gpt2",
    "gemma-2-2b": "google/gemma-2-2b",
    "gemma-2-2b-it": "google/gemma-2-2b-it",
    "gemma-2-9b": "google/gemma-2-9b",
    "gemma-2-9b-it": "google/gemma-2-9b-it",
    "gemma-3-270m": "google/gemma-3-270m",
    "gemma-3-1b": "google/gemma-3-1b-pt",
    "gemma-3-4b": "google/gemma-3-4b-pt",
    "qwen2.5-1.5b-it": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen3-1.7b": "Qwen/Qwen3-1.7B",
    "qwen3-4b": "Qwen/Qwen3-4B",
    "llama3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama3.1-8b-it": "meta-llama/Llama-3.1-8B-Instruct",
}
# TransformerLens names that are not an HF id.
_TL_ALIASES = {"gpt2": "gpt2-small", "pythia-70m-deduped": "pythia-70m-deduped"}

# Explanation method (ExplanationType) and model (ExplanationModelType) names Neuronpedia's code uses:
# utils/neuronpedia-utils/neuronpedia_utils/batch-autointerp.py (VALID_EXPLAINER_*), app/api/explanation/generate,
# and "unknown" (convert-llamascope-arrow-to-neuronpedia-export.py). An instance holds the ones its config lists.
NP_METHOD_NAMES = ("oai_token-act-pair", "oai_attention-head", "np_max-act-logits", "np_max-act",
                   "np_acts-logits-general", "python-code", "eleuther_acts_top20", "unknown")
NP_MODEL_NAMES = ("gpt-4o-mini", "gpt-4.1-nano", "gpt-5-nano", "gpt-5-mini-2025-08-07", "gemini-2.0-flash",
                  "gemini-2.5-flash", "gemini-2.5-flash-lite", "gpt-oss-120b", "unknown")
# The seed's bot user (apps/webapp/prisma/seed.ts), which Neuronpedia's exports use as every author.
NP_DEFAULT_AUTHOR_ID = "clkht01d40000jv08hvalcvly"
NP_BATCH_ROWS = 1024  # FEATURES_EXPLANATIONS_BATCH_SIZE in export-data.py
NP_UPLOAD_MAX_FEATURES = 128
NP_UPLOAD_MAX_ACTIVATIONS = 20
_NP_SOURCE = re.compile(r"^(\d+|(\d+|e)-[a-z0-9][a-z0-9._-]*)$")


def write_table(rows: list[dict[str, Any]], fmt: str, out: Path) -> int:
    """The labels view's rows as parquet or JSON lines."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), out)
    else:
        with out.open("w") as fh:
            for r in rows:
                fh.write(json.dumps(r, default=str) + "\n")
    return len(rows)


# ---------------------------------------------------------------- naming


def np_model_id(model: str, override: str | None = None) -> str:
    """The Neuronpedia model id of our model: a known id, a TransformerLens alias or an HF id in NP_MODELS.
    An override is used as given (lowercased, as Neuronpedia does), unchecked."""
    if override:
        return override.lower()
    if model in NP_MODELS:
        return model
    if model in _TL_ALIASES:
        return _TL_ALIASES[model]
    by_hf = {hf.lower(): np_id for np_id, hf in NP_MODELS.items()}
    if model.lower() in by_hf:
        return by_hf[model.lower()]
    raise BadInput(
        f"model '{model}' is not one of the Neuronpedia models this knows ({', '.join(NP_MODELS)}); "
        "pass --np-model-id ID (used as given, without this check)")


def np_source(hook: str, kind: str, source_set: str | None = None, override: str | None = None) -> str:
    """Neuronpedia's source id (lib/utils/source.ts): MLP neurons are the bare layer number ('6'); an SAE is
    '<layer>-<sourceSet>' ('6-res-jb'), its source set one that exists on Neuronpedia, so it must be named."""
    if override:
        src = override.lower()
        if not _NP_SOURCE.match(src):
            raise BadInput(f"--np-source {override}: Neuronpedia sources are a layer number (MLP neurons) "
                                  "or LAYER-SOURCESET, e.g. 6 or 6-res-jb")
        return src
    m = re.match(r"blocks\.(\d+)\.", hook)
    if kind == "neurons":
        if m and hook.endswith(".mlp.hook_post"):
            return m.group(1)
        raise BadInput(f"Neuronpedia's neuron sources are MLP neurons (blocks.N.mlp.hook_post); for "
                              f"'{hook}' pass --np-source")
    if not source_set:
        raise BadInput("an SAE dictionary needs --np-source-set NAME, the Neuronpedia source set its features "
                              "belong to (e.g. res-jb); the source is then LAYER-NAME")
    layer = m.group(1) if m else ("e" if hook == "hook_embed" else None)
    if layer is None:
        raise BadInput(f"cannot tell the layer of hook '{hook}'; pass --np-source")
    return np_source("", "", override=f"{layer}-{source_set}")


def np_explanation_id(model_id: str, source: str, feature: int, explanation_id: str) -> str:
    """A cuid-shaped (25 characters, 'c' first) id derived from our explanation: the same on every export, so a
    re-import inserts nothing twice (the import skips rows whose id exists)."""
    digest = hashlib.sha256(f"autointerp/{model_id}/{source}/{feature}/{explanation_id}".encode()).hexdigest()
    return "c" + digest[:24]


def np_labels(rows: Iterable[Mapping[str, Any]], include_baseline: bool = False) -> list[Mapping[str, Any]]:
    """The labels worth sending: status ok, non-empty, one per explanation (the labels view repeats a label per
    simulator), the token-lookup baseline only when asked."""
    seen: set[str] = set()
    out = []
    for r in rows:
        if r["status"] != "ok" or not (r["label"] or "").strip() or str(r["explanation_id"]) in seen:
            continue
        if str(r["explainer"]).startswith("baseline:") and not include_baseline:
            continue
        seen.add(str(r["explanation_id"]))
        out.append(r)
    return sorted(out, key=lambda r: (r["feature"], str(r["explanation_id"])))


# ---------------------------------------------------------------- dataset


def dataset_rows(labels: list[Mapping[str, Any]], model_id: str, source: str, method_name: str | None = None,
                 model_name: str | None = None, author_id: str = NP_DEFAULT_AUTHOR_ID) -> list[dict[str, Any]]:
    """One `Explanation` row per label, every NOT NULL column set; typeName / explanationModelName are foreign keys
    to names the instance holds, so they stay null unless given."""
    rows = []
    for r in labels:
        created: Any = r.get("created_at")
        stamp = created.isoformat() if hasattr(created, "isoformat") else str(created)
        rows.append({
            "id": np_explanation_id(model_id, source, int(r["feature"]), str(r["explanation_id"])),
            "modelId": model_id, "layer": source, "index": str(int(r["feature"])),
            "description": str(r["label"]).strip(), "authorId": author_id,
            "typeName": method_name, "explanationModelName": model_name,
            "scoreV1": 0.0, "createdAt": stamp, "updatedAt": stamp,
        })
    return rows


def write_dataset(rows: list[dict[str, Any]], out_dir: Path, model_id: str, source: str,
                  batch_rows: int = NP_BATCH_ROWS) -> list[Path]:
    """out_dir/<modelId>/<source>/explanations/batch-N.jsonl.gz, batch_rows rows each (the dataset's layout, so
    out_dir can sit where the import reads). Old batches there are removed first."""
    if batch_rows < 1:
        raise BadInput("--np-batch-rows must be at least 1")
    target = out_dir / model_id / source / "explanations"
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("batch-*.jsonl.gz"):
        old.unlink()
    paths = []
    for n, start in enumerate(range(0, len(rows), batch_rows)):
        path = target / f"batch-{n}.jsonl.gz"
        # mtime=0: the same rows give the same bytes on every export
        with gzip.GzipFile(path, "wb", compresslevel=5, mtime=0) as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in rows[start:start + batch_rows]).encode())
        paths.append(path)
    return paths


# ---------------------------------------------------------------- upload-batch


def upload_bodies(labels: list[Mapping[str, Any]], model_id: str, source: str,
                  activations: Mapping[int, list[tuple[list[str], list[float]]]], density: Mapping[int, float],
                  method_name: str | None = None, model_name: str | None = None) -> list[dict[str, Any]]:
    """upload-batch request bodies, NP_UPLOAD_MAX_FEATURES features each. `activations` maps a feature to its
    contexts (tokens, values), strongest first; Neuronpedia requires at least one per feature and non-empty
    token strings, so contexts with an empty token are left out."""
    per_feature: dict[int, list[dict[str, Any]]] = {}
    for r in labels:
        text = str(r["label"]).strip()
        if len(text) > 512:
            raise BadInput(f"feature {r['feature']}: label longer than Neuronpedia's 512 characters")
        per_feature.setdefault(int(r["feature"]), []).append(
            {"text": text, "methodName": method_name.lower() if method_name else None,
             "modelName": model_name.lower() if model_name else None})
    features = []
    for f, explanations in sorted(per_feature.items()):
        acts = [{"tokens": list(t), "values": [float(v) for v in vals]}
                for t, vals in activations.get(f, []) if t and len(t) == len(vals) <= 1024 and all(t)]
        if not acts:
            raise BadInput(f"feature {f} has no stored context Neuronpedia accepts; upload-batch needs one")
        feat: dict[str, Any] = {"index": f, "explanations": explanations,
                                "activations": acts[:NP_UPLOAD_MAX_ACTIVATIONS]}
        if f in density:
            feat["density"] = min(max(float(density[f]), 0.0), 1.0)
        features.append(feat)
    return [{"modelId": model_id, "source": source, "features": features[i:i + NP_UPLOAD_MAX_FEATURES]}
            for i in range(0, len(features), NP_UPLOAD_MAX_FEATURES)]


def write_upload(bodies: list[dict[str, Any]], out: Path) -> list[Path]:
    """One body: `out`. More (over 128 features): out-000.json, out-001.json, ... beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(bodies) == 1 else [out.with_name(f"{out.stem}-{i:03d}{out.suffix or '.json'}")
                                             for i in range(len(bodies))]
    for body, path in zip(bodies, paths, strict=True):
        path.write_text(json.dumps(body))
    return paths
