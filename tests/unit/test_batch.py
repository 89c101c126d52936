"""Overnight-batch behaviour through the CLI: kill -9 and resume, a reader while the batch writes, budgets, keys."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from autointerp import store
from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from tests.llm_server import LoopbackLLM, Reply, echo_logprobs
from tests.unit.test_labelling import digit_rule, judge_reply

HOOK = "blocks.0.mlp.hook_post"
KEY = "sk-live-DO-NOT-STORE-0123456789"


def slow_script(delay: float):
    def script(path: str, request: dict) -> Reply:
        if path.endswith("/chat/completions"):
            return judge_reply(request) or Reply(content="numbers", delay_s=delay)
        return Reply(content="", logprobs=echo_logprobs(request["prompt"], digit_rule), delay_s=delay)

    return script


@pytest.fixture(scope="module")
def base_db(tmp_path_factory, tiny_model, tiny_model_dir, corpus_file) -> Path:
    db = tmp_path_factory.mktemp("batch") / "base.duckdb"
    collect_stage(db, CollectConfig(model=str(tiny_model_dir), hook=HOOK, dataset=str(corpus_file), n_tokens=1600,
                                    ctx_len=16, top_k=4, n_quantiles=2, per_quantile=2, n_random=4), model=tiny_model)
    return db


def label_cmd(db: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autointerp", "label", "--db", str(db), "--base-url", url,
            "--explainer-model", "e", "--simulator-model", "s", "--concurrency", "2", "--timeout", "5",
            "--sim-top", "4", "--sim-random", "4", *extra]


def env() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": KEY}


def count(db: Path, sql: str) -> int:
    with store.open_store(db, read_only=True, wait_s=30) as con:
        return int(con.execute(sql).fetchone()[0])


def test_kill_9_then_resume_loses_nothing_and_repeats_nothing(tmp_path, base_db):
    db = tmp_path / "k.duckdb"
    db.write_bytes(base_db.read_bytes())
    with LoopbackLLM(slow_script(0.15)) as server:
        proc = subprocess.Popen(label_cmd(db, server.base_url, "--features", "0:40"), env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while count(db, "SELECT count(*) FROM explanations WHERE explainer = 'e'") < 5:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = count(db, "SELECT count(*) FROM explanations WHERE explainer = 'e'")
        assert 5 <= done_before < 40
        # Nothing half-written: every stored LLM explanation has its score run and scores.
        assert count(db, "SELECT count(*) FROM explanations e WHERE explainer = 'e' AND NOT EXISTS "
                         "(SELECT 1 FROM score_runs r WHERE r.explanation_id = e.explanation_id)") == 0
        assert count(db, "SELECT count(*) FROM score_runs r WHERE NOT EXISTS "
                         "(SELECT 1 FROM scores s WHERE s.explanation_id = r.explanation_id)") == 0
        n_before = len(server.requests)
        done = subprocess.run(label_cmd(db, server.base_url, "--features", "0:40"), env=env(), capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        explainer_requests = [r for p, r in server.requests[n_before:] if p.endswith("/chat/completions")
                              and r["messages"][0]["content"].startswith("You label features")]
    assert len(explainer_requests) == 40 - done_before  # finished features were not asked again
    assert count(db, "SELECT count(*) FROM explanations WHERE explainer = 'e'") == 40
    assert count(db, "SELECT count(*) FROM explanations WHERE explainer = 'baseline:token-lookup'") == 40
    assert count(db, "SELECT count(*) FROM (SELECT feature FROM explanations GROUP BY feature, explainer "
                     "HAVING count(*) > 1)") == 0
    assert count(db, "SELECT count(*) FROM labels WHERE explainer = 'e' AND correlation_top_random IS NULL "
                     "AND status = 'ok' AND simulator IS NULL") == 0


def test_reader_sees_progress_while_the_batch_writes(tmp_path, base_db):
    db = tmp_path / "r.duckdb"
    db.write_bytes(base_db.read_bytes())
    with LoopbackLLM(slow_script(0.1)) as server:
        proc = subprocess.Popen(label_cmd(db, server.base_url, "--features", "0:30"), env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = []
        while proc.poll() is None:
            out = subprocess.run([sys.executable, "-m", "autointerp", "sql", "--db", str(db), "--format", "csv",
                                  "SELECT count(*) FROM explanations WHERE explainer = 'e'"],
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            seen.append(int(out.stdout.splitlines()[1]))
        stdout, stderr = proc.communicate()
        assert proc.returncode == 0, stderr
    assert seen == sorted(seen) and len(set(seen)) >= 2  # partial results were visible, growing
    assert count(db, "SELECT count(*) FROM explanations WHERE explainer = 'e'") == 30
    assert "30/30 features done" in stdout


def test_max_tokens_stops_cleanly_and_a_rerun_continues(tmp_path, base_db):
    db = tmp_path / "b.duckdb"
    db.write_bytes(base_db.read_bytes())
    with LoopbackLLM(slow_script(0.0)) as server:
        first = subprocess.run(label_cmd(db, server.base_url, "--features", "0:20", "--max-tokens", "3000"),
                               env=env(), capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr
        assert "stopped early: --max-tokens 3000 reached" in first.stdout
        partial = count(db, "SELECT count(*) FROM explanations WHERE explainer = 'e'")
        assert 0 < partial < 20
        second = subprocess.run(label_cmd(db, server.base_url, "--features", "0:20"), env=env(),
                                capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stderr
    assert count(db, "SELECT count(*) FROM explanations WHERE explainer = 'e'") == 20


def test_the_api_key_is_never_stored(tmp_path, base_db):
    db = tmp_path / "key.duckdb"
    db.write_bytes(base_db.read_bytes())
    with LoopbackLLM(lambda p, r: Reply(status=401, raw_body=b'{"error": {"message": "bad key ' + KEY.encode() + b'"}}')) as server:
        out = subprocess.run(label_cmd(db, server.base_url, "--features", "0:3"), env=env(), capture_output=True,
                             text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert KEY not in out.stdout + out.stderr
    con = duckdb.connect(str(db), read_only=True)
    errors = [r[0] for r in con.execute("SELECT error FROM llm_calls UNION ALL SELECT error FROM explanations").fetchall()]
    con.close()
    assert errors and all(e is None or KEY not in e for e in errors)
    assert any(e and "HTTP 401" in e for e in errors)
    assert KEY.encode() not in db.read_bytes()
