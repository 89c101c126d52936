"""Batch API mode and batch files against the loopback server's files and batches endpoints: results
equal to a live run's, failures inside batches, kill -9 at every step, export -> runner -> import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PRICES, copy_db, run_label
from tests.helpers import query as q
from tests.llm_server import BatchScript, LoopbackLLM, Reply, echo_logprobs
from tests.unit.test_labelling import LABEL, digit_rule, judge_reply

KEY = "sk-batch-secret-0123456789"
FEATURES = list(range(10))


def script(path: str, request: dict) -> Reply:
    if path.endswith("/chat/completions"):
        return judge_reply(request) or Reply(content=LABEL)
    return Reply(content="", logprobs=echo_logprobs(request["prompt"], digit_rule))


def run_batch_api(db: Path, url: str, features: list[int], *, llm: dict | None = None, **cfg: Any) -> Any:
    """The label stage in Batch API mode through its Python entry point (the test price table)."""
    from autointerp.config import LabelConfig, LLMConfig
    from autointerp.stages.batch import batch_stage
    from autointerp.stages.label import open_llm

    prices = Path(tempfile.mkstemp(suffix=".json")[1])
    prices.write_text(json.dumps(PRICES))
    llm_cfg = LLMConfig(**{"base_urls": (url,), "explainer_model": "m-explain", "simulator_model": "m-sim",
                           "timeout_s": 5.0, "max_attempts": 2, "max_wait_s": 0.2, "prices": str(prices),
                           "batch_api": True, "batch_poll_s": 0.05, **(llm or {})})
    label_cfg = LabelConfig(**{"n_sim_top": 6, "n_sim_random": 6, "n_boot": 200, "null_samples": 0, **cfg})
    os.environ["OPENAI_API_KEY"] = KEY
    try:
        with open_llm(llm_cfg) as session:
            return batch_stage(db, 1, features, label_cfg, llm_cfg, session)
    finally:
        os.environ.pop("OPENAI_API_KEY", None)
        prices.unlink()


def labels(db: Path) -> list[tuple]:
    return q(db, "SELECT feature, explainer, status, label, code FROM explanations ORDER BY feature, explainer")


def scores(db: Path) -> list[tuple]:
    rows = q(db, "SELECT s.feature, e.explainer, s.simulator, s.method, s.value FROM scores s "
                 "JOIN explanations e USING (explanation_id) ORDER BY ALL")
    return [(*r[:4], None if r[4] is None else round(r[4], 9)) for r in rows]


def test_batch_api_run_gives_the_live_rows_at_batch_prices(tmp_path, collected_db):
    live, batch = copy_db(collected_db, tmp_path / "live.duckdb"), copy_db(collected_db, tmp_path / "batch.duckdb")
    with LoopbackLLM(script) as server:
        run_label(live, server.base_url, FEATURES)
    with LoopbackLLM(script, batch=BatchScript(polls=2, shuffle=True)) as server:
        progress = run_batch_api(batch, server.base_url, FEATURES)
        live_paths = [p for p, _ in server.requests if p.endswith("completions")]
        n_batches = len(server.batches)
    assert live_paths == []  # every request went through batches
    assert n_batches == 3  # explain (chat); score: simulate (completions) + judges (chat)
    assert progress.explained == len(FEATURES)
    assert labels(batch) == labels(live)
    assert scores(batch) == scores(live) and len(scores(batch)) > 0
    # Every batch result is an llm_calls row marked with its batch, priced at half the live price.
    calls = q(batch, "SELECT role, count(*), count(batch_id), sum(cost_usd), sum(prompt_tokens), "
                     "sum(completion_tokens) FROM llm_calls GROUP BY role ORDER BY role")
    live_calls = {r[0]: r for r in q(live, "SELECT role, count(*), count(*), sum(cost_usd) FROM llm_calls GROUP BY role")}
    for role, n, n_batch, usd, p_tok, c_tok in calls:
        assert n == n_batch == live_calls[role][1]
        assert usd == pytest.approx(live_calls[role][3] / 2)
    explain_cost = [r for r in calls if r[0] == "explainer"][0]
    assert explain_cost[3] == pytest.approx((explain_cost[4] * 1.0 + explain_cost[5] * 2.0) / 2e6)
    rows = q(batch, "SELECT stage, url, status, n_requests, n_completed, n_failed, cost_usd, ingested_at IS NOT NULL "
                    "FROM batches ORDER BY created_at, batch_key")
    assert [(r[0], r[1], r[2]) for r in rows] == [("explain", "/v1/chat/completions", "completed"),
                                                  ("score", "/v1/chat/completions", "completed"),
                                                  ("score", "/v1/completions", "completed")]
    assert all(r[3] == r[4] and r[5] == 0 and r[7] for r in rows)
    assert sum(r[6] for r in rows) == pytest.approx(sum(r[3] for r in calls))
    assert KEY.encode() not in (tmp_path / "batch.duckdb").read_bytes()
