"""`autointerp export` as Neuronpedia reads it. The rules below are transcribed from Neuronpedia's code
(github.com/hijohnnylin/neuronpedia at commit ebb8426fc550ad5d1f76d52c271a624af3c08a57), not from our writer:
the Explanation model of apps/webapp/prisma/schema.prisma, the explanation import of
apps/webapp/app/api/admin/import/route.ts + lib/db/import.ts, the yup schema of
apps/webapp/app/api/feature/upload-batch/route.tsx, and source naming in apps/webapp/lib/utils/source.ts."""

from __future__ import annotations

import gzip
import json
import re
from datetime import datetime
from pathlib import Path

import pyarrow.parquet as pq
from click.testing import CliRunner

from autointerp.analysis import export
from autointerp.cli import main
from tests.helpers import run_label
from tests.llm_server import LoopbackLLM
from tests.unit.test_labelling import LABEL, good_script

N_LABELLED = 5  # features explained in the `labelled` fixture (tests/conftest.py)

# schema.prisma, model Explanation: every column, as (prisma type, NOT NULL, has a database default).
# `id` has @default(cuid()), which Prisma fills in, not the database: the jsonb_to_recordset import must carry it.
EXPLANATION_COLUMNS = {
    "id": ("String", True, False),
    "modelId": ("String", True, False),
    "layer": ("String", True, False),
    "index": ("String", True, False),
    "embedding": ("vector(256)", False, False),
    "description": ("String", True, False),
    "authorId": ("String", True, False),
    "triggeredByUserId": ("String", False, False),
    "notes": ("String", False, False),
    "scoreV1": ("Float", True, True),
    "scoreV2": ("Float", False, False),
    "umap_x": ("Float", False, True),
    "umap_y": ("Float", False, True),
    "umap_cluster": ("Int", False, True),
    "umap_log_feature_sparsity": ("Float", False, True),
    "typeName": ("String", False, False),
    "explanationModelName": ("String", False, False),
    "createdAt": ("DateTime", True, True),
    "updatedAt": ("DateTime", True, True),
}
PY_TYPES = {"String": str, "Float": (int, float), "Int": int, "DateTime": str}
# route.ts lists explanations/ for files ending .jsonl.gz and matches batch numbers with this pattern.
BATCH_FILE = re.compile(r"^batch-(\d+)\.jsonl\.gz$")


def check_explanation_row(row: dict) -> None:
    assert set(row) <= set(EXPLANATION_COLUMNS), set(row) - set(EXPLANATION_COLUMNS)
    for col, (typ, not_null, has_default) in EXPLANATION_COLUMNS.items():
        if not_null and not has_default:
            assert row.get(col) not in (None, ""), f"NOT NULL column {col} missing"
        if col in row and row[col] is not None:
            assert isinstance(row[col], PY_TYPES.get(typ, object)), (col, row[col])
            if typ == "DateTime":
                datetime.fromisoformat(row[col])
    assert re.fullmatch(r"\d+", row["index"])  # Neuron.index is a String holding the feature number


def read_dataset(root: Path, folder: str = "explanations") -> tuple[list[Path], list[dict]]:
    files = sorted((p for p in root.rglob("*.jsonl.gz") if p.parent.name == folder),
                   key=lambda p: int(BATCH_FILE.match(p.name).group(1)))
    rows = []
    for f in files:
        assert BATCH_FILE.match(f.name)
        rows += [json.loads(line) for line in gzip.decompress(f.read_bytes()).decode().splitlines() if line.strip()]
    return files, rows


# upload-batch: the yup schema, transcribed.
def check_upload_body(body: dict) -> None:
    assert isinstance(body["modelId"], str) and body["modelId"] and body["modelId"] == body["modelId"].lower()
    assert isinstance(body["source"], str) and body["source"] and body["source"] == body["source"].lower()
    feats = body["features"]
    assert 1 <= len(feats) <= 128
    assert len({f["index"] for f in feats}) == len(feats)  # "All indexes must be unique."
    for f in feats:
        assert type(f["index"]) is int and 0 <= f["index"] <= 10_000_000
        if "density" in f:
            assert 0 <= f["density"] <= 1
        for e in f.get("explanations", []):
            assert isinstance(e["text"], str) and 1 <= len(e["text"]) <= 512
            for key in ("methodName", "modelName"):
                assert e.get(key) is None or (isinstance(e[key], str) and e[key] == e[key].lower())
        assert len(f["activations"]) >= 1  # .required().min(1)
        for a in f["activations"]:
            # yup's string().required() refuses the empty string
            assert 1 <= len(a["tokens"]) <= 1024 and all(isinstance(t, str) and t for t in a["tokens"])
            assert 1 <= len(a["values"]) <= 1024 and all(isinstance(v, (int, float)) for v in a["values"])
            assert len(a["tokens"]) == len(a["values"])


def source_set_of(source: str) -> str:
    """getSourceSetNameFromSource in lib/utils/source.ts."""
    if re.fullmatch(r"-?\d+", source):
        return "neurons"
    return source[source.index("-") + 1:].split("__")[0] if "-" in source else source


def run(db: Path, *args: str, ok: bool = True):
    res = CliRunner().invoke(main, ["export", *args, "--db", str(db)])
    assert (res.exit_code == 0) == ok, res.output
    return res


def test_dataset_rows_fit_the_explanation_table(tmp_path, labelled):
    out = tmp_path / "np"
    run(labelled, "--format", "neuronpedia-dataset", "--out", str(out), "--dictionary", "1",
        "--np-model-id", "tiny-llama")
    files, rows = read_dataset(out)
    assert [f.relative_to(out).as_posix() for f in files] == ["tiny-llama/0/explanations/batch-0.jsonl.gz"]
    assert len(rows) == N_LABELLED  # the LLM's labels; the baseline is left out unless asked
    for r in rows:
        check_explanation_row(r)
    # import.ts takes the column list from the first line: every line must carry the same keys
    assert all(set(r) == set(rows[0]) for r in rows)
    assert {r["modelId"] for r in rows} == {"tiny-llama"} and {r["layer"] for r in rows} == {"0"}
    assert sorted(int(r["index"]) for r in rows) == list(range(N_LABELLED))
    assert {r["description"] for r in rows} == {LABEL}
    assert len({r["id"] for r in rows}) == len(rows)
    # the bot user that apps/webapp/prisma/seed.ts creates, which Neuronpedia's own exports use as author
    assert {r["authorId"] for r in rows} == {"clkht01d40000jv08hvalcvly"}
    # typeName / explanationModelName reference ExplanationType / ExplanationModelType rows: null unless named
    assert {r["typeName"] for r in rows} == {None} and {r["explanationModelName"] for r in rows} == {None}
    # route.ts reads these before the batches: without them every Neuron / Explanation row breaks a foreign key
    base = out / "tiny-llama" / "0"
    meta = {name: json.loads((base / f"{name}.jsonl").read_text()) for name in ("model", "sourceset", "source")}
    assert meta["model"]["id"] == "tiny-llama" and meta["source"]["id"] == "0"
    assert meta["sourceset"]["name"] == meta["source"]["setName"] == source_set_of("0") == "neurons"
    neurons, acts = read_dataset(out, "features")[1], read_dataset(out, "activations")[1]
    assert {r["index"] for r in rows} <= {r["index"] for r in neurons} and {r["index"] for r in acts} <= {
        r["index"] for r in neurons}
    assert all(r["sourceSetName"] == "neurons" and 0 <= r["frac_nonzero"] <= 1 for r in neurons)
    for batch in (neurons, acts):
        assert all(set(r) == set(batch[0]) for r in batch)
    assert all(max(a["values"]) == a["maxValue"] == a["values"][a["maxValueTokenIndex"]] for a in acts)


def test_dataset_ids_are_stable_and_batches_split(tmp_path, labelled):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--format", "neuronpedia-dataset", "--dictionary", "1", "--np-model-id", "tiny-llama",
              "--np-include-baseline", "--np-batch-rows", "3", "--np-method-name", "oai_token-act-pair",
              "--np-model-name", "gpt-4o-mini"]
    run(labelled, *common, "--out", str(a))
    run(labelled, *common, "--out", str(b))
    files_a, rows_a = read_dataset(a)
    files_b, _ = read_dataset(b)
    assert len(rows_a) == 2 * N_LABELLED  # LLM + baseline per feature
    assert [len(gzip.decompress(f.read_bytes()).splitlines()) for f in files_a] == [3, 3, 3, 1]
    assert [f.read_bytes() for f in files_a] == [f.read_bytes() for f in files_b]  # same ids, same bytes
    assert len({r["id"] for r in rows_a}) == len(rows_a)
    for r in rows_a:
        check_explanation_row(r)


def test_baseline_labels_carry_their_own_type_and_no_model_name(tmp_path, labelled):
    out = tmp_path / "np"
    run(labelled, "--format", "neuronpedia-dataset", "--dictionary", "1", "--np-model-id", "tiny-llama",
        "--np-include-baseline", "--np-method-name", "oai_token-act-pair", "--np-model-name", "gpt-4o-mini",
        "--out", str(out))
    rows = read_dataset(out)[1]
    typed = {(r["description"] == LABEL, r["typeName"], r["explanationModelName"]) for r in rows}
    assert typed == {(True, "oai_token-act-pair", "gpt-4o-mini"), (False, "autointerp_token-lookup", None)}
    # Neuronpedia's own names come from its config; ours is written for the import to create
    types = [json.loads(x) for x in (out / "config" / "explanation_type.jsonl").read_text().splitlines()]
    assert [t["name"] for t in types] == ["autointerp_token-lookup"]
    assert not (out / "config" / "explanation_model_type.jsonl").exists()
    body = tmp_path / "b.json"
    run(labelled, "--format", "neuronpedia-upload", "--dictionary", "1", "--np-model-id", "tiny-llama",
        "--np-include-baseline", "--np-method-name", "oai_token-act-pair", "--out", str(body))
    methods = {e["methodName"] for f in json.loads(body.read_text())["features"] for e in f["explanations"]}
    assert methods == {"oai_token-act-pair", "autointerp_token-lookup"}


def test_ids_change_when_the_type_or_model_name_changes(tmp_path, labelled):
    ids = []
    for names in ([], ["--np-method-name", "mine"], ["--np-method-name", "mine", "--np-model-name", "m2"]):
        out = tmp_path / str(len(ids))
        run(labelled, "--format", "neuronpedia-dataset", "--dictionary", "1", "--np-model-id", "tiny-llama",
            "--out", str(out), *names)
        ids.append({r["id"] for r in read_dataset(out)[1]})
    assert all(len(x) == N_LABELLED for x in ids)
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])


def test_upload_body_passes_the_upload_batch_schema(tmp_path, labelled):
    out = tmp_path / "body.json"
    res = run(labelled, "--format", "neuronpedia-upload", "--out", str(out), "--dictionary", "1", "--np-model-id",
              "Tiny-Llama", "--np-method-name", "oai_token-act-pair", "--np-model-name", "gpt-4o-mini")
    assert "--np-model-name is not sent" in res.output
    body = json.loads(out.read_text())
    check_upload_body(body)
    assert body["modelId"] == "tiny-llama" and body["source"] == "0" and source_set_of(body["source"]) == "neurons"
    assert [f["index"] for f in body["features"]] == list(range(N_LABELLED))
    for f in body["features"]:
        # no modelName: the route hands it to prisma.explanation.create, and Explanation has no such field
        assert f["explanations"] == [{"text": LABEL, "methodName": "oai_token-act-pair"}]
        maxes = [max(a["values"]) for a in f["activations"]]
        assert maxes == sorted(maxes, reverse=True)  # strongest context first


def test_sae_source_is_layer_and_source_set(tmp_path, labelled):
    out = tmp_path / "sae.json"
    res = run(labelled, "--format", "neuronpedia-upload", "--out", str(out), "--dictionary", "2",
              "--np-model-id", "tiny-llama", ok=False)
    assert "--np-source-set" in res.output
    run(labelled, "--format", "neuronpedia-upload", "--out", str(out), "--dictionary", "2",
        "--np-model-id", "tiny-llama", "--np-source-set", "res-mine")
    body = json.loads(out.read_text())
    check_upload_body(body)
    assert body["source"] == "1-res-mine" and source_set_of(body["source"]) == "res-mine"
    run(labelled, "--format", "neuronpedia-dataset", "--out", str(tmp_path / "d"), "--dictionary", "2",
        "--np-model-id", "tiny-llama", "--np-source-set", "res-mine")
    assert {r["layer"] for r in read_dataset(tmp_path / "d")[1]} == {"1-res-mine"}


def test_unknown_model_id_is_refused_unless_overridden(tmp_path, labelled):
    res = run(labelled, "--format", "neuronpedia-dataset", "--out", str(tmp_path / "x"), "--dictionary", "1",
              ok=False)
    assert "--np-model-id" in res.output and "gpt2-small" in res.output
    res = run(labelled, "--format", "neuronpedia-upload", "--out", str(tmp_path / "x.json"), "--dictionary", "1",
              "--np-source", "bad source", "--np-model-id", "m", ok=False)
    assert "LAYER-SOURCESET" in res.output


def test_model_ids_resolve_from_neuronpedia_names_and_hf_ids():
    assert export.np_model_id("gpt2") == "gpt2-small"
    assert export.np_model_id("google/gemma-2-2b") == "gemma-2-2b"
    assert export.np_model_id("gemma-2-2b") == "gemma-2-2b"
    assert export.np_model_id("whatever/dir", override="My-Model") == "my-model"


def test_upload_over_128_features_is_split_into_bodies(tmp_path):
    labels = [{"feature": f, "explanation_id": f, "label": f"label {f}", "status": "ok", "explainer": "m"}
              for f in range(300)]
    acts = {f: [(["a", "b"], [0.5, float(f)])] for f in range(300)}
    bodies = export.upload_bodies(labels, "m", "3", acts, {f: 0.1 for f in range(300)})
    paths = export.write_upload(bodies, tmp_path / "up.json")
    assert [p.name for p in paths] == ["up-000.json", "up-001.json", "up-002.json"]
    got = [json.loads(p.read_text()) for p in paths]
    for body in got:
        check_upload_body(body)
    assert [f["index"] for b in got for f in b["features"]] == list(range(300))


def test_upload_drops_contexts_neuronpedia_would_refuse(tmp_path):
    labels = [{"feature": 0, "explanation_id": 1, "label": "x", "status": "ok", "explainer": "m"}]
    body = export.upload_bodies(labels, "m", "3", {0: [(["", "b"], [1.0, 2.0]), (["a"], [3.0])]}, {})[0]
    check_upload_body(body)
    assert body["features"][0]["activations"] == [{"tokens": ["a"], "values": [3.0]}]


def test_parquet_and_jsonl_still_read_back(tmp_path, labelled):
    run(labelled, "--format", "parquet", "--out", str(tmp_path / "l.parquet"), "--dictionary", "1")
    run(labelled, "--format", "jsonl", "--out", str(tmp_path / "l.jsonl"), "--dictionary", "1")
    table = pq.read_table(tmp_path / "l.parquet").to_pylist()
    lines = [json.loads(x) for x in (tmp_path / "l.jsonl").read_text().splitlines()]
    assert len(table) == len(lines) == 2 * N_LABELLED
    assert {"label", "explainer", "explanation_id", "correlation_top_random"} <= set(table[0])


def test_exports_with_and_without_behaviour_read_together(tmp_path, collected_db, tiny_model):
    """Parquet and JSON lines take their types from the labels view: a file whose behaviour column is all NULL
    reads beside one that has behaviour scores (inferred from the rows, the first would type it Arrow null)."""
    import duckdb

    from autointerp.behaviour.stage import behaviour_stage
    from autointerp.config import BehaviourConfig
    from tests.helpers import copy_db

    db = copy_db(collected_db, tmp_path / "b.duckdb")
    with LoopbackLLM(good_script) as llm:
        run_label(db, llm.base_url, [0, 1, 2], n_boot=50)
    for name in ("without", "with"):
        if name == "with":
            behaviour_stage(db, 1, BehaviourConfig(n_boot=50), model=tiny_model)
        run(db, "--format", "parquet", "--out", str(tmp_path / f"{name}.parquet"), "--dictionary", "1")
        run(db, "--format", "jsonl", "--out", str(tmp_path / f"{name}.jsonl"), "--dictionary", "1")
    assert pq.read_table(tmp_path / "without.parquet").schema == pq.read_table(tmp_path / "with.parquet").schema
    con = duckdb.connect()
    files = [str(tmp_path / "without.parquet"), str(tmp_path / "with.parquet")]
    got = con.execute("SELECT filename LIKE '%with.parquet', count(behaviour) FROM read_parquet(?, filename = true) "
                      "GROUP BY ALL ORDER BY 1", [files]).fetchall()
    assert got[0] == (False, 0) and got[1][0] and got[1][1] > 0
    columns = json.loads(export.schema_path(tmp_path / "with.jsonl").read_text())
    assert columns == json.loads(export.schema_path(tmp_path / "without.jsonl").read_text())
    assert columns["behaviour"] == "DOUBLE" and columns["created_at"].startswith("TIMESTAMP")
    n = con.execute("SELECT count(behaviour), count(*) FROM read_json(?, columns = ?)",
                    [[str(tmp_path / "without.jsonl"), str(tmp_path / "with.jsonl")], columns]).fetchone()
    assert n[0] == got[1][1] and n[1] == len(pq.read_table(files[0])) + len(pq.read_table(files[1]))
