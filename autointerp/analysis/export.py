"""Labels and scores in files other tools read: parquet, JSON lines, and Neuronpedia's two ways in.

Neuronpedia (github.com/hijohnnylin/neuronpedia, read at commit ebb8426f) takes explanations either
- as a dataset its admin import route loads (`neuronpedia_dataset` writes it: features, activations,
  explanations and the rows they point to); or
- through the public upload-batch route (apps/webapp/app/api/feature/upload-batch/route.tsx): a JSON body
  {modelId, source, features: [{index, density, explanations: [{text, methodName}], activations: [{tokens,
  values}]}]}, at most 128 features, each with at least one activation. The route only accepts a source set its
  caller created (so not an existing model's `neurons`), checks every methodName against ExplanationType, and
  passes any `modelName` on to `prisma.explanation.create`, whose Explanation has no such field: a body that
  sets it fails there, so it is never written.
Neuronpedia computes its own scores and embeddings; ours are not sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from autointerp.analysis import neuronpedia_dataset as npd
from autointerp.errors import BadInput

if TYPE_CHECKING:
    from autointerp.store import DictionaryRow

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

NP_UPLOAD_MAX_FEATURES = 128
NP_UPLOAD_MAX_ACTIVATIONS = 20
_NP_SOURCE = re.compile(r"^(\d+|(\d+|e)-[a-z0-9][a-z0-9._-]*)$")


def write_table(rows: list[dict[str, Any]], fmt: str, out: Path, schema: pa.Schema,
                columns: list[tuple[str, str]]) -> int:
    """The labels view's rows as parquet or JSON lines, typed by the view's columns (`schema`, `columns`: name and
    DuckDB type), not by the rows: a column that is all NULL here keeps its type, so any two exports read
    together. JSON lines get `<out>.schema.json` beside them, the columns' DuckDB types, for
    `read_json(..., columns=...)`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    if fmt == "parquet":
        pq.write_table(table, out)
    else:
        with out.open("w") as fh:
            for r in table.to_pylist():
                fh.write(json.dumps(r, default=_json_value) + "\n")
        schema_path(out).write_text(json.dumps(dict(columns), indent=1) + "\n")
    return len(rows)


def schema_path(jsonl: Path) -> Path:
    return jsonl.with_name(jsonl.name + ".schema.json")


def _json_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


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


# ---------------------------------------------------------------- upload-batch


def upload_bodies(labels: list[Mapping[str, Any]], model_id: str, source: str,
                  activations: Mapping[int, list[tuple[list[str], list[float]]]], density: Mapping[int, float],
                  method_name: str | None = None) -> list[dict[str, Any]]:
    """upload-batch request bodies, NP_UPLOAD_MAX_FEATURES features each. `activations` maps a feature to its
    contexts (tokens, values), strongest first; Neuronpedia requires at least one per feature and non-empty
    token strings, so contexts with an empty token are left out."""
    per_feature: dict[int, list[dict[str, Any]]] = {}
    for r in labels:
        text = str(r["label"]).strip()
        if len(text) > 512:
            raise BadInput(f"feature {r['feature']}: label longer than Neuronpedia's 512 characters")
        per_feature.setdefault(int(r["feature"]), []).append(
            {"text": text, "methodName": _method(r, method_name)})
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


def _method(label: Mapping[str, Any], method_name: str | None) -> str | None:
    """The label's ExplanationType: the baseline's own, else the name given (lowercased, as the route does)."""
    if str(label["explainer"]).startswith("baseline:"):
        return npd.BASELINE_TYPE
    return method_name.lower() if method_name else None


def write_upload(bodies: list[dict[str, Any]], out: Path) -> list[Path]:
    """One body: `out`. More (over 128 features): out-000.json, out-001.json, ... beside it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(bodies) == 1 else [out.with_name(f"{out.stem}-{i:03d}{out.suffix or '.json'}")
                                             for i in range(len(bodies))]
    for body, path in zip(bodies, paths, strict=True):
        path.write_text(json.dumps(body))
    return paths


# ---------------------------------------------------------------- dataset


def np_source_set(source: str) -> str:
    """The source set a source belongs to (getSourceSetNameFromSource in lib/utils/source.ts)."""
    if source.isdigit():
        return "neurons"
    return source[source.index("-") + 1:].split("__")[0] if "-" in source else source


def np_dataset(d: DictionaryRow, labels: list[Mapping[str, Any]], summaries: Mapping[int, tuple[float, float]],
               contexts: Mapping[int, list[tuple[list[str], list[float]]]], model_id: str, source: str,
               method_name: str | None = None, model_name: str | None = None,
               author_id: str = npd.NP_DEFAULT_AUTHOR_ID) -> npd.Dataset:
    """Every row of a Neuronpedia dataset for dictionary `d`: its stored features with
    their statistics and top contexts, and `labels` (np_labels' choice) as explanations."""
    t = npd.Target(model_id, source, np_source_set(source), author_id)
    layer = re.match(r"blocks\.(\d+)\.", d.hook)
    explanations = npd.explanation_rows(t, labels, method_name, model_name)
    return npd.Dataset(
        config=npd.config_rows([r["typeName"] for r in explanations],
                               [r["explanationModelName"] for r in explanations], author_id),
        model=npd.model_row(t, d.model, int(layer.group(1)) + 1 if layer else 1,
                            d.n_features if d.kind == "neurons" else 0),
        sourceset=npd.sourceset_row(t, f"autointerp: {d.sae or d.hook}"),
        source=npd.source_row(t, d.dataset, d.ctx_len, d.n_contexts,
                              f"autointerp dictionary {d.dictionary_id}: {d.kind} at {d.hook}"),
        neurons=npd.neuron_rows(t, d.hook, summaries),
        activations=npd.activation_rows(t, contexts, "autointerp"),
        explanations=explanations)
