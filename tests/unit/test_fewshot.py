"""Worked examples for the echo simulator (`--sim-fewshot`): other features' real activations, never the
scored feature's own, the same whichever features are labelled together, live and in Batch API mode."""

from __future__ import annotations

import re

import pytest

from autointerp import store
from autointerp.config import LabelConfig
from autointerp.label import explain, fewshot, simulate
from tests.helpers import copy_db, run_label
from tests.helpers import query as q
from tests.llm_server import LoopbackLLM
from tests.unit.test_batch_api import run_batch_api, scores
from tests.unit.test_batch_api import script as batch_script


def test_examples_come_from_other_features_with_their_real_values(collected_db):
    pool = fewshot._pool(str(collected_db), 1, 3)
    assert len(pool) == 3 and len({f for f, _ in pool}) == 3
    with store.open_store(collected_db, read_only=True) as con:
        contexts = store.read_feature_contexts(con, 1, [f for f, _ in pool])
    for f, ex in pool:
        top = min(contexts[f].select("explain", "top"), key=lambda c: c.rank)
        shown = explain.window(top.acts)  # the compact window: 16 tokens before the peak, 4 after
        assert len(shown) < len(top.tokens) and ex.tokens == [top.tokens[i] for i in shown] and max(ex.values) == 9
        assert ex.values == [min(9, max(0, round(9 * top.acts[i] / top.max_act))) for i in shown]  # negatives: 0
        assert ex.label == explain.explain_baseline(contexts[f]).label
    donors = [f for f, _ in pool]
    for f in range(8):
        got = fewshot.fewshot_for(collected_db, 1, f, 2)
        assert len(got) == 2
        assert got == [ex for d, ex in pool if d != f][:2]  # never the feature's own
        if f in donors:
            assert dict(pool)[f] not in got
    assert fewshot.fewshot_for(collected_db, 1, 0, 0) == []


def completion_prompts(requests: list) -> list[str]:
    """Every prompt sent to /completions: live echo simulation sends a label's prompts as one list."""
    out: list[str] = []
    for path, r in requests:
        if path.endswith("/completions") and "prompt" in r:
            out += r["prompt"] if isinstance(r["prompt"], list) else [r["prompt"]]
    return out


def test_the_label_stage_shows_the_examples_and_keys_runs_by_them(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "f.duckdb")
    with LoopbackLLM(batch_script) as llm:
        run_label(db, llm.base_url, [0, 1, 2], judge=False, n_sim_fewshot=1)
        echo = completion_prompts(llm.requests)
        runs_before = q(db, "SELECT count(*) FROM score_runs WHERE simulator = 'm-sim'")[0][0]
        run_label(db, llm.base_url, [0, 1, 2], judge=False, explain=False, n_sim_fewshot=0)  # other settings
    labels = {ex.label for f in range(3) for ex in fewshot.fewshot_for(collected_db, 1, f, 1)}
    assert echo and all(sum(simulate.show(lab) in p for lab in labels) >= 1 for p in echo)
    assert all(re.search(r"\t[0-9]\n", p) for p in echo)  # the example's real values
    assert runs_before == 3
    assert q(db, "SELECT count(*) FROM score_runs WHERE simulator = 'm-sim'") == [(6,)]
    assert q(db, "SELECT count(*) FROM score_runs WHERE config LIKE '%\"n_sim_fewshot\": 1%'") == [(3,)]


def test_batch_api_shows_the_same_examples_as_live(tmp_path, collected_db):
    live, batch = copy_db(collected_db, tmp_path / "live.duckdb"), copy_db(collected_db, tmp_path / "batch.duckdb")
    with LoopbackLLM(batch_script) as server:
        run_label(live, server.base_url, [0, 1, 2], judge=False, n_sim_fewshot=2)
        live_prompts = sorted(completion_prompts(server.requests))
    from tests.unit.test_batch_api import BatchScript, uploaded
    with LoopbackLLM(batch_script, batch=BatchScript(polls=1)) as server:
        run_batch_api(batch, server.base_url, [0, 1, 2], judge=False, n_sim_fewshot=2)
        batch_prompts = sorted(x["body"]["prompt"] for x in uploaded(server) if "prompt" in x["body"])
    assert batch_prompts == live_prompts
    assert scores(batch) == scores(live)


def test_examples_need_the_echo_simulator():
    with pytest.raises(ValueError, match="sim-fewshot needs --simulator-mode echo"):
        LabelConfig(n_sim_fewshot=1, simulator_mode="chat")


def test_echo_shows_two_examples_unless_told_otherwise():
    """The default: OpenAI's simulator shows worked examples, and without them placebo labels gained over
    the reference on SmolLM2 (docs/methodology.md). Chat shows none; 0 turns them off and keeps the
    settings (and so the run keys) of runs made before examples existed."""
    echo, chat, off = LabelConfig(), LabelConfig(simulator_mode="chat"), LabelConfig(n_sim_fewshot=0)
    assert (echo.fewshot, chat.fewshot, off.fewshot) == (2, 0, 0)
    assert echo.simulation_settings("h")["n_sim_fewshot"] == 2
    assert "n_sim_fewshot" not in off.simulation_settings("h") and "n_sim_fewshot" not in chat.simulation_settings("h")
