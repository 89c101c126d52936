"""Hard negatives on a planted dictionary with overlapping rules: 'the word the' (A) and 'the word the right
after to' (B). A is B's nearest neighbour by activation correlation and fires wherever B does, so B's hard
negatives are exactly the explain-split sequences with a 'the' and no 'to the'; A has none (B never fires
without A). They reach best-of-k / agent candidate prompts, never one-shot ones; and the per-candidate
temperatures arrive in the requests, with a fallback, once, for an endpoint that refuses temperature."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from autointerp import store
from autointerp.cli import main
from autointerp.collect import planted
from autointerp.label import evidence, negatives
from autointerp.models.neighbours import decoder_neighbours
from tests.helpers import copy_db, query, run_label
from tests.llm_server import LoopbackLLM, Reply
from tests.unit.test_agent import AGENT, FEATURE, RULES, make_planted_db, script

NEGATIVES_HEAD = "Contexts where features similar to this one fire"


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory, tiny_model_dir, corpus_file) -> Path:
    return make_planted_db(tmp_path_factory.mktemp("negatives"), tiny_model_dir, corpus_file)


def _chats(llm: LoopbackLLM) -> list[dict]:
    return [r for p, r in llm.requests if p.endswith("/chat/completions")]


def _expected(db: Path) -> list[int]:
    """B's hard negatives computed from the rules' definitions on the stored token strings: explain-split
    sequences where A fires and B never does, in seq order (A fires at 1.0 everywhere it fires), at most
    N_NEGATIVES."""
    found = []
    for seq, tokens in query(db, "SELECT seq, tokens FROM sequences WHERE split = 'explain' ORDER BY seq"):
        a, b = planted.apply_to_strings(RULES[0], tokens), planted.apply_to_strings(RULES[FEATURE], tokens)
        if max(a) > 0 and max(b) == 0:
            found.append(seq)
    return found[: negatives.N_NEGATIVES]


def test_hard_negatives_are_exactly_where_the_neighbour_fires_and_the_feature_does_not(tmp_path, planted_db):
    db = copy_db(planted_db, tmp_path / "h.duckdb")
    with LoopbackLLM(script) as llm:
        run_label(db, llm.base_url, [0, FEATURE], score=False, **{**AGENT, "strategy": "best-of-k"})
        prompts = [json.dumps(r) for r in _chats(llm)]
    assert query(db, "SELECT measure FROM neighbour_runs") == [("activation_correlation",)]
    near = query(db, "SELECT feature, neighbour, similarity FROM feature_neighbours ORDER BY feature, rank")
    assert near[0][:2] == (0, FEATURE) and [r[:2] for r in near if r[0] == FEATURE][0] == (FEATURE, 0)
    assert all(s > 0 for _, _, s in near)
    expected = _expected(db)
    assert len(expected) == negatives.N_NEGATIVES  # the corpus has enough 'the' not after 'to'
    rows = query(db, "SELECT seq, neighbour, feature_act FROM hard_negatives WHERE feature = ? ORDER BY rank",
                 [FEATURE])
    assert [r[0] for r in rows] == expected and {r[1] for r in rows} == {0} and all(r[2] == 0 for r in rows)
    assert query(db, "SELECT count(*) FROM hard_negatives WHERE feature = 0")[0][0] == 0
    with store.open_store(db, read_only=True) as con:
        shown = negatives.negatives_block(store.hard_negatives(con, 1, FEATURE))
    assert shown.count("<negative ") == len(expected)
    assert any(shown.replace("\n", "\\n") in p or json.dumps(shown)[1:-1] in p for p in prompts)


def test_one_shot_prompts_carry_no_hard_negatives_and_nothing_is_computed(tmp_path, planted_db):
    db = copy_db(planted_db, tmp_path / "o.duckdb")
    with LoopbackLLM(script) as llm:
        run_label(db, llm.base_url, [FEATURE], score=False, **{**AGENT, "strategy": "one-shot"})
        prompts = [json.dumps(r) for r in _chats(llm)]
    assert prompts and not any(NEGATIVES_HEAD in p for p in prompts)
    assert query(db, "SELECT count(*) FROM neighbour_runs")[0][0] == 0


def test_decoder_neighbours_are_the_nearest_by_cosine():
    class Sae:
        W_dec = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))

    idx, sim = decoder_neighbours(Sae(), 10, 40, 3, chunk=7)
    w = Sae.W_dec[10:40].numpy().astype(np.float64)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cos = w @ w.T
    np.fill_diagonal(cos, -np.inf)
    assert (idx == np.argsort(-cos, axis=1)[:, :3]).all()
    assert np.allclose(sim, np.sort(cos, axis=1)[:, ::-1][:, :3], atol=1e-5)


def test_candidate_temperatures_arrive_in_the_requests(tmp_path, planted_db):
    db = copy_db(planted_db, tmp_path / "t.duckdb")
    with LoopbackLLM(script) as llm:
        run_label(db, llm.base_url, [FEATURE], score=False, **{**AGENT, "strategy": "best-of-k", "k": 3})
        sent = [r.get("temperature") for r in _chats(llm)]
    assert sent == [evidence.candidate_temperature(i) for i in range(3)] == [0.0, 0.5, 0.7]
    assert query(db, "SELECT temperature FROM agent_steps WHERE kind = 'candidate' ORDER BY step") == [
        (0.0,), (0.5,), (0.7,)]
    shown = CliRunner().invoke(main, ["show", str(FEATURE), "--no-color", "--limit", "0", "--db", str(db)])
    assert shown.exit_code == 0 and all(f"t={t:g}" in shown.output for t in (0.0, 0.5, 0.7)), shown.output


def test_an_endpoint_refusing_temperature_falls_back_to_its_default_once(tmp_path, planted_db):
    def refusing(path: str, request: dict) -> Reply:
        if "temperature" in request and request["temperature"] != 0.0 and path.endswith("/chat/completions"):
            return Reply(status=400, raw_body=b'{"error": {"message": "Unsupported value: \'temperature\' does '
                                              b'not support 0.5 with this model."}}')
        return script(path, request)

    db = copy_db(planted_db, tmp_path / "r.duckdb")
    with LoopbackLLM(refusing) as llm:
        progress = run_label(db, llm.base_url, [FEATURE], score=False, **{**AGENT, "strategy": "best-of-k", "k": 3})
        sent = [r.get("temperature", "default") for r in _chats(llm)]
    # Candidate 1 is refused once, then sent without temperature; candidate 2 goes without it at once.
    assert sent == [0.0, 0.5, "default", "default"], sent
    assert query(db, "SELECT status FROM agent_steps WHERE kind = 'candidate' ORDER BY step") == [("ok",)] * 3
    refused = query(db, "SELECT error FROM llm_calls WHERE error LIKE '%temperature%'")
    assert len(refused) == 1 and "HTTP 400" in refused[0][0]
    assert any("temperature" in n for n in progress.notes), progress.notes
