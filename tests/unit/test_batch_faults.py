"""Failures of an overnight batch through the CLI: a bad key then --retry-failed, a loader error, a budget
hit between an explanation and its score, and the failure code of an explainer that never answers usably."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from tests.helpers import PRICES, TINY_COLLECT, copy_db, make_model_dir, query
from tests.llm_server import LoopbackLLM, Reply, echo_logprobs
from tests.unit.test_labelling import LABEL, digit_rule, judge_reply

GOOD = "sk-good-0123456789"
BAD = "sk-bad-9876543210"


def good_script(path: str, request: dict) -> Reply:
    if path.endswith("/chat/completions"):
        return judge_reply(request) or Reply(content=LABEL)
    return Reply(content="", logprobs=echo_logprobs(request["prompt"], digit_rule))


def is_explainer(path: str, request: dict) -> bool:
    return path.endswith("/chat/completions") and request["messages"][0]["content"].startswith("You label features")


def label(db: Path, url: str, *extra: str, key: str = GOOD, timeout: float = 120) -> subprocess.CompletedProcess:
    prices = db.parent / "prices.json"
    prices.write_text(json.dumps(PRICES))
    cmd = [sys.executable, "-m", "autointerp", "label", "--db", str(db), "--base-url", url,
           "--explainer-model", "m-explain", "--simulator-model", "m-sim", "--concurrency", "4", "--timeout", "5",
           "--max-wait-s", "0.5", "--sim-top", "4", "--sim-random", "4", "--n-boot", "50", "--null-samples", "0",
           "--prices", str(prices), *extra]
    return subprocess.run(cmd, env={**os.environ, "OPENAI_API_KEY": key}, capture_output=True, text=True,
                          timeout=timeout)


def live_features(db: Path, n: int) -> list[int]:
    """The first `n` features with explain-split contexts (a dead feature fails without a request)."""
    rows = query(db, "SELECT DISTINCT feature FROM contexts WHERE split = 'explain' ORDER BY feature LIMIT ?", [n])
    return [r[0] for r in rows]


def where(features: list[int]) -> str:
    return f"feature IN ({', '.join(map(str, features))})"


def test_failures_are_final_until_retry_failed_which_keeps_them_as_history(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "retry.duckdb")
    feats = live_features(db, 5)
    with LoopbackLLM(good_script, api_key=GOOD) as server:
        bad = label(db, server.base_url, "--where", where(feats), "--no-judge", key=BAD)
        assert bad.returncode == 0, bad.stderr
        assert all(h.get("authorization") == f"Bearer {BAD}" for h in server.headers)
        assert query(db, "SELECT code, count(*) FROM explanations WHERE explainer = 'm-explain' GROUP BY code") \
            == [("http_error", 5)]

        n = len(server.requests)
        again = label(db, server.base_url, "--where", where(feats), "--no-judge")
        assert again.returncode == 0, again.stderr
        assert len(server.requests) == n  # failures are final: nothing was asked
        assert query(db, "SELECT count(*) FROM explanations WHERE explainer = 'm-explain'") == [(5,)]

        retried = label(db, server.base_url, "--where", where(feats), "--no-judge", "--retry-failed")
        assert retried.returncode == 0, retried.stderr
        assert len([1 for p, r in server.requests[n:] if is_explainer(p, r)]) == 5
    codes = dict(query(db, "SELECT coalesce(code, 'ok'), count(*) FROM explanations WHERE explainer = 'm-explain' "
                           "GROUP BY ALL"))
    assert codes == {"http_error": 5, "ok": 5}  # the failures stay as history
    assert query(db, "SELECT count(*) FROM explanations WHERE explainer = 'm-explain' AND status = 'failed' "
                     "AND error LIKE '%HTTP 401%'") == [(5,)]
    shown = query(db, "SELECT feature, status, code, score_status FROM labels "
                      "WHERE explainer = 'm-explain' ORDER BY feature")
    assert shown == [(f, "ok", None, "ok") for f in feats]  # the newest outcome per feature only


@pytest.fixture(scope="module")
def wide_db(tmp_path_factory) -> Path:
    """512 features (the tiny model with 256-wide hidden states): four of the batch loader's 128-feature chunks."""
    from autointerp.models import load_model

    tmp = tmp_path_factory.mktemp("wide")
    model_dir = make_model_dir(tmp / "model", n_embd=256)
    from tests.helpers import write_corpus

    db = tmp / "wide.duckdb"
    collect_stage(db, CollectConfig(model=str(model_dir), dataset=str(write_corpus(tmp / "c.txt")), **TINY_COLLECT),
                  model=load_model(str(model_dir)))
    return db


def test_a_loader_error_stops_the_batch_clearly_after_writing_what_finished(tmp_path, wide_db):
    db = copy_db(wide_db, tmp_path / "broken.duckdb")
    # A damaged row in the last chunk: the loader reaches it only after the queue has drained by a chunk,
    # so work has finished by then.
    broken = 450
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE examples ALTER acts DROP NOT NULL")
    con.execute("UPDATE examples SET acts = NULL WHERE dictionary_id = 1 AND feature = ? AND rank = 0", [broken])
    assert con.execute("SELECT count(*) FROM features").fetchone()[0] == 512
    con.close()
    with LoopbackLLM(good_script) as server:
        out = label(db, server.base_url, "--features", "0:512", "--no-judge", "--no-baseline", "--concurrency", "8",
                    timeout=200)
    assert out.returncode == 1, out.stdout + out.stderr  # a failed read is internal, not bad input
    assert "error: could not read the contexts of features 384..511 of dictionary 1" in out.stderr
    assert "Traceback" not in out.stderr
    done = query(db, "SELECT min(feature), max(feature), count(*) FROM explanations")[0]
    assert done[2] >= 100 and done[1] < 384  # what finished was written; nothing of the unread chunk
    # Nothing half-written: every stored ok explanation has its score run.
    assert query(db, "SELECT count(*) FROM explanations e WHERE status = 'ok' AND NOT EXISTS "
                     "(SELECT 1 FROM score_runs r WHERE r.explanation_id = e.explanation_id)") == [(0,)]


def test_a_budget_hit_between_explanation_and_score_keeps_the_paid_explanation(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "budget.duckdb")
    feats = live_features(db, 1)
    with LoopbackLLM(good_script) as server:
        first = label(db, server.base_url, "--where", where(feats), "--no-judge", "--no-baseline",
                      "--no-reference", "--concurrency", "1", "--max-cost", "1e-9")
        assert first.returncode == 0, first.stderr
        assert "stopped early: --max-cost" in first.stdout
        assert [is_explainer(p, r) for p, r in server.requests] == [True]  # the simulation was refused
        rows = query(db, "SELECT explanation_id, status FROM explanations")
        assert [r[1] for r in rows] == ["ok"]
        assert query(db, "SELECT count(*) FROM score_runs") == [(0,)]

        second = label(db, server.base_url, "--where", where(feats), "--no-judge", "--no-baseline",
                       "--no-reference", "--concurrency", "1", "--max-cost", "10")
        assert second.returncode == 0, second.stderr
        # Scored (one echo request per simulation run: the label's contexts as one list), not explained again.
        again = [is_explainer(p, r) for p, r in server.requests[1:]]
    assert again and not any(again)
    assert query(db, "SELECT count(DISTINCT run_id) FROM simulations") == [(len(again),)]
    assert query(db, "SELECT explanation_id, status FROM explanations") == rows
    assert query(db, "SELECT explanation_id, status FROM score_runs") == [(rows[0][0], "ok")]


def test_an_explainer_that_never_answers_usably_fails_with_its_code(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "unusable.duckdb")
    feats = live_features(db, 2)

    def script(path: str, request: dict) -> Reply:
        return Reply(content="   \n ") if path.endswith("/chat/completions") else good_script(path, request)

    with LoopbackLLM(script) as server:
        out = label(db, server.base_url, "--where", where(feats), "--no-judge", "--no-baseline", "--max-reasks", "3")
        assert out.returncode == 0, out.stderr
        asked = [p for p, r in server.requests if is_explainer(p, r)]
    assert len(asked) == 2 * (1 + 3)
    assert query(db, "SELECT feature, status, code FROM explanations ORDER BY feature") == \
        [(f, "failed", "unusable_reply") for f in feats]
    assert query(db, "SELECT count(*) FROM llm_calls WHERE role = 'explainer'") == [(8,)]
