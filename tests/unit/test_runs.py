"""Scores keyed by the run that made them; null labels scored beside real ones; behaviour runs keyed by
their ablation reference, whose default zero means "explains nothing"."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autointerp.behaviour.stage import behaviour_stage
from autointerp.config import BehaviourConfig
from tests.helpers import copy_db, query, run_label
from tests.llm_server import LoopbackLLM, Reply, echo_logprobs
from tests.unit.test_labelling import good_script, judge_reply


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, collected_db):
    db = copy_db(collected_db, tmp_path_factory.mktemp("runs") / "l.duckdb")
    with LoopbackLLM(good_script) as llm:
        run_label(db, llm.base_url, list(range(8)), n_sim_top=6, null_samples=6)
    return db


def test_null_labels_are_shuffled_constant_and_scored_like_real_ones(labelled):
    nulls = query(labelled, "SELECT null_kind, feature, label_feature, explainer, null_of FROM explanations "
                            "WHERE null_kind IS NOT NULL ORDER BY null_kind, feature")
    shuffled = [r for r in nulls if r[0] == "shuffled"]
    constant = [r for r in nulls if r[0] == "constant"]
    assert len(shuffled) == 6 and len(constant) == 6
    assert all(f != lf and lf is not None for _, f, lf, _, _ in shuffled)  # never a feature's own label
    assert {r[3] for r in shuffled} == {"null:shuffled:m-explain"} and {r[4] for r in shuffled} == {"m-explain"}
    # Null labels have simulation runs of the same settings as the real labels they are the zero of.
    keys = query(labelled, "SELECT DISTINCT e.null_kind IS NULL, r.settings_hash FROM score_runs r "
                           "JOIN explanations e USING (explanation_id) WHERE r.simulator = 'm-sim'")
    assert {k for _, k in keys} == {keys[0][1]} and len(keys) == 2
    # Margins: each real label's value minus the mean of the shuffled nulls' values, p against them.
    null_values = [v for (v,) in query(labelled, "SELECT correlation_top_random FROM labels "
                                                 "WHERE null_kind = 'shuffled' AND correlation_top_random IS NOT NULL")]
    rows = query(labelled, "SELECT correlation_top_random, correlation_top_random_margin, correlation_top_random_p "
                           "FROM labels WHERE explainer = 'm-explain' AND correlation_top_random IS NOT NULL")
    assert rows and null_values
    for value, margin, p in rows:
        assert margin == pytest.approx(value - float(np.mean(null_values)))
        assert p == pytest.approx((1 + sum(v >= value for v in null_values)) / (1 + len(null_values)))
    summary = {r[0] for r in query(labelled, "SELECT explainer FROM dictionary_summary")}
    assert {"m-explain", "null:shuffled:m-explain", "null:constant", "baseline:token-lookup"} <= summary


def test_scoring_again_with_other_settings_is_a_new_run_and_labels_shows_the_latest(tmp_path, labelled):
    db = copy_db(labelled, tmp_path / "again.duckdb")
    before = query(db, "SELECT explanation_id, run_id FROM labels WHERE explainer = 'm-explain' ORDER BY 1")
    with LoopbackLLM(good_script) as llm:
        run_label(db, llm.base_url, list(range(8)), explain=False, n_sim_top=4)
    after = query(db, "SELECT explanation_id, run_id FROM labels WHERE explainer = 'm-explain' ORDER BY 1")
    assert [e for e, _ in after] == [e for e, _ in before]
    assert all(a != b for (_, a), (_, b) in zip(after, before, strict=True))  # the newest run is shown
    # Both runs stay queryable, each with its own settings; the newest used 4 top contexts.
    runs = query(db, "SELECT count(DISTINCT settings_hash), count(*) FROM score_runs r JOIN explanations e "
                     "USING (explanation_id) WHERE e.explainer = 'm-explain' AND r.stage = 'simulation'")
    assert runs == [(2, 16)]
    latest = [r for _, r in after]
    n_top = query(db, f"SELECT max(s.rank) + 1 FROM simulations s WHERE s.kind = 'top' AND s.run_id IN "
                      f"({', '.join(repr(r) for r in latest)})")
    assert n_top == [(4,)]
    for (run_id,) in query(db, "SELECT DISTINCT run_id FROM scores WHERE method = 'correlation_top_random'"):
        assert run_id is not None


def test_behaviour_with_another_ablation_is_new_work_and_both_stay(tmp_path, labelled, tiny_model):
    db = copy_db(labelled, tmp_path / "b.duckdb")
    first = behaviour_stage(db, 1, BehaviourConfig(ablate="mean", n_boot=50), list(range(4)), model=tiny_model)
    assert first.features == 4
    again = behaviour_stage(db, 1, BehaviourConfig(ablate="mean", n_boot=50), list(range(4)), model=tiny_model)
    assert again.features == 0  # nothing pending: the same settings are done
    zero = behaviour_stage(db, 1, BehaviourConfig(ablate="zero", n_boot=50), list(range(4)), model=tiny_model)
    assert zero.features == 4
    modes = query(db, "SELECT json_extract_string(config, '$.ablate') AS mode, count(*) FROM score_runs "
                      "WHERE stage = 'behaviour' GROUP BY mode ORDER BY mode")
    assert [m for m, _ in modes] == ["mean", "zero"] and modes[0][1] == modes[1][1]
    # Both results are in `scores`, told apart by their runs; `labels` shows the newest (zero).
    per_mode = query(db, "SELECT json_extract_string(r.config, '$.ablate'), count(*) FROM scores s "
                         "JOIN score_runs r USING (run_id) WHERE s.method = 'ablation_effect' GROUP BY 1 ORDER BY 1")
    assert [n for _, n in per_mode] == [modes[0][1], modes[1][1]]
    shown = query(db, "SELECT l.ablation_effect, s.value FROM labels l JOIN score_runs r "
                      "ON r.source_run_id = l.run_id AND r.stage = 'behaviour' "
                      "AND json_extract_string(r.config, '$.ablate') = 'zero' "
                      "JOIN scores s ON s.run_id = r.run_id AND s.method = 'ablation_effect' "
                      "WHERE l.feature < 4 AND l.simulator IS NOT NULL")
    assert shown and all(a == pytest.approx(b) for a, b in shown)


def constant_script(path: str, request: dict) -> Reply:
    """A simulator that predicts the same value everywhere, whatever the label (it explains nothing)."""
    if path.endswith("/chat/completions"):
        return judge_reply(request) or Reply(content="anything at all")
    return Reply(content="", logprobs=echo_logprobs(request["prompt"], lambda i, t, ts: {
        str(d): math.log(0.1) for d in range(10)}))


def test_a_constant_simulation_scores_zero_behaviour_with_the_calibrated_reference(tmp_path, collected_db, tiny_model):
    db = copy_db(collected_db, tmp_path / "c.duckdb")
    with LoopbackLLM(constant_script) as llm:
        run_label(db, llm.base_url, list(range(6)), baseline=False)
    out = behaviour_stage(db, 1, BehaviourConfig(n_boot=50), model=tiny_model)  # ablate = calibrated
    assert out.features == 6
    values = query(db, "SELECT behaviour, behaviour_random, ablation_effect FROM labels WHERE explainer = 'm-explain'")
    finite = [b for b, _, _ in values if b is not None]
    assert finite, values
    assert all(abs(b) < 1e-6 for b in finite)
    assert all(abs(r) < 1e-6 for _, r, _ in values if r is not None)


def test_behaviour_batched_over_features_writes_the_rows_one_feature_at_a_time_writes(tmp_path, labelled, tiny_model):
    one, many = copy_db(labelled, tmp_path / "one.duckdb"), copy_db(labelled, tmp_path / "many.duckdb")
    behaviour_stage(one, 1, BehaviourConfig(n_boot=50, feature_batch=1), model=tiny_model)
    out = behaviour_stage(many, 1, BehaviourConfig(n_boot=50, feature_batch=3), model=tiny_model)
    assert out.features == 8  # batches of 3, 3 and 2 features
    # Batching is not a setting of the result: the same key, so another batch size finds nothing to do.
    again = behaviour_stage(many, 1, BehaviourConfig(n_boot=50, feature_batch=8), model=tiny_model)
    assert again.features == 0
    sql = ("SELECT r.feature, r.source_run_id, r.settings_hash, json_extract_string(r.config, '$.ablate_value'), "
           "s.method, s.value, s.ci_low, s.ci_high, s.n_examples, s.note FROM score_runs r JOIN scores s USING (run_id) "
           "WHERE r.stage = 'behaviour' ORDER BY 1, 2, 5")
    a, b = query(one, sql), query(many, sql)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        assert x[:5] == y[:5] and x[8:] == y[8:]
        for u, v in zip(x[5:8], y[5:8], strict=True):
            assert (u is None and v is None) or u == pytest.approx(v, abs=1e-5)
    assert len({r[0] for r in a}) == 8 and len({r[5] for r in a if r[4] == "behaviour"}) > 1


def test_behaviour_in_another_dtype_loads_the_model_in_it_and_is_another_run(tmp_path, labelled, tiny_model):
    db = copy_db(labelled, tmp_path / "d.duckdb")
    behaviour_stage(db, 1, BehaviourConfig(n_boot=50), [0, 1], model=tiny_model)
    out = behaviour_stage(db, 1, BehaviourConfig(n_boot=50, dtype="bfloat16", device="cpu"), [0, 1])
    assert out.features == 2  # the model loaded from the dictionary, in bfloat16: new work beside float32's
    rows = query(db, "SELECT json_extract_string(r.config, '$.dtype'), s.value FROM score_runs r "
                     "JOIN scores s USING (run_id) WHERE r.stage = 'behaviour' AND s.method = 'ablation_effect' "
                     "ORDER BY r.source_run_id, 1 NULLS FIRST")
    assert [d for d, _ in rows[:2]] == [None, "bfloat16"]
    for (_, f32), (_, bf16) in zip(rows[::2], rows[1::2], strict=True):
        # bfloat16 logits carry ~0.01 nats of rounding: small ablation effects move by about that much.
        assert f32 != bf16 and abs(bf16 - f32) < 0.01, (f32, bf16)


def test_status_shows_the_headline_its_resolved_count_and_a_captured_share_on_every_row(tmp_path, labelled, tiny_model):
    from click.testing import CliRunner

    from autointerp.cli import main

    db = copy_db(labelled, tmp_path / "s.duckdb")
    out = behaviour_stage(db, 1, BehaviourConfig(n_boot=50), model=tiny_model)
    assert out.scored > 0 and 0 <= out.resolved <= out.scored
    summary = query(db, "SELECT explainer, behaviour_scored, behaviour_resolved, behaviour_no_effect, behaviour_captured "
                        "FROM dictionary_summary")
    # Every row with a scored label has a share: the KL damage weights are never negative.
    assert summary and all(captured is not None for _, scored, _, _, captured in summary if scored)
    result = CliRunner().invoke(main, ["status", "--db", str(db)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "baseline:token-lookup" in line or "m-explain" in line]
    assert rows and all("no effect)" in line for line in rows), result.output
    assert "resolved" in result.output and "KL" in result.output
