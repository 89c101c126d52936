"""`autointerp import-labels`: labels written as other tools write them, imported, scored against the loopback
server like ours, and compared with ours; and `export` carrying every score with its run and null margin.

The writers below are transcribed from each tool's code (not from our reader):
- Neuronpedia: utils/neuronpedia-utils/neuronpedia_utils/export-data.py (hijohnnylin/neuronpedia at commit
  1a80fe9b493b90fd521c9437726d0c82c7677917): export_explanations + write_batch_to_jsonl (json.dumps per row,
  the column list below, rows ORDER BY index, which is a string), replace_author_and_creator_with_default_creator_id,
  then compress_files (gzip.compress(compresslevel=5), the .jsonl removed), under exports/<modelId>/<source>/.
- OpenAI: neuron-explainer/neuron_explainer/explanations/explanations.py (openai/automated-interpretability at
  commit 12fc736aeb9c757a2f287c45df3a9c56981cb853): NeuronSimulationResults / ScoredExplanation / ScoredSimulation,
  one per file <layer>/<neuron>.jsonl (load_neuron_explanations), every object with its `dataclass_name`
  (fast_dataclasses.FastDataclass); NeuronId in neuron_explainer/activations/activations.py.
- Delphi: delphi/__main__.py explainer_postprocess (EleutherAI/delphi at commit
  ba6f8448ce8c4eb111de9bb1a55247bac08f3b70): explanations/<latent>.txt holding orjson.dumps(explanation), the name
  from Latent.__repr__ (delphi/latents/latents.py): f"{module_name}_latent{latent_index}".
"""

from __future__ import annotations

import gzip
import json
import math
import re
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from autointerp import store
from autointerp.analysis import compare
from autointerp.cli import main
from autointerp.label.import_stage import import_labels
from tests.helpers import copy_db, run_label
from tests.helpers import query as q
from tests.llm_server import LoopbackLLM, Reply, echo_logprobs, placeholder_row
from tests.unit.test_labelling import LABEL, judge_reply

FEATURES = list(range(6))
THEIRS = "words made of letters"  # a label of theirs unlike ours, so its scores must differ


def label_aware(path: str, request: dict) -> Reply:
    """The scripted LLM: explains with LABEL; its simulator reads the label it is given: a label about digits
    predicts 9 on digit tokens, any other label 9 on tokens made only of letters."""
    if path.endswith("/chat/completions"):
        return judge_reply(request) or Reply(content=LABEL)
    prompt = request["prompt"]
    label = re.findall(r"Feature explanation: (.*)", prompt)[-1]
    about_digits = "digit" in label

    def top(i: int, tok: str, tokens: list[str]) -> dict[str, float]:
        row = placeholder_row(i, tok, tokens)
        if row is None:
            return {"x": -1.0}
        hit = any(ch.isdigit() for ch in row) if about_digits else row.strip().isalpha()
        return {"9": 0.0} if hit else {"0": 0.0}

    return Reply(content="", logprobs=echo_logprobs(prompt, top))


def their_label(f: int) -> str:
    return LABEL if f % 2 == 0 else THEIRS


@pytest.fixture(scope="module")
def ours(tmp_path_factory, collected_db) -> Path:
    """Dictionary 1 with features 0-5 explained and scored by the scripted LLM (and the baseline)."""
    db = copy_db(collected_db, tmp_path_factory.mktemp("imports") / "ours.duckdb")
    with LoopbackLLM(label_aware) as llm:
        run_label(db, llm.base_url, FEATURES, n_boot=50)
    return db


# ---------------------------------------------------------------- the tools' writers, transcribed


def write_neuronpedia(root: Path, model_id: str, source: str, labels: dict[int, str]) -> Path:
    columns = ["id", "modelId", "layer", "index", "authorId", "description", "embedding", "typeName",
               "explanationModelName", "umap_x", "umap_y", "umap_cluster", "umap_log_feature_sparsity"]
    rows = []
    for f, text in labels.items():
        values = [f"clx{f:022d}", model_id, source, str(f), "someone", text, None, "oai_token-act-pair",
                  "gpt-4o-mini", None, None, None, None]
        rows.append(dict(zip(columns, values, strict=True)))
    rows.sort(key=lambda r: r["index"])  # ORDER BY index: a text column
    for r in rows:
        r["authorId"] = "clkht01d40000jv08hvalcvly"  # DEFAULT_CREATOR_ID of .env.default
    out = root / "exports" / model_id / source / "explanations"
    out.mkdir(parents=True)
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    (out / "batch-0.jsonl.gz").write_bytes(gzip.compress(text.encode(), compresslevel=5))
    # a dataset also has features/ and activations/ batches, which hold no labels
    feats = root / "exports" / model_id / source / "features"
    feats.mkdir()
    (feats / "batch-0.jsonl.gz").write_bytes(gzip.compress(json.dumps({"modelId": model_id, "index": "0"}).encode()))
    return root / "exports" / model_id / source


def write_openai(root: Path, layer: int, labels: dict[int, str]) -> Path:
    for f, text in labels.items():
        seq = {"dataclass_name": "SequenceSimulation", "tokens": ["a", "1"], "expected_activations": [0.1, 5.0],
               "activation_scale": "simulated_normalized_activations", "distribution_values": [[0, 9], [0, 9]],
               "distribution_probabilities": [[0.9, 0.1], [0.4, 0.6]], "uncalibrated_simulation": None}
        record = {
            "dataclass_name": "NeuronSimulationResults",
            "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": f},
            "scored_explanations": [{
                "dataclass_name": "ScoredExplanation",
                "explanation": " " + text,  # their explanations start with the space the prompt left
                "scored_simulation": {
                    "dataclass_name": "ScoredSimulation",
                    "scored_sequence_simulations": [{"dataclass_name": "ScoredSequenceSimulation", "simulation": seq,
                                                     "true_activations": [0.0, 1.0], "ev_correlation_score": 1.0,
                                                     "rsquared_score": None, "absolute_dev_explained_score": None}],
                    "ev_correlation_score": 0.5, "rsquared_score": None, "absolute_dev_explained_score": None}}]}
        path = root / "explanations" / str(layer) / f"{f}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record) + "\n")
    return root / "explanations"


def write_delphi(root: Path, module: str, labels: dict[int, str]) -> Path:
    out = root / "results" / "run" / "explanations"
    out.mkdir(parents=True)
    for f, text in labels.items():
        (out / f"{module}_latent{f}.txt").write_bytes(json.dumps(text, separators=(",", ":")).encode())
    return out


def write_csv(root: Path, labels: dict[int, str]) -> Path:
    path = root / "labels.csv"
    path.write_text("feature,label\n" + "".join(f'{f},"{t}"\n' for f, t in labels.items()))
    return path


def write_parquet(root: Path, labels: dict[int, str]) -> Path:
    path = root / "labels.parquet"
    pq.write_table(pa.table({"feature": list(labels), "label": list(labels.values())}), path)
    return path


WRITERS = {
    "neuronpedia": lambda root, labels: write_neuronpedia(root, "tiny-llama", "0", labels),
    "openai": lambda root, labels: write_openai(root, 0, labels),
    "delphi": lambda root, labels: write_delphi(root, "layers.0.mlp", labels),
    "csv": write_csv,
    "parquet": write_parquet,
}


# ---------------------------------------------------------------- import, score, compare


@pytest.mark.parametrize("kind", list(WRITERS))
def test_import_then_score_beside_ours(tmp_path, ours, kind):
    db = copy_db(ours, tmp_path / "x.duckdb")
    path = WRITERS[kind](tmp_path, {f: their_label(f) for f in FEATURES})
    out = import_labels(db, 1, path, "theirs")
    assert out.fmt == ("table" if kind in ("csv", "parquet") else kind)
    assert out.imported == len(FEATURES) and not out.skipped and out.already == 0
    stored = q(db, "SELECT feature, label, prompt_hash, config FROM explanations WHERE explainer = 'theirs' "
                   "ORDER BY feature")
    assert [(f, lab) for f, lab, _, _ in stored] == [(f, their_label(f)) for f in FEATURES]
    assert {ph for _, _, ph, _ in stored} == {out.prompt_hash} and out.prompt_hash.startswith("import:")
    config = json.loads(stored[0][3])
    assert config["format"] == out.fmt and config["imported_from"] == str(path.resolve())

    with LoopbackLLM(label_aware) as llm:
        progress = run_label(db, llm.base_url, FEATURES, explain=False, n_boot=50, explainers=("theirs",),
                             baseline=False)
    assert progress.scored == len(FEATURES)
    with store.open_store(db, read_only=True) as con:
        values = store.score_values(con, [1])
    by = {(v.explainer, v.feature): v.value for v in values if v.method == "correlation_top_random"}
    for f in FEATURES:
        if their_label(f) == LABEL:  # the same label on the same held-out contexts: the same score
            assert (by[("theirs", f)] is None) == (by[("m-explain", f)] is None)
            assert by[("m-explain", f)] is None or by[("theirs", f)] == pytest.approx(by[("m-explain", f)])
        else:  # scored on their label, not ours
            assert by[("theirs", f)] != by[("m-explain", f)]
    # compare's paired difference of theirs against ours, per feature, as `compare` computes it
    ours_v = {f: by[("m-explain", f)] for f in FEATURES}
    theirs_v = {f: by[("theirs", f)] for f in FEATURES}
    cmp = compare.compare("correlation_top_random", "theirs", theirs_v, ours_v, n_boot=50)
    assert cmp.a.n == sum(v is not None and math.isfinite(v) for v in theirs_v.values())
    assert cmp.n_paired >= 1


def test_reimport_is_a_noop_and_the_cli_scores_by_name(tmp_path, ours):
    db = copy_db(ours, tmp_path / "x.duckdb")
    path = write_openai(tmp_path, 0, {f: their_label(f) for f in FEATURES})
    runner = CliRunner()
    first = runner.invoke(main, ["import-labels", str(path), "--explainer", "oai", "--db", str(db)])
    assert first.exit_code == 0, first.output
    assert f"{len(FEATURES)} labels imported as 'oai'" in first.output and "openai" in first.output
    before = q(db, "SELECT count(*) FROM explanations")
    again = runner.invoke(main, ["import-labels", str(path), "--explainer", "oai", "--db", str(db)])
    assert again.exit_code == 0, again.output
    assert "0 labels imported" in again.output and f"{len(FEATURES)} imported from this file before" in again.output
    assert q(db, "SELECT count(*) FROM explanations") == before
    # another explainer name is another set of labels; an edited file is another import
    (path / "0" / "0.jsonl").write_text((path / "0" / "0.jsonl").read_text().replace(LABEL, "digits"))
    out = import_labels(db, 1, path, "oai")
    assert out.imported == len(FEATURES) and out.already == 0

    with LoopbackLLM(label_aware) as llm:
        res = runner.invoke(main, ["score", "--db", str(db), "--dictionary", "1", "--features", "0:6",
                                   "--explainers", "oai", "--base-url", llm.base_url, "--explainer-model", "m-explain",
                                   "--simulator-model", "m-sim", "--null-samples", "4", "--n-boot", "50",
                                   "--no-baseline", "--no-judge", "--sim-top", "6", "--sim-random", "6"],
                            env={"OPENAI_API_KEY": "sk-test"})
    assert res.exit_code == 0, res.output
    # both imports of 'oai' are scored; nulls are made from its labels and give every score a margin
    assert q(db, "SELECT count(*) FROM labels WHERE explainer = 'oai' AND score_status = 'ok'") \
        == [(2 * len(FEATURES),)]
    assert q(db, "SELECT count(*) FROM explanations WHERE null_of = 'oai'") == [(4,)]
    assert q(db, "SELECT count(*) FROM labels WHERE explainer = 'oai' AND correlation_top_random_margin IS NOT NULL "
                 "AND correlation_top_random_p IS NOT NULL")[0][0] > 0


def test_bad_rows_are_skipped_and_reported(tmp_path, ours):
    db = copy_db(ours, tmp_path / "x.duckdb")
    path = tmp_path / "bad.csv"
    path.write_text("feature,label\n"
                    "0,numbers in text\n"
                    "99999,a feature the dictionary lacks\n"
                    "1,\n"
                    '2,"two\nlines"\n'
                    "3,the start of the\n"
                    f'4,"{" ".join(["word"] * 40)}"\n'
                    "x5,not a feature index\n"
                    "0,a second label for feature 0\n"
                    "5,dates and years\n")
    out = import_labels(db, 1, path, "mine")
    assert out.imported == 2 and out.rows == 9
    assert out.skipped == {"unknown feature": 1, "empty label": 1, "label refused: more than one line": 1,
                           "label refused: the phrase is unfinished": 1,
                           "label refused: 40 words, not a short phrase": 1,
                           "feature 'x5' is not a non-negative integer": 1,
                           "another label for this feature earlier in the file (the first is kept, in the file's "
                           "row order)": 1}
    assert out.examples[0] == "bad.csv:3: feature 99999 is not in dictionary 1"
    # skipped rows are not failed explanations: no LLM was asked for them
    assert q(db, "SELECT feature, label, status FROM explanations WHERE explainer = 'mine' ORDER BY feature") == [
        (0, "numbers in text", "ok"), (5, "dates and years", "ok")]
    res = CliRunner().invoke(main, ["import-labels", str(path), "--explainer", "mine", "--db", str(db)])
    assert res.exit_code == 0 and "skipped: 1 x unknown feature" in res.output, res.output
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("feature,label\n99999,x y\n")
    res = CliRunner().invoke(main, ["import-labels", str(nothing), "--explainer", "mine", "--db", str(db)])
    assert res.exit_code == 2 and "no usable labels" in res.output


def test_sources_are_checked_against_the_dictionary(tmp_path, ours):
    db = copy_db(ours, tmp_path / "x.duckdb")
    layer3 = write_openai(tmp_path / "a", 3, {0: LABEL})
    res = CliRunner().invoke(main, ["import-labels", str(layer3), "--explainer", "a", "--db", str(db)])
    assert res.exit_code == 2 and "layer 3" in res.output and "--force" in res.output, res.output
    assert q(db, "SELECT count(*) FROM explanations WHERE explainer = 'a'") == [(0,)]  # nothing written
    out = import_labels(db, 1, layer3, "a", force=True)
    assert out.imported == 1 and out.warnings == ["the labels are for layer 3, this dictionary is at "
                                                  "'blocks.0.mlp.hook_post'"]
    out = import_labels(db, 1, write_neuronpedia(tmp_path / "b", "gpt2-small", "0", {0: LABEL}), "b")
    assert any("cannot tell whether Neuronpedia model 'gpt2-small'" in w for w in out.warnings)
    assert not any("source" in w for w in out.warnings)  # layer 0 neurons are Neuronpedia source "0"
    res = CliRunner().invoke(main, ["import-labels", str(write_csv(tmp_path, {0: LABEL})), "--explainer",
                                    "baseline:mine", "--db", str(db)])
    assert res.exit_code == 2 and "a name of your own" in res.output


def test_a_delphi_run_over_several_modules_imports_one_by_name(tmp_path, ours):
    """Delphi writes every hookpoint's latents into one explanations/ directory, named <module>_latent<N>.txt."""
    db = copy_db(ours, tmp_path / "x.duckdb")
    run = write_delphi(tmp_path / "c", "layers.0.mlp", {0: LABEL, 1: THEIRS})
    for f in (0, 1, 2):
        (run / f"layers.1.mlp_latent{f}.txt").write_text(json.dumps(THEIRS))
    (run / "extra").mkdir()
    (run / "extra" / "notes.txt").write_text("not a label")

    def cli(*args: str):
        return CliRunner().invoke(main, ["import-labels", str(run), "--explainer", "delphi", "--db", str(db), *args])

    res = cli()
    assert res.exit_code == 2 and "layers.0.mlp, layers.1.mlp" in res.output and "--module" in res.output
    res = cli("--module", "layers.7.mlp")
    assert res.exit_code == 2 and "layers.0.mlp, layers.1.mlp" in res.output, res.output
    res = cli("--module", "layers.1.mlp")  # the other layer: refused, as any layer mismatch
    assert res.exit_code == 2 and "--force" in res.output
    res = cli("--module", "layers.0.mlp")
    assert res.exit_code == 0 and "2 labels imported" in res.output and "2 delphi file(s)" in res.output, res.output
    assert q(db, "SELECT feature, label FROM explanations WHERE explainer = 'delphi' ORDER BY feature") == [
        (0, LABEL), (1, THEIRS)]
    # the other module's files are another import (another hash), not "imported before"
    out = import_labels(db, 1, run, "delphi-1", module="layers.1.mlp", force=True)
    assert out.imported == 3 and out.prompt_hash != q(db, "SELECT DISTINCT prompt_hash FROM explanations "
                                                         "WHERE explainer = 'delphi'")[0][0]


def test_skipped_files_are_named_by_their_path_under_the_directory(tmp_path, ours):
    db = copy_db(ours, tmp_path / "x.duckdb")
    run = write_delphi(tmp_path / "c", "layers.0.mlp", {0: LABEL})
    (run / "extra").mkdir()
    (run / "extra" / "notes.txt").write_text("not a label")
    (run / "extra" / "layers.0.mlp_latent1.txt").write_text("not JSON")
    out = import_labels(db, 1, run, "delphi")
    assert out.imported == 1
    assert sorted(out.examples) == ["extra/layers.0.mlp_latent1.txt: not a JSON string (Expecting value: line 1 "
                                    "column 1 (char 0))", "extra/notes.txt: not a <module>_latent<N>.txt file name"]


# ---------------------------------------------------------------- export: every score with its run and margin


def test_exports_carry_runs_settings_and_margins(tmp_path, ours):
    db = copy_db(ours, tmp_path / "x.duckdb")
    with LoopbackLLM(label_aware) as llm:
        run_label(db, llm.base_url, FEATURES, explain=False, n_boot=50, null_samples=4, baseline=False)
    runner = CliRunner()
    for fmt in ("parquet", "jsonl"):
        res = runner.invoke(main, ["export", "--format", fmt, "--out", str(tmp_path / f"l.{fmt}"), "--db", str(db)])
        assert res.exit_code == 0, res.output
    want = q(db, """SELECT l.explanation_id, l.simulator, l.run_id, r.settings_hash, l.correlation_top_random,
                           l.correlation_top_random_margin, l.correlation_top_random_p
                    FROM labels l JOIN score_runs r USING (run_id)
                    WHERE l.explainer = 'm-explain' AND l.null_kind IS NULL ORDER BY ALL""")
    assert any(r[5] is not None for r in want)  # the nulls made margins
    assert all((r[5] is None) == (r[4] is None) for r in want)
    cols = ["explanation_id", "simulator", "run_id", "score_settings_hash", "correlation_top_random",
            "correlation_top_random_margin", "correlation_top_random_p"]

    def rows_of(records: list[dict]) -> list[tuple]:
        # DuckDB's JSON reader types the ids as UUID, which is how it reads them: compare as text
        got = [tuple(str(r[c]) if isinstance(r[c], uuid.UUID) else r[c] for c in cols) for r in records
               if r["explainer"] == "m-explain" and r["null_kind"] is None and r["run_id"] is not None]
        return sorted(got)

    import duckdb
    import pandas as pd

    con = duckdb.connect()
    for fmt, reader in (("parquet", "read_parquet"), ("jsonl", "read_json_auto")):
        cur = con.execute(f"SELECT * FROM {reader}(?)", [str(tmp_path / f"l.{fmt}")])
        names = [d[0] for d in cur.description]
        assert rows_of([dict(zip(names, r, strict=True)) for r in cur.fetchall()]) == want, fmt
    def records(frame: pd.DataFrame) -> list[dict]:
        return frame.astype(object).where(frame.notna(), None).to_dict("records")  # pandas' NaN for NULL -> None

    assert rows_of(records(pd.read_parquet(tmp_path / "l.parquet"))) == want
    assert rows_of(records(pd.read_json(tmp_path / "l.jsonl", lines=True, precise_float=True, dtype={"explanation_id": str,
                                                                                 "run_id": str}))) == want
    # the run's settings travel with it: the JSON the run was keyed by, which hashes to its settings_hash
    record = next(r for r in pq.read_table(tmp_path / "l.parquet").to_pylist() if r["run_id"])
    from autointerp.config import settings_hash

    assert settings_hash(json.loads(record["score_settings"])) == record["score_settings_hash"]
    polars = pytest.importorskip("polars")  # not in the shared venv (a 54 MB runtime wheel)
    assert rows_of(polars.read_parquet(tmp_path / "l.parquet").to_dicts()) == want
    assert rows_of(polars.read_ndjson(tmp_path / "l.jsonl").to_dicts()) == want


def test_our_neuronpedia_dataset_export_imports_back(tmp_path, ours):
    db = copy_db(ours, tmp_path / "x.duckdb")
    res = CliRunner().invoke(main, ["export", "--format", "neuronpedia-dataset", "--out", str(tmp_path / "np"),
                                    "--np-model-id", "tiny-llama", "--db", str(db)])
    assert res.exit_code == 0, res.output
    out = import_labels(db, 1, tmp_path / "np", "roundtrip")
    assert out.fmt == "neuronpedia" and out.imported == len(FEATURES) and not out.skipped
    # the model id was given by hand (the tiny model is no Neuronpedia model): said, not refused
    assert out.warnings and "tiny-llama" in out.warnings[0]
    assert q(db, "SELECT feature, label FROM explanations WHERE explainer = 'roundtrip' ORDER BY feature") == [
        (f, LABEL) for f in FEATURES]
