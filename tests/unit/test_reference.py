"""The reference label: the constant label simulated on every scored feature, and `correlation_gain`,
each run's correlation minus the reference's on the same contexts (live path; the Batch API path is in
test_batch_api)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autointerp import store
from autointerp.label import scoring
from tests.helpers import copy_db, run_label
from tests.helpers import query as q
from tests.llm_server import LoopbackLLM, Reply, echo_logprobs, placeholder_row
from tests.unit.test_labelling import digit_rule, judge_reply

LABEL = "digits and numbers"
FEATURES = list(range(6))


def half_digit_rule(i: int, tok: str, tokens: list[str]) -> dict[str, float]:
    """The digit rule at a smaller scale (4.5 vs 0): an affine function of the label's predictions."""
    text = placeholder_row(i, tok, tokens)
    if text is None:
        return {"x": -1.0}
    return {"9": math.log(0.5), "0": math.log(0.5)} if any(ch.isdigit() for ch in text) else {"0": 0.0}


def length_rule(i: int, tok: str, tokens: list[str]) -> dict[str, float]:
    """Content the label does not mention: 9 on tokens of even length, 0 elsewhere."""
    text = placeholder_row(i, tok, tokens)
    if text is None:
        return {"x": -1.0}
    return {"9": 0.0} if len(text) % 2 == 0 else {"0": 0.0}


def script_with(reference_rule):
    def script(path: str, request: dict) -> Reply:
        if path.endswith("/chat/completions"):
            return judge_reply(request) or Reply(content=LABEL)
        rule = reference_rule if "nothing in particular" in request["prompt"] else digit_rule
        return Reply(content="", logprobs=echo_logprobs(request["prompt"], rule))
    return script


def stored(db, run_id: str) -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    rows = q(db, """SELECT c.acts, s.predicted, s.kind, s.purpose FROM simulations s
                    JOIN contexts c ON c.dictionary_id = s.dictionary_id AND c.feature = s.feature AND c.seq = s.seq
                         AND c.split = s.split AND c.kind = s.kind AND c.rank = s.rank
                    WHERE s.run_id = ? ORDER BY s.kind, s.rank""", [run_id])
    return [(np.asarray(a), np.asarray(p), k, purpose) for a, p, k, purpose in rows]


def corr(rows, kinds=("top", "random")) -> float:
    r = scoring.pooled_correlation([(a, p) for a, p, k, purpose in rows if purpose == "scoring" and k in kinds])
    return 0.0 if math.isnan(r) else r


def runs(db) -> dict[tuple[int, str], str]:
    """(feature, 'label' | 'reference') -> the simulation run of the LLM label or the constant label."""
    out = {}
    for f, kind, run_id in q(db, """SELECT r.feature, coalesce(e.null_kind, 'label'), r.run_id FROM score_runs r
                                    JOIN explanations e USING (explanation_id) WHERE r.simulator = 'm-sim'"""):
        out[(f, "reference" if kind == "constant" else kind)] = run_id
    return out


def gain(db, run_id: str, method: str = "correlation_gain") -> tuple[float, float, float, str]:
    rows = q(db, "SELECT value, ci_low, ci_high, note FROM scores WHERE run_id = ? AND method = ?", [run_id, method])
    assert len(rows) == 1, (run_id, method, rows)
    return rows[0]


def test_every_label_gets_its_correlation_minus_the_reference_on_the_same_contexts(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "g.duckdb")
    with LoopbackLLM(script_with(length_rule)) as llm:
        run_label(db, llm.base_url, FEATURES, reference=True)
        n_requests = len(llm.requests)
        run_label(db, llm.base_url, FEATURES, reference=True)
        assert len(llm.requests) == n_requests  # a second run has nothing to do
    by = runs(db)
    assert {f for f, _ in by} == set(FEATURES) and len(by) == 2 * len(FEATURES)
    assert q(db, "SELECT count(*) FROM scores WHERE method = 'correlation_gain'") == [(2 * len(FEATURES),)]
    differs = 0
    for f in FEATURES:
        label, ref = stored(db, by[(f, "label")]), stored(db, by[(f, "reference")])
        assert [r[2:] for r in label] == [r[2:] for r in ref]  # the same contexts, the same purposes
        value, low, high, note = gain(db, by[(f, "label")])
        assert value == pytest.approx(corr(label) - corr(ref), abs=1e-9)
        assert low <= value <= high and by[(f, "reference")] in note
        rvalue, *_ = gain(db, by[(f, "label")], "correlation_random_gain")
        assert rvalue == pytest.approx(corr(label, ("random",)) - corr(ref, ("random",)), abs=1e-9)
        differs += abs(value - corr(label)) > 1e-3
        # The reference itself gains exactly nothing.
        assert gain(db, by[(f, "reference")])[:3] == (0.0, 0.0, 0.0)
    assert differs  # the reference's content rule correlates with some feature: the gain is not the raw score
    view = q(db, "SELECT feature, correlation_gain, correlation_top_random FROM labels WHERE explainer = 'm-explain'")
    assert len(view) == len(FEATURES) and all(g is not None for _, g, _ in view)
    # Behaviour is not run on reference labels made only for the gain (it would double its cost).
    with store.open_store(db, read_only=True) as con:
        pending = {r.run_id for r in store.behaviour_pending(con, 1, "any settings")}
    assert {by[(f, "label")] for f in FEATURES} <= pending
    assert not pending & {by[(f, "reference")] for f in FEATURES}


def test_a_label_that_only_rescales_the_reference_gains_nothing(tmp_path, collected_db):
    """The label's predictions are an affine function of the reference's: whatever its raw correlation,
    its text adds nothing the simulator did not predict from a label that says nothing."""
    db = copy_db(collected_db, tmp_path / "h.duckdb")
    with LoopbackLLM(script_with(half_digit_rule)) as llm:
        run_label(db, llm.base_url, FEATURES, reference=True)
    raw = dict(q(db, "SELECT feature, correlation_top_random FROM labels WHERE explainer = 'm-explain'"))
    assert max(v for v in raw.values() if v is not None) > 0.1
    for f, g in q(db, "SELECT feature, correlation_gain FROM labels WHERE explainer = 'm-explain'"):
        assert g == pytest.approx(0.0, abs=1e-9), (f, g, raw[f])


def test_without_the_reference_nothing_extra_is_simulated(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "n.duckdb")
    with LoopbackLLM(script_with(length_rule)) as llm:
        run_label(db, llm.base_url, FEATURES, reference=False)
        assert not any("nothing in particular" in r.get("prompt", "") for _, r in llm.requests)
    assert q(db, "SELECT count(*) FROM explanations WHERE null_kind IS NOT NULL") == [(0,)]
    assert q(db, "SELECT count(*) FROM scores WHERE method LIKE '%gain'") == [(0,)]


def test_gain_score_is_the_paired_difference_with_its_bootstrap():
    rng = np.random.default_rng(0)
    truth = [rng.random(16) for _ in range(10)]
    label = [t + rng.normal(0, 0.3, 16) for t in truth]
    ref = [rng.random(16) for _ in truth]
    ex, rx = list(zip(truth, label, strict=True)), list(zip(truth, ref, strict=True))
    s = scoring.correlation_gain_score("g", ex, rx, n_boot=500)
    assert s.value == pytest.approx(scoring.pooled_correlation(ex) - scoring.pooled_correlation(rx))
    assert s.ci_low < s.value < s.ci_high and s.n_examples == 10
    same = scoring.correlation_gain_score("g", ex, ex, n_boot=500)
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    # A constant prediction explains nothing: its correlation counts as 0, not as undefined.
    flat = [(t, np.full(16, 3.0)) for t in truth]
    assert scoring.correlation_gain_score("g", ex, flat).value == pytest.approx(scoring.pooled_correlation(ex))
    with pytest.raises(ValueError):
        scoring.correlation_gain_score("g", ex, rx[:3])
