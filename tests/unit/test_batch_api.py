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
    from autointerp.label.batch import batch_stage
    from autointerp.label.stage import open_llm

    prices = Path(tempfile.mkstemp(suffix=".json")[1])
    prices.write_text(json.dumps(PRICES))
    llm_cfg = LLMConfig(**{"base_urls": (url,), "explainer_model": "m-explain", "simulator_model": "m-sim",
                           "timeout_s": 5.0, "max_attempts": 2, "max_wait_s": 0.2, "prices": str(prices),
                           "batch_api": True, "batch_poll_s": 0.05, **(llm or {})})
    label_cfg = LabelConfig(**{"n_sim_top": 6, "n_sim_random": 6, "n_boot": 200, "null_samples": 0, "reference": False,
                               **cfg})
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
    live_calls = {r[0]: r for r in q(live, "SELECT role, count(*), count(*), sum(cost_usd), sum(prompt_tokens) "
                                           "FROM llm_calls GROUP BY role")}
    for role, n, n_batch, usd, prompt_tokens, _ in calls:
        assert n == n_batch
        assert usd == pytest.approx(live_calls[role][3] / 2) and prompt_tokens == live_calls[role][4]
        if role != "simulator":
            assert n == live_calls[role][1]
    # Live echo simulation sends a label's contexts as one list (one request per simulation run); a batch
    # file holds one request per context.
    n_runs, n_contexts = q(live, "SELECT count(DISTINCT run_id), count(*) FROM simulations "
                                 "WHERE simulator NOT LIKE 'baseline:%'")[0]
    assert live_calls["simulator"][1] == n_runs and [r[1] for r in calls if r[0] == "simulator"] == [n_contexts]
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


def test_batch_api_scores_the_reference_and_its_gains_like_live(tmp_path, collected_db):
    from tests.unit.test_reference import length_rule, script_with

    live, batch = copy_db(collected_db, tmp_path / "live.duckdb"), copy_db(collected_db, tmp_path / "batch.duckdb")
    with LoopbackLLM(script_with(length_rule)) as server:
        run_label(live, server.base_url, FEATURES[:4], reference=True)
    with LoopbackLLM(script_with(length_rule), batch=BatchScript(polls=1, shuffle=True)) as server:
        run_batch_api(batch, server.base_url, FEATURES[:4], reference=True)
    assert labels(batch) == labels(live)
    assert scores(batch) == scores(live)
    gains = [r for r in scores(batch) if r[3] == "correlation_gain"]
    assert {(r[0], r[1]) for r in gains} == {(f, e) for f in FEATURES[:4] for e in ("m-explain", "null:constant")}
    assert all(r[4] == 0.0 for r in gains if r[1] == "null:constant")


def explain_requests(server: LoopbackLLM) -> list[str]:
    """custom_ids of every explainer request submitted in a batch (from the uploaded input files)."""
    ids = []
    for b in server.batches.values():
        for line in server.files[b["input_file_id"]][1].splitlines():
            cid = json.loads(line)["custom_id"]
            if ":explain:" in cid:
                ids.append(cid)
    return ids


def unit(cid: str) -> str:
    return ":".join(cid.split(":")[1:5])


def test_failed_expired_and_malformed_results_go_to_the_next_batch(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "n.duckdb")
    bs = BatchScript(outcome=lambda n: "expired" if n == 0 else "completed",
                     fail=lambda cid: ":f3:" in cid and cid.endswith(":a1"),
                     malformed=lambda cid: ":f1:" in cid and cid.endswith(":a1"))
    with LoopbackLLM(script, batch=bs) as server:
        run_batch_api(db, server.base_url, FEATURES, judge=False)
        asked = explain_requests(server)
    assert [r[2] for r in labels(db) if r[1] == "m-explain"] == ["ok"] * len(FEATURES)
    # Round 1 expired half its requests (and failed f3, cut f1's line); only those were asked again.
    first = [c for c in asked if c.endswith(":a1")]
    again = sorted(unit(c) for c in asked if c.endswith(":a2"))
    assert len(first) == len(FEATURES) and 0 < len(again) < len(FEATURES)
    assert {f"d1:f{f}:e-:explain" for f in (1, 3)} <= set(again)
    errors = q(db, "SELECT feature, error FROM llm_calls WHERE role = 'explainer' AND status = 'error' ORDER BY feature")
    assert len(errors) == len(again) and all("batch" in e or "malformed" in e or "no result" in e for _, e in errors)
    assert q(db, "SELECT count(*), count(*) FILTER (score_status = 'ok') FROM labels WHERE explainer = 'm-explain'"
             )[0] == (len(FEATURES), len(FEATURES))


def test_requests_failing_every_batch_become_failures_with_codes_never_labels(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "x.duckdb")
    bs = BatchScript(fail=lambda cid: ":f2:" in cid, malformed=lambda cid: ":f4:" in cid and ":explain:" in cid)
    with LoopbackLLM(script, batch=bs) as server:
        run_batch_api(db, server.base_url, FEATURES, judge=False, llm={"batch_attempts": 2})
        assert len(explain_requests(server)) == len(FEATURES) + 2  # f2 and f4 asked twice, then given up
    rows = {r[0]: r for r in labels(db) if r[1] == "m-explain"}
    assert rows[2][2:] == ("failed", None, "http_error")
    assert rows[4][2:] == ("failed", None, "malformed_response")
    assert all(rows[f][2] == "ok" for f in FEATURES if f not in (2, 4))
    assert "after 2 batch attempt(s)" in q(db, "SELECT error FROM explanations WHERE feature = 2 "
                                               "AND explainer = 'm-explain'")[0][0]


def test_live_retry_mode_redoes_failed_batch_requests_live(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "l.duckdb")
    bs = BatchScript(fail=lambda cid: ":f3:" in cid and ":explain:" in cid)
    with LoopbackLLM(script, batch=bs) as server:
        run_batch_api(db, server.base_url, FEATURES, judge=False, llm={"batch_retry": "live"})
        live = [r for p, r in server.requests if p.endswith("/chat/completions")]
        assert len(server.batches) == 2
    assert len(live) == 1 and live[0]["model"] == "m-explain"
    assert all(r[2] == "ok" for r in labels(db) if r[1] == "m-explain")
    assert q(db, "SELECT count(*), count(batch_id) FROM llm_calls WHERE feature = 3 AND role = 'explainer'")[0] == (2, 1)


def test_an_unusable_reply_is_reasked_live_and_a_bad_one_fails_with_its_reason(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "u.duckdb")

    def bad_labels(path: str, request: dict) -> Reply:
        if path.endswith("/chat/completions") and '"answers"' not in request["messages"][0]["content"]:
            user = request["messages"][1]["content"]
            if len(request["messages"]) > 2:  # a live re-ask
                return Reply(content=LABEL)
            return Reply(content="the <<tokens>> in" if user.count("\n") % 2 else "   ")
        return script(path, request)

    with LoopbackLLM(bad_labels) as server:
        run_batch_api(db, server.base_url, FEATURES, judge=False)
        reasks = [r for p, r in server.requests if p.endswith("/chat/completions")]
    assert reasks and all(len(r["messages"]) == 4 for r in reasks)
    assert [r[2:4] for r in labels(db) if r[1] == "m-explain"] == [("ok", LABEL)] * len(FEATURES)


def label_cmd(db: Path, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "autointerp", "label", "--db", str(db), "--base-url", url, "--explainer-model", "e",
            "--simulator-model", "s", "--sim-top", "4", "--sim-random", "4", "--n-boot", "50", "--null-samples", "0",
            "--features", "0:10", "--batch-api", "--batch-poll", "0.05", "--timeout", "5", *extra]


def cli_env() -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": KEY}


def submitted(server: LoopbackLLM) -> list[str]:
    """Every request unit (custom_id without attempt) in every batch the server ran."""
    out = []
    for b in server.batches.values():
        for line in server.files[b["input_file_id"]][1].splitlines():
            out.append(json.loads(line)["custom_id"])
    return out


@pytest.mark.parametrize("moment", ["upload", "create", "polling", "content"])
def test_kill_9_at_any_moment_then_the_same_command_resumes_without_submitting_twice(tmp_path, collected_db, moment):
    db = copy_db(collected_db, tmp_path / f"{moment}.duckdb")
    bs = BatchScript(polls=10_000 if moment == "polling" else 1, hold=set() if moment == "polling" else {moment},
                     fail=lambda cid: ":f6:" in cid and cid.endswith(":a1"))
    with LoopbackLLM(script, batch=bs) as server:
        proc = subprocess.Popen(label_cmd(db, server.base_url), env=cli_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not (server.reached[moment].is_set() if moment != "polling" else
                   sum("/batches/batch_" in p for p, _ in server.requests) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        bs.hold, bs.polls = set(), 1
        if moment != "polling":
            server.release(moment)
        if moment in ("upload", "create"):  # the killed run never heard the file id / the batch id
            assert q(db, "SELECT status FROM batches") == [("preparing" if moment == "upload" else "uploaded",)]
        done = subprocess.run(label_cmd(db, server.base_url), env=cli_env(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        ids = submitted(server)
        n_files = sum(1 for name, _ in server.files.values() if name.startswith("autointerp-"))
    # Nothing submitted twice: one file and one batch per recorded batch; each request once per attempt.
    assert len(server.batches) == n_files == q(db, "SELECT count(*) FROM batches")[0][0]
    assert len(ids) == len(set(ids))
    assert len({unit(c) for c in ids if ":explain:" in c}) == 10
    assert sorted(unit(c) for c in ids if ":explain:" in c and c.endswith(":a2")) == ["d1:f6:e-:explain"]
    # Every feature labelled (or failed with a reason) and scored; nothing stored twice.
    rows = q(db, "SELECT feature, status, code, score_status FROM labels WHERE explainer = 'e' ORDER BY feature")
    assert [r[0] for r in rows] == list(range(10))
    assert all((r[1] == "ok" and r[3] == "ok") or r[2] is not None for r in rows)
    assert q(db, "SELECT count(*) FROM (SELECT feature FROM explanations GROUP BY feature, explainer "
                 "HAVING count(*) > 1)")[0][0] == 0
    assert q(db, "SELECT count(*) FROM batches WHERE ingested_at IS NULL")[0][0] == 0


def scripted_runner(requests: Path, results: Path, order: int = -1) -> int:
    """A stand-in for `vllm run-batch`: answers each request line with the loopback script, writes the
    OpenAI batch output format (in reversed order, as runners need not keep it)."""
    from tests.llm_server import _body

    out = []
    for i, raw in enumerate(requests.read_bytes().splitlines()):
        line = json.loads(raw)
        reply = script(line["url"], line["body"])
        out.append({"id": f"r{i}", "custom_id": line["custom_id"], "error": None,
                    "response": {"status_code": 200, "request_id": f"q{i}",
                                 "body": _body(line["url"], line["body"], reply)}})
    results.write_text("".join(json.dumps(o) + "\n" for o in out[::order]))
    return len(out)


def cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "autointerp", *args, "--db", str(db)], capture_output=True,
                          text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"})
    assert done.returncode == 0, done.stderr
    return done


def test_export_then_a_runner_then_import_gives_the_live_rows(tmp_path, collected_db):
    live, offline = copy_db(collected_db, tmp_path / "live.duckdb"), copy_db(collected_db, tmp_path / "off.duckdb")
    with LoopbackLLM(script) as server:
        run_label(live, server.base_url, FEATURES)
    opts = ["--explainer-model", "m-explain", "--simulator-model", "m-sim", "--sim-top", "6", "--sim-random", "6",
            "--n-boot", "200", "--null-samples", "0", "--features", "0:10"]
    for stage in ("explain", "score"):
        requests, results = tmp_path / f"{stage}.jsonl", tmp_path / f"{stage}-out.jsonl"
        out = cli(offline, "batch", "export", "--stage", stage, "--out", str(requests), *opts)
        n = scripted_runner(requests, results)
        assert f"{n:,} {stage} requests" in out.stdout and n > 0
        cli(offline, "batch", "import", str(results))
        again = cli(offline, "batch", "import", str(results))
        assert "already imported" in again.stdout
    assert labels(offline) == labels(live)
    assert scores(offline) == scores(live)
    # Every result is a call marked with its batch; the same calls as live but for simulation, which a batch
    # file sends one context per request and the live path one label's contexts per request (a list).
    by_role = "SELECT role, count(*), count(batch_id) FROM llm_calls GROUP BY role ORDER BY role"
    n_contexts = q(live, "SELECT count(*) FROM simulations WHERE simulator NOT LIKE 'baseline:%'")[0][0]
    assert q(offline, by_role) == [(role, n_contexts if role == "simulator" else n, n_contexts if role == "simulator"
                                    else n) for role, n, _ in q(live, by_role)]
    listing = cli(offline, "batches", "--format", "csv").stdout
    assert listing.count("imported") == 2 and "mixed" in listing
    # Nothing is left to export.
    cli(offline, "batch", "export", "--stage", "score", "--out", str(tmp_path / "none.jsonl"), *opts)
    assert (tmp_path / "none.jsonl").read_bytes() == b""


def test_import_of_partial_results_leaves_the_rest_pending(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "p.duckdb")
    opts = ["--explainer-model", "m-explain", "--features", "0:10", "--no-baseline"]
    requests, results = tmp_path / "r.jsonl", tmp_path / "o.jsonl"
    cli(db, "batch", "export", "--stage", "explain", "--out", str(requests), *opts)
    scripted_runner(requests, results)
    lines = results.read_text().splitlines()
    results.write_text("\n".join([*lines[:6], lines[6][:40], '{"custom_id": 7}']) + "\n")
    out = cli(db, "batch", "import", str(results))
    assert "2 unreadable" in out.stdout
    assert len([r for r in labels(db) if r[1] == "m-explain"]) == 6
    cli(db, "batch", "export", "--stage", "explain", "--out", str(requests), *opts)
    assert len(requests.read_text().splitlines()) == 4


def test_batches_lists_and_cancel_stops_a_batch_whose_rest_goes_to_the_next(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "c.duckdb")
    bs = BatchScript(polls=10_000)
    with LoopbackLLM(script, batch=bs) as server:
        proc = subprocess.Popen(label_cmd(db, server.base_url, "--no-judge"), env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not any("/batches/batch_0" in p for p, _ in server.requests):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        cancel = subprocess.run([sys.executable, "-m", "autointerp", "batches", "--db", str(db), "--cancel", "batch_0",
                                 "--base-url", server.base_url], env=cli_env(), capture_output=True, text=True,
                                timeout=120)
        assert cancel.returncode == 0, cancel.stderr
        bs.polls = 1
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    listing = cli(db, "batches", "--format", "csv").stdout.splitlines()
    assert listing[0].startswith("batch,provider_id,dictionary,stage,url,status,requests,completed,failed,cost_usd")
    assert ",batch_0,1,explain,/v1/chat/completions,cancelled,10,5,0," in listing[1]
    assert [r[2] for r in labels(db) if r[1] == "e"] == ["ok"] * 10


def test_a_cancel_answer_arriving_after_the_batch_finished_does_not_undo_its_final_status(tmp_path, collected_db):
    """The race behind a flaky cancel test: the cancel call answers 'in_progress' (the provider has not moved
    the batch yet), the running label stage then polls it to 'cancelled' and ingests it, and only then does
    the cancel command write its (older) answer."""
    from autointerp import store

    db = copy_db(collected_db, tmp_path / "race.duckdb")
    rows = [store.BatchRow(batch_key=k, group_key="g", provider="p", url="/v1/chat/completions", stage="explain",
                           dictionary_id=1, status="in_progress", n_requests=1, units="[]", config="{}",
                           batch_id=f"batch_{k}") for k in ("done", "running")]
    with store.open_store(db) as con:
        store.add_batches(con, rows)
        store.update_batch(con, "done", status="cancelled")  # the label stage's poll won the race
        store.record_cancel(con, "done", "in_progress")
        store.record_cancel(con, "running", "cancelling")
    assert q(db, "SELECT batch_key, status FROM batches ORDER BY 1") == [("done", "cancelled"),
                                                                       ("running", "cancelling")]


def test_cached_prompt_tokens_are_stored_for_live_and_batch_calls(tmp_path, collected_db):
    live, batch = copy_db(collected_db, tmp_path / "live.duckdb"), copy_db(collected_db, tmp_path / "batch.duckdb")
    with LoopbackLLM(script, prefix_cache=16) as server:
        run_label(live, server.base_url, FEATURES)
    with LoopbackLLM(script, prefix_cache=16) as server:
        run_batch_api(batch, server.base_url, FEATURES)
    for db in (live, batch):
        rows = q(db, "SELECT role, sum(cached_tokens), sum(prompt_tokens), count(*), count(*) FILTER "
                     "(cached_tokens > 0) FROM llm_calls GROUP BY role ORDER BY role")
        assert [r[0] for r in rows] == ["explainer", "judge", "simulator"]
        # The shared part of each prompt (instructions; for simulations also the label) comes first, so
        # every request after a role's first finds its prefix cached.
        for _, cached, prompt, n, hits in rows:
            assert 0 < cached < prompt and hits >= n - 1
    sim = q(batch, "SELECT sum(cached_tokens) / sum(prompt_tokens) FROM llm_calls WHERE role = 'simulator'")[0][0]
    assert sim > 0.3


def estimate(line: dict) -> float:
    """The documented pre-submission estimate, computed here on its own: the prompt at one token per 3
    bytes (+4 per chat message), the completion at max_tokens, at batch prices (half the test table)."""
    body = line["body"]
    if "messages" in body:
        n = -(-len("".join(m["content"] for m in body["messages"]).encode()) // 3) + 4 * len(body["messages"])
    else:
        n = -(-len(body["prompt"].encode()) // 3)
    p_in, p_out = PRICES[body["model"]]
    return (n * p_in + body["max_tokens"] * p_out) / 2e6


def uploaded(server: LoopbackLLM) -> list[dict]:
    """Every request line of every batch the server was asked to run, in submission order."""
    return [json.loads(line) for b in server.batches.values()
            for line in server.files[b["input_file_id"]][1].splitlines()]


def test_max_cost_submits_only_the_batches_that_fit_and_a_rerun_sends_the_rest(tmp_path, collected_db):
    full, db = copy_db(collected_db, tmp_path / "full.duckdb"), copy_db(collected_db, tmp_path / "b.duckdb")
    with LoopbackLLM(script) as server:
        run_batch_api(full, server.base_url, FEATURES, judge=False)
        explain_est = [estimate(x) for x in uploaded(server) if ":explain:" in x["custom_id"]]
    budget = sum(explain_est[:4]) + explain_est[4] / 2
    with LoopbackLLM(script) as server:
        progress = run_batch_api(db, server.base_url, FEATURES, judge=False, llm={"max_cost_usd": budget})
        sent = uploaded(server)
    # Four explain requests fit; the rest stay pending and the score stage does not start.
    assert [unit(x["custom_id"]) for x in sent] == [f"d1:f{f}:e-:explain" for f in FEATURES[:4]]
    assert progress.stopped is not None and "6 explain unit(s) not submitted" in progress.stopped
    assert sum(estimate(x) for x in sent) <= budget
    real = q(db, "SELECT sum(cost_usd) FROM llm_calls")[0][0]
    assert 0 < real <= budget and progress.cost_usd == pytest.approx(real)
    assert [r[0] for r in labels(db) if r[1] == "m-explain"] == FEATURES[:4]
    assert q(db, "SELECT count(*) FROM score_runs WHERE simulator = 'm-sim'")[0][0] == 0
    # The same command without a budget sends only what was left, and ends where an unbounded run does.
    with LoopbackLLM(script) as server:
        run_batch_api(db, server.base_url, FEATURES, judge=False)
        again = uploaded(server)
    assert sorted(unit(x["custom_id"]) for x in again if ":explain:" in x["custom_id"]) == sorted(
        f"d1:f{f}:e-:explain" for f in FEATURES[4:])
    assert labels(db) == labels(full) and scores(db) == scores(full)


def test_the_real_cost_of_ingested_results_counts_against_the_budget(tmp_path, collected_db):
    full, db = copy_db(collected_db, tmp_path / "full.duckdb"), copy_db(collected_db, tmp_path / "r.duckdb")
    with LoopbackLLM(script) as server:
        run_batch_api(full, server.base_url, FEATURES, judge=False)
        lines = uploaded(server)
    explain_est = sum(estimate(x) for x in lines if ":explain:" in x["custom_id"])
    per_feature: dict[int, float] = {}
    for x in lines:
        if ":explain:" not in x["custom_id"]:
            f = int(x["custom_id"].split(":")[2][1:])
            per_feature[f] = per_feature.get(f, 0.0) + estimate(x)
    score_est = [per_feature[f] for f in sorted(per_feature)]
    explain_real = q(full, "SELECT sum(cost_usd) FROM llm_calls WHERE role = 'explainer'")[0][0]
    assert explain_real < explain_est  # the estimate errs high
    # Enough for every explain request's estimate; what the score round may spend is what is left after
    # the explanations' real cost, not after their estimate.
    budget = explain_est + sum(score_est) / 3
    k = max(j for j in range(len(score_est) + 1) if explain_real + sum(score_est[:j]) <= budget)
    assert 0 < k < len(score_est)
    with LoopbackLLM(script) as server:
        progress = run_batch_api(db, server.base_url, FEATURES, judge=False, llm={"max_cost_usd": budget})
        sent = uploaded(server)
    scored = sorted({int(x["custom_id"].split(":")[2][1:]) for x in sent if ":explain:" not in x["custom_id"]})
    assert scored == sorted(per_feature)[:k]
    assert progress.stopped is not None and f"{len(score_est) - k} score unit(s) not submitted" in progress.stopped
    assert q(db, "SELECT sum(cost_usd) FROM llm_calls")[0][0] <= budget


def test_run_and_control_label_through_batches_then_score_behaviour(tmp_path, tiny_model_dir, corpus_file):
    from tests.helpers import HOOK

    db = tmp_path / "run.duckdb"
    collect = ["--model", str(tiny_model_dir), "--dataset", str(corpus_file), "--hook", HOOK, "--tokens", "1600",
               "--ctx-len", "16", "--top-k", "6", "--quantiles", "2", "--per-quantile", "2", "--random", "6"]
    llm_opts = ["--label-features", "0:4", "--explainer-model", "e", "--simulator-model", "s", "--sim-top", "4",
                "--sim-random", "4", "--n-boot", "50", "--null-samples", "0", "--no-reference", "--no-judge", "--batch-api",
                "--batch-poll", "0.05", "--timeout", "5"]
    with LoopbackLLM(script) as server:
        run = subprocess.run([sys.executable, "-m", "autointerp", "run", "--db", str(db), *collect, *llm_opts,
                              "--base-url", server.base_url], env=cli_env(), capture_output=True, text=True,
                             timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        control = subprocess.run([sys.executable, "-m", "autointerp", "control", "--like", "1", "--db", str(db),
                                  *llm_opts, "--base-url", server.base_url], env=cli_env(), capture_output=True,
                                 text=True, timeout=600)
        assert control.returncode == 0, control.stderr[-3000:]
        live = [p for p, _ in server.requests if p.endswith("completions")]
        stages = sorted((b["metadata"]["autointerp_batch"], b["endpoint"]) for b in server.batches.values())
    assert live == []  # every LLM request of both commands went through a batch
    assert len(stages) == 4  # per dictionary: explain (chat), then simulate (completions)
    assert "behaviour scored for 4 features" in run.stdout and "control dictionary 2" in control.stdout
    for did in (1, 2):
        assert q(db, "SELECT count(*) FROM explanations WHERE dictionary_id = ? AND explainer = 'e' "
                     "AND status = 'ok'", [did])[0][0] == 4
        calls = q(db, "SELECT count(*), count(batch_id) FROM llm_calls WHERE dictionary_id = ?", [did])[0]
        assert calls[0] == calls[1] > 0
        # Behaviour scores follow the batch-scored simulation runs of the LLM labels.
        assert q(db, "SELECT count(*) FROM score_runs r JOIN score_runs s ON r.source_run_id = s.run_id "
                     "WHERE r.dictionary_id = ? AND r.stage = 'behaviour' AND s.simulator = 's'", [did])[0][0] == 4
    assert q(db, "SELECT count(*) FROM batches WHERE ingested_at IS NULL")[0][0] == 0


def test_run_with_batch_api_and_no_endpoint_stops_before_collecting(tmp_path):
    db = tmp_path / "none.duckdb"
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    done = subprocess.run([sys.executable, "-m", "autointerp", "run", "--db", str(db), "--tokens", "1600",
                           "--batch-api"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "--batch-api needs an endpoint with a Batch API" in done.stderr
    assert not db.exists() or q(db, "SELECT count(*) FROM dictionaries")[0][0] == 0
