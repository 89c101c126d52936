"""Planted features and check-llm: rules computed on real contexts, bad rules files refused, and the check
telling a scripted oracle (its simulator applies the rule the label names, its explainer returns the true
description) from an endpoint that ignores labels. Real HTTP on 127.0.0.1, a real DuckDB file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from autointerp import store
from autointerp.cli import main
from autointerp.collect import planted
from autointerp.collect.planted_stage import planted_stage
from autointerp.config import CollectConfig, LabelConfig, LLMConfig
from autointerp.label import check, explain
from autointerp.label.stage import open_llm
from tests.llm_server import LoopbackLLM, Reply, echo_logprobs, placeholder_row
from tests.unit.test_labelling import judge_reply

CFG = dict(n_tokens=4000, ctx_len=32, top_k=8, n_quantiles=2, per_quantile=2, n_random=8)


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory, tiny_model_dir, corpus_file) -> Path:
    db = tmp_path_factory.mktemp("planted") / "planted.duckdb"
    planted_stage(db, CollectConfig(model=str(tiny_model_dir), dataset=str(corpus_file), **CFG))
    return db


def test_rules_compute_what_their_descriptions_say():
    toks = ["In", " ", "1", "9", "9", "9", ",", " the", " (", "quick", ")", " of", " the", " `", "code", "`", "."]
    by_name = {r["name"]: r for r in planted.rule_set()}
    fired = {n: [t for t, v in zip(toks, planted.apply_to_strings(r, toks), strict=True) if v]
             for n, r in by_name.items()}
    assert fired["years"] == ["1", "9", "9", "9"] and fired["small-numbers"] == []
    assert fired["the-after-of"] == [" the"] and fired["the-not-after-of"] == [" the"]
    assert fired["in-parens"] == ["quick"] and fired["in-code"] == ["code"]
    assert fired["the-or-comma"] == [",", " the", " the"]
    assert fired["the-after-comma"] == [" the"]  # the second 'the' is 6 tokens after the comma
    kinds = {r["kind"] for r in by_name.values()}
    assert len(by_name) >= 32 and {"or", "and", "except", "token", "bigram", "inside", "number"} <= kinds


def test_a_planted_dictionary_holds_the_rules_activations_and_truth(planted_db):
    with store.open_store(planted_db, read_only=True) as con:
        d = store.list_dictionaries(con)[0]
        truth = store.planted_truth(con, d.dictionary_id)
        comma = next(t.feature for t in truth if t.name == "comma")
        fc = store.read_feature_contexts(con, d.dictionary_id, [comma])[comma]
    assert d.kind == "planted" and len(truth) == len(planted.rule_set())
    # Every stored token activation is the rule's: 1 exactly on commas.
    for c in fc.contexts:
        assert [a > 0 for a in c.acts] == [t.strip() == "," for t in c.tokens]


def _cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


@pytest.mark.parametrize("rule, says", [
    ({"name": "x", "description": "d", "kind": "nope", "params": {}}, "rule 0 'x': field 'kind'"),
    ({"name": "x", "description": "d", "kind": "token"}, "rule 0 'x': field 'params' is missing"),
    ({"name": "x", "description": "d", "kind": "token", "params": {}}, "rule 0 'x': field 'params.words'"),
    ({"name": "x", "kind": "token", "params": {"words": ["a"]}}, "rule 0 'x': field 'description'"),
    ({"name": "never", "description": "d", "kind": "token", "params": {"words": ["zzzqqq"]}},
     "rule 'never': field 'params': the rule never fires"),
])
def test_bad_rules_files_are_refused_with_one_line_and_nothing_written(tmp_path, tiny_model_dir, corpus_file,
                                                                       rule, says):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps([rule]))
    db = tmp_path / "bad.duckdb"
    code, out = _cli("planted", "--rules", str(rules), "--no-builtin", "--model", str(tiny_model_dir),
                     "--dataset", str(corpus_file), "--tokens", "2000", "--ctx-len", "32", "--db", str(db))
    assert code == 2 and says in out and len(out.strip().splitlines()[-1:]) == 1, out
    assert not db.exists() or not store.list_dictionaries(store.open_store(db).__enter__())


def test_a_yaml_rules_file_adds_its_rules_with_their_truth(tmp_path, tiny_model_dir, corpus_file):
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - name: the-or-and\n    description: the words 'the' or 'and'\n"
                     "    kind: or\n    params: {rules: [{kind: token, params: {words: [the]}},"
                     " {kind: token, params: {words: [and]}}]}\n    noise: 0.2\n")
    db = tmp_path / "yaml.duckdb"
    code, out = _cli("planted", "--rules", str(rules), "--model", str(tiny_model_dir), "--dataset", str(corpus_file),
                     "--tokens", "2000", "--ctx-len", "32", "--db", str(db))
    assert code == 0, out
    with store.open_store(db, read_only=True) as con:
        truth = store.planted_truth(con, store.list_dictionaries(con)[0].dictionary_id)
    assert truth[-1].name == "the-or-and" and truth[-1].noise == 0.2 and truth[-1].source == str(rules.resolve())
    assert len(truth) == len(planted.rule_set()) + 1 and truth[0].source == "builtin"


def _unescape(text: str) -> str:
    text = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), text)
    text = text.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r").replace("\\\\", "\\")
    return text.replace("‹", "<").replace("›", ">")


def _echo_target(prompt: str) -> tuple[str, list[str]]:
    """The label and the token strings of the context an echo prompt asks about (its last block)."""
    at = prompt.rindex("Feature explanation: ")
    label = _unescape(prompt[at:].split("\n", 1)[0].removeprefix("Feature explanation: "))
    block = prompt[prompt.index("<start>\n", at) + len("<start>\n"): prompt.index("\n<end>", at)]
    return label, [_unescape(row.rsplit("\t", 1)[0]) for row in block.split("\n")]


def _key(label: str) -> str:
    return label.strip("*_`\"' .")


def prior(tokens: list[str]) -> list[float]:
    """What a simulator predicts for a label it does not follow: a content prior (short tokens)."""
    return [0.2 if len(t.strip()) == 1 else 0.0 for t in tokens]


def oracle(db: Path, follow: bool):
    """The scripted endpoint. Simulator: the rule whose description is the label, else the prior (all labels
    get the prior when not `follow`). Explainer: the true description of the feature whose excerpts it is shown."""
    # Keyed as the label parser leaves a reply (it strips quotes at the ends: "the word 'the'" is stored
    # as "the word 'the"), so the oracle reads the rule a stored label names.
    rules = {_key(r["description"]): r for r in planted.rule_set()}
    with store.open_store(db, read_only=True) as con:
        did = store.list_dictionaries(con)[0].dictionary_id
        truth = {t.feature: t.description for t in store.planted_truth(con, did)}
        fcs = store.read_feature_contexts(con, did, list(truth))
    cfg = LabelConfig()  # type: ignore[call-arg]
    shown = {explain.format_excerpts(explain.explain_contexts(fc, cfg.n_explain_top, cfg.n_explain_quantile),
                                     fc.max_act): truth[f] for f, fc in fcs.items() if fc.max_act > 0}

    def script(path: str, request: dict) -> Reply:
        if path.endswith("/chat/completions"):
            judged = judge_reply(request)
            if judged is not None:
                return judged
            user = request["messages"][-1]["content"]
            return Reply(content=next((d for text, d in shown.items() if text in user), "no idea"))
        label, tokens = _echo_target(request["prompt"])
        rule = rules.get(_key(label)) if follow else None
        values = planted.apply_to_strings(rule, tokens) if rule is not None else prior(tokens)
        values = iter(values)

        def top(i: int, tok: str, toks: list[str]) -> dict[str, float]:
            if placeholder_row(i, tok, toks) is None:
                return {"x": -1.0}
            p = min(max(next(values), 0.0), 1.0)
            return {"9": math.log(p), "0": math.log(1 - p)} if 0 < p < 1 else {"9" if p else "0": 0.0}

        return Reply(content="", logprobs=echo_logprobs(request["prompt"], top))

    return did, script


def _check(db: Path, script) -> check.CheckReport:
    with store.open_store(db, read_only=True) as con:
        did = store.list_dictionaries(con)[0].dictionary_id
        features = check.pick_features(store.scorable_features(con, did), None, True)
    cfg = LabelConfig(n_sim_top=6, n_sim_random=6, n_boot=200, n_sim_fewshot=0)  # type: ignore[call-arg]
    with LoopbackLLM(script) as llm, open_llm(LLMConfig(base_urls=(llm.base_url,), explainer_model="m-explain",
                                                        simulator_model="m-sim")) as session:  # type: ignore[call-arg]
        return check.check_llm(db, did, features, cfg, session)


def test_the_check_tells_an_oracle_that_follows_labels(tmp_path, planted_db):
    db = tmp_path / "oracle.duckdb"
    db.write_bytes(planted_db.read_bytes())
    _, script = oracle(db, follow=True)
    r = _check(db, script)
    assert r.following["true"].n >= 10
    assert r.following["true"].mean >= 0.7, r.following
    assert abs(r.following["wrong"].mean) <= 0.2 and abs(r.following["placebo"].mean) <= 0.05, r.following
    assert r.recovery is not None and 0.9 <= r.recovery.mean <= 1.1, r.recovery
    assert r.verdicts["simulator"].startswith("follows labels:") and r.verdicts["explainer"].startswith("finds")
    # Stored like any run: the true descriptions' gains are rows of the labels view.
    with store.open_store(db, read_only=True) as con:
        _, rows = store.query(con, "SELECT count(*) FROM labels WHERE explainer = 'planted:true' "
                                   "AND correlation_gain IS NOT NULL")
    assert rows[0][0] == r.following["true"].n


def test_the_check_tells_an_endpoint_that_ignores_labels(tmp_path, planted_db):
    db = tmp_path / "deaf.duckdb"
    db.write_bytes(planted_db.read_bytes())
    _, script = oracle(db, follow=False)
    r = _check(db, script)
    assert abs(r.following["true"].mean) <= 0.05, r.following
    assert r.verdicts["simulator"].startswith("does not follow labels")


def test_behaviour_is_skipped_with_its_reason_for_planted_features(planted_db):
    from autointerp.behaviour.stage import behaviour_stage

    with store.open_store(planted_db, read_only=True) as con:
        did = store.list_dictionaries(con)[0].dictionary_id
    out = behaviour_stage(planted_db, did)
    assert out.skipped and "no model to patch" in out.skipped and out.scored == 0


def test_a_check_with_nothing_scored_says_not_measured_not_a_verdict(tmp_path, planted_db):
    """A check whose requests all failed (e.g. timeouts) has no figures: no verdict may be drawn from it."""
    with store.open_store(planted_db, read_only=True) as con:
        did = store.list_dictionaries(con)[0].dictionary_id
    r = check.summarise(planted_db, did, [0, 1, 2], "m-sim", "m-explain", 100)
    assert r.following["true"].n == 0
    assert all(v.startswith("not measured") for v in r.verdicts.values()), r.verdicts


def test_recovery_is_undefined_unless_the_true_descriptions_gain_is_resolved_above_zero():
    """A share of a gain that may be 0 can be anything: with true gains around 0 (a simulator that ignores
    labels), an LLM label at the same ~0 would read as a recovery of -3 or +5; the check says undefined."""
    true_near_zero = [0.02, -0.01, 0.015, -0.02, 0.005, 0.01]
    label = [0.01, 0.0, -0.01, 0.02, 0.0, 0.01]
    assert math.isnan(check._ratio_ci(label, true_near_zero, 200).mean)
    assert math.isnan(check._ratio_ci([0.1], [0.2], 200).mean)  # one feature: below FOLLOWS_GAIN
    assert math.isnan(check._ratio_ci([-0.005, -0.004], [0.01, 0.02], 200).mean)  # resolved above 0, but tiny
    resolved = [0.8, 0.9, 0.7, 1.0, 0.85, 0.95]
    r = check._ratio_ci([x / 2 for x in resolved], resolved, 200)
    assert r.mean == pytest.approx(0.5) and r.low <= 0.5 <= r.high


def test_the_check_picks_only_rules_it_can_score(tmp_path, planted_db):
    """A rule that fires in the explain split's texts but never in the held-out ones has nothing to be scored on;
    the check's spread of rules must not spend a slot on it."""
    db = tmp_path / "one_split.duckdb"
    db.write_bytes(planted_db.read_bytes())
    with store.open_store(db) as con:
        did = store.list_dictionaries(con)[0].dictionary_id
        firing = store.scorable_features(con, did)
        gone = firing[0]
        con.execute("DELETE FROM examples WHERE dictionary_id = ? AND feature = ? AND split = 'holdout' "
                    "AND kind = 'top'", [did, gone])
        assert store.scorable_features(con, did) == firing[1:]
