"""Explain and score against a real loopback HTTP server speaking the OpenAI API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from autointerp.label import scoring
from tests.helpers import copy_db, run_label
from tests.helpers import query as q
from tests.llm_server import LoopbackLLM, Reply, echo_logprobs, placeholder_row

LABEL = "digits and numbers"


def digit_rule(i: int, tok: str, tokens: list[str]) -> dict[str, float]:
    """The scripted simulator: 9 on rows whose token contains a digit, 0 elsewhere (read at each placeholder)."""
    row = placeholder_row(i, tok, tokens)
    if row is None:
        return {"x": -1.0}
    return {"9": math.log(0.9), "0": math.log(0.1)} if any(ch.isdigit() for ch in row) else {"0": 0.0}


def judge_reply(request: dict) -> Reply | None:
    """The scripted judge answers 1 for every excerpt (balanced accuracy 0.5 when both classes are shown)."""
    user = request["messages"][-1]["content"]
    if '"answers"' not in request["messages"][0]["content"]:
        return None
    n = user.count("</excerpt")
    return Reply(content=json.dumps({"answers": [1] * n}))


def good_script(path: str, request: dict) -> Reply:
    if path.endswith("/chat/completions"):
        return judge_reply(request) or Reply(content=LABEL)
    return Reply(content="", logprobs=echo_logprobs(request["prompt"], digit_rule))


def run_batch(db: Path, url: str, features: list[int], explain: bool = True, score: bool = True, **cfg) -> object:
    return run_label(db, url, features, explain=explain, score=score, **cfg)


def test_explain_and_score_end_to_end(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "a.duckdb")
    with LoopbackLLM(good_script) as llm:
        progress = run_batch(db, llm.base_url, list(range(8)))
    assert progress.features_done == 8 and progress.explained == 8 and progress.scored == 8
    labels = q(db, "SELECT feature, label, explainer, status FROM labels WHERE explainer = 'm-explain' ORDER BY feature")
    assert [r[1] for r in labels] == [LABEL] * 8 and all(r[3] == "ok" for r in labels)
    # The baseline is there too, scored by token lookup.
    assert q(db, "SELECT count(*) FROM labels WHERE explainer = 'baseline:token-lookup' "
                 "AND correlation_top_random IS NOT NULL") == [(8,)]
    # Stored predictions follow the scripted rule, and the stored score is the scoring function of them.
    rows = q(db, """SELECT s.predicted, c.tokens, c.acts, s.purpose, s.kind FROM simulations s
                    JOIN contexts c ON c.dictionary_id = s.dictionary_id AND c.feature = s.feature AND c.seq = s.seq
                         AND c.split = s.split AND c.kind = s.kind AND c.rank = s.rank
                    WHERE s.simulator = 'm-sim' AND s.feature = 3""")
    assert rows
    for predicted, tokens, _, _, _ in rows:
        expected = [0.9 * 9 if any(ch.isdigit() for ch in t) else 0.0 for t in tokens]
        assert np.allclose(predicted, expected)
    scored = [(np.asarray(a), np.asarray(p)) for p, _, a, purpose, _ in rows if purpose == "scoring"]
    (value,) = q(db, "SELECT value FROM scores WHERE feature = 3 AND simulator = 'm-sim' "
                     "AND method = 'correlation_top_random'")[0]
    expected_value = scoring.pooled_correlation(scored)
    assert (value is None and math.isnan(expected_value)) or value == pytest.approx(expected_value)
    # Every call left a row; tokens and cost add up from the price table.
    calls = q(db, "SELECT role, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) FROM llm_calls "
                  "GROUP BY role ORDER BY role")
    judged = q(db, "SELECT method, value, n_examples FROM scores WHERE method IN ('detection', 'fuzzing')")
    assert judged and all(v is None or v == pytest.approx(0.5) for _, v, _ in judged)
    # A judge without both classes of examples sends no request and says why.
    reasons = [r[0] for r in q(db, "SELECT error FROM score_runs WHERE simulator = 'm-sim' AND error IS NOT NULL")]
    skipped = sum(part.count("not scored: too few") for part in reasons)
    # the echo simulator sends one request per label: all its contexts as a list of prompts
    (n_runs,) = q(db, "SELECT count(DISTINCT run_id) FROM simulations WHERE simulator = 'm-sim'")[0]
    assert n_runs == 8
    assert [c[:2] for c in calls] == [("explainer", 8), ("judge", 16 - skipped), ("simulator", n_runs)]
    assert len(judged) == 16 - skipped
    explainer = calls[0]
    assert explainer[4] == pytest.approx((explainer[2] * 1.0 + explainer[3] * 2.0) / 1e6)


def test_rerunning_a_finished_batch_does_nothing(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "b.duckdb")
    with LoopbackLLM(good_script) as llm:
        run_batch(db, llm.base_url, list(range(4)))
        n_requests = len(llm.requests)
        again = run_batch(db, llm.base_url, list(range(4)))
        assert len(llm.requests) == n_requests
    assert again.features_total == 0
    assert q(db, "SELECT count(*) FROM explanations") == [(8,)]
    assert q(db, "SELECT count(*) FROM score_runs") == [(8,)]


def chat_sim_script(path: str, request: dict) -> Reply:
    """Chat-only endpoint: JSON activations by the digit rule, with top_logprobs for each digit."""
    if not path.endswith("/chat/completions"):
        return Reply(status=404, raw_body=b'{"error": {"message": "no completions here"}}')
    system = request["messages"][0]["content"]
    if "predict how strongly" in system:
        rows = request["messages"][1]["content"].split("<tokens>\n", 1)[1].rsplit("\n</tokens>", 1)[0].split("\n")
        values = [9 if any(ch.isdigit() for ch in r) else 0 for r in rows]
        content = [{"token": str(v), "logprob": 0.0, "top_logprobs": [{"token": str(v), "logprob": math.log(0.8)},
                                                                        {"token": "0", "logprob": math.log(0.2)}]}
                   for v in values]
        return Reply(content=json.dumps({"activations": values}), logprobs={"content": content})
    if '"answers"' in system:
        n = request["messages"][-1]["content"].count("</excerpt")
        content = [{"token": "1", "logprob": 0.0,
                    "top_logprobs": [{"token": "1", "logprob": math.log(0.5 + 0.4 * (i % 2))},
                                     {"token": "0", "logprob": math.log(0.5 - 0.4 * (i % 2))}]} for i in range(n)]
        return Reply(content=json.dumps({"answers": [1] * n}), logprobs={"content": content})
    return Reply(content=LABEL)


def test_chat_simulator_mode_uses_json_and_top_logprobs(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "chat.duckdb")
    with LoopbackLLM(chat_sim_script) as llm:
        progress = run_batch(db, llm.base_url, [0, 1, 2], simulator_mode="chat")
    assert progress.scored == 3
    for predicted, tokens in q(db, "SELECT s.predicted, c.tokens FROM simulations s JOIN contexts c "
                                   "USING (dictionary_id, feature, seq, split, kind, rank) WHERE s.simulator = 'm-sim'"):
        # expected value of {v: 0.8, 0: 0.2} is 0.8 * v
        assert np.allclose(predicted, [0.8 * 9 if any(ch.isdigit() for ch in t) else 0.0 for t in tokens], atol=1e-6)
    aucs = q(db, "SELECT method, value FROM scores WHERE method LIKE '%_auc'")
    assert aucs and all(0.0 <= v <= 1.0 for _, v in aucs if v is not None)


def test_judge_scores_by_hand():
    from autointerp.label import detect

    assert detect.parse_answers('Sure: {"answers": [1, 0, 1]}', 3) == [1, 0, 1]
    with pytest.raises(ValueError, match="2 answers for 3"):
        detect.parse_answers('{"answers": [1, 0]}', 3)
    lp = {"content": [{"token": "1", "top_logprobs": [{"token": "1", "logprob": math.log(0.75)},
                                                      {"token": "0", "logprob": math.log(0.25)}]},
                      {"token": "0", "top_logprobs": [{"token": "0", "logprob": 0.0}]}]}
    assert detect.answer_probabilities(lp, 2) == pytest.approx([0.75, 0.0])


def test_feature_selection_by_range_and_sql_condition(collected_db):
    from autointerp import store
    from autointerp.errors import AutointerpError

    with store.open_store(collected_db, read_only=True) as con:
        everything = store.select_features(con, 1)
        assert everything == list(range(64))
        assert store.select_features(con, 1, feature_range=(5, 9)) == [5, 6, 7, 8]
        median = con.execute("SELECT median(max_act) FROM features").fetchone()[0]
        strong = store.select_features(con, 1, f"max_act > {median}")
        expected = [f for (f,) in con.execute(
            "SELECT feature FROM features WHERE max_act > ? ORDER BY 1", [median]).fetchall()]
        assert strong == expected and 0 < len(strong) < 64
        with pytest.raises(AutointerpError, match="bad --where"):
            store.select_features(con, 1, "no_such_column > 1")
