"""The labelling agent on a real planted dictionary through real HTTP (tests/llm_server.py): a scripted
explainer that starts from a too-broad rule and narrows it only from what the probe results show; the
agent recovers the true rule and one-shot does not, and not when the probe activations are withheld or
wrong. Plus resume after a budget stop (nothing asked twice), no holdout text in any explainer prompt,
and --batch-api refused."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from autointerp import store
from autointerp.cli import main
from autointerp.collect import planted
from autointerp.collect.planted_stage import planted_stage
from autointerp.config import CollectConfig, LabelConfig
from autointerp.label import probes
from autointerp.label.units import scoring_contexts
from tests.helpers import copy_db, query, run_label
from tests.llm_server import LoopbackLLM, Reply, echo_logprobs, placeholder_row
from tests.unit.test_labelling import judge_reply
from tests.unit.test_planted import _echo_target, _key, _unescape, prior

BROAD = "the word 'the'"
TRUE = "the word 'the' right after 'to'"
RULES = [
    {"name": "the", "description": BROAD, "kind": "token", "params": {"words": ["the"]}},
    {"name": "the-after-to", "description": TRUE, "kind": "bigram", "params": {"words": ["the"], "after": ["to"]}},
    {"name": "comma", "description": "commas", "kind": "token", "params": {"words": [","]}},
]
FEATURE = 1  # the-after-to
PROBES = "+ We ran to the park.\n+ Rivers flow to the sea.\n- The cat sat on the mat.\n- Snow fell above the clouds."
AGENT = dict(strategy="agent", k=2, agent_rounds=1, agent_probes=4, n_sim_fewshot=0, judge=False, baseline=False)


@pytest.fixture(scope="module")
def planted_db(tmp_path_factory, tiny_model_dir, corpus_file) -> Path:
    return make_planted_db(tmp_path_factory.mktemp("agent"), tiny_model_dir, corpus_file)


def make_planted_db(tmp: Path, tiny_model_dir: Path, corpus_file: Path) -> Path:
    """The planted dictionary of RULES, collected from the test corpus with the tiny model's tokenizer."""
    rules = tmp / "rules.json"
    rules.write_text(json.dumps(RULES))
    db = tmp / "planted.duckdb"
    planted_stage(db, CollectConfig(model=str(tiny_model_dir), dataset=str(corpus_file), n_tokens=4000, ctx_len=32,
                                    top_k=8, n_quantiles=2, per_quantile=2, n_random=8), rules, builtin=False)
    return db


def _marked_words(block: str) -> list[tuple[str, bool]]:
    """The words of a probe as shown, each with whether it sits inside a <<marked>> run."""
    words, marked = [], False
    for part in re.split(r"(<<|>>)", block):
        if part in ("<<", ">>"):
            marked = part == "<<"
            continue
        words += [(w.lower(), marked) for w in re.findall(r"\w+", _unescape(part))]
    return words


def narrowed(revise_prompt: str) -> bool:
    """What the scripted explainer learns from the probe results: 'the' fires only right after 'to', and
    some 'the' elsewhere stays quiet (the broad label's false alarms)."""
    fired, quiet = [], []
    for block in re.findall(r"<probe \d+>(.*?)</probe>", revise_prompt):
        words = _marked_words(block)
        for i, (w, m) in enumerate(words):
            if w == "the":
                (fired if m else quiet).append(words[i - 1][0] if i else "")
    return bool(fired) and all(p == "to" for p in fired) and any(p != "to" for p in quiet)


def script(path: str, request: dict) -> Reply:
    """Explainer: the broad rule, a fixed set of probes, and a revision read off the probe results.
    Simulator: applies the rule the label names (an oracle), else a prior."""
    usage = {"prompt_tokens": 10, "completion_tokens": 2}
    if path.endswith("/chat/completions"):
        judged = judge_reply(request)
        if judged is not None:
            return judged
        user = request["messages"][-1]["content"]
        if "Test it on new text" in user:
            return Reply(content=PROBES, **usage)
        if "what the feature really did" in user:
            return Reply(content=TRUE if narrowed(user) else BROAD, **usage)
        return Reply(content=BROAD, **usage)
    label, tokens = _echo_target(request["prompt"])
    rule = {_key(r["description"]): r for r in RULES}.get(_key(label))
    return echo_reply(request["prompt"], planted.apply_to_strings(rule, tokens) if rule is not None else prior(tokens),
                      **usage)


def echo_reply(prompt: str, predicted: list[float], **usage: int) -> Reply:
    """An echo simulation reply predicting `predicted` (0..1, as a share of 9) at the prompt's placeholders."""
    values = iter(predicted)

    def top(i: int, tok: str, toks: list[str]) -> dict[str, float]:
        if placeholder_row(i, tok, toks) is None:
            return {"x": -1.0}
        p = min(max(next(values), 0.0), 1.0)
        return {"9": math.log(p), "0": math.log(1 - p)} if 0 < p < 1 else {"9" if p else "0": 0.0}

    return Reply(content="", logprobs=echo_logprobs(prompt, top), **usage)


def _label(db: Path, strategy: str) -> str | None:
    rows = query(db, "SELECT label, prompt_hash FROM explanations WHERE feature = ? AND explainer = 'm-explain' "
                     "AND status = 'ok'", [FEATURE])
    assert len(rows) == 1, rows
    return rows[0][0]


def _run(db: Path, url: str, score: bool = False, **cfg) -> object:
    return run_label(db, url, [FEATURE], score=score, **{**AGENT, **cfg})


def test_the_agent_recovers_the_rule_from_probe_results_and_one_shot_does_not(tmp_path, planted_db):
    agent_db, one_db = copy_db(planted_db, tmp_path / "a.duckdb"), copy_db(planted_db, tmp_path / "o.duckdb")
    with LoopbackLLM(script) as llm:
        _run(agent_db, llm.base_url)
        _run(one_db, llm.base_url, strategy="one-shot")
    assert _key(_label(agent_db, "agent") or "") == _key(TRUE)
    assert _key(_label(one_db, "one-shot") or "") == _key(BROAD)
    with store.open_store(agent_db, read_only=True) as con:
        steps = store.agent_steps(con, 1, FEATURE)
    assert [s.kind for s in steps] == ["candidate", "candidate", "probe", "revision", "choice"]
    cands, probe, revision, choice = steps[:2], steps[2], steps[3], steps[4]
    # The probes' activations are the rule's real ones, and the true rule wins on the calibration contexts.
    tokens = probe.activations[0]["tokens"]
    assert probe.activations[0]["acts"] == planted.apply_to_strings(RULES[FEATURE], tokens)
    assert any(a > 0 for a in probe.activations[0]["acts"]) and not any(probe.activations[2]["acts"])
    assert revision.calibration_score > max(c.calibration_score for c in cands)
    assert choice.text == revision.text and choice.explanation_id is not None
    assert all(s.prompt_tokens > 0 for s in steps[:4])
    shown = CliRunner().invoke(main, ["show", str(FEATURE), "--no-color", "--db", str(agent_db)])
    assert shown.exit_code == 0, shown.output
    out = shown.output[shown.output.index("agent steps"):]
    assert [k for k in ("candidate", "probe", "revision", "choice") if k in out] == ["candidate", "probe", "revision",
                                                                                     "choice"]
    assert "hit" in out and TRUE.rstrip("'") in out, out
    # The browser's feature page shows the same steps, the probes' tokens shaded by their real activations.
    from starlette.testclient import TestClient

    from autointerp.analysis.serve.app import create_app

    page = TestClient(create_app(agent_db)).get(f"/feature/1/{FEATURE}")
    assert page.status_code == 200
    section = page.text[page.text.index('id="agent-steps"'):]
    assert [k for k in ("candidate", "probe", "revision", "choice") if k in section] == [
        "candidate", "probe", "revision", "choice"]
    assert "hit" in section and section.count('class="ctx probe"') == len(probe.activations)


@pytest.mark.parametrize("sabotage", ["withheld", "wrong"])
def test_without_the_real_probe_activations_the_agent_does_not_recover(tmp_path, planted_db, monkeypatch, sabotage):
    real_run = probes.Subject.run

    def broken(self, ps):
        out = real_run(self, ps)
        # withheld: nothing fires; wrong: every token fires as hard as the feature ever does.
        return [{**r, "acts": [0.0 if sabotage == "withheld" else 1.0] * len(r["acts"])} for r in out]

    monkeypatch.setattr(probes.Subject, "run", broken)
    db = copy_db(planted_db, tmp_path / "s.duckdb")
    with LoopbackLLM(script) as llm:
        _run(db, llm.base_url)
    assert _key(_label(db, "agent") or "") == _key(BROAD)


def _chat(requests: list) -> int:
    return sum(p.endswith("/chat/completions") for p, _ in requests)


def test_a_budget_stop_resumes_from_the_stored_steps_asking_nothing_twice(tmp_path, planted_db):
    whole, cut = copy_db(planted_db, tmp_path / "w.duckdb"), copy_db(planted_db, tmp_path / "c.duckdb")
    with LoopbackLLM(script) as llm:
        _run(whole, llm.base_url)
        n_whole = len(llm.requests)
    with LoopbackLLM(script) as llm:
        # 84 tokens: the first candidate (an explain request and 6 simulations, 12 tokens each) ends on it.
        stopped = _run(cut, llm.base_url, llm={"max_tokens": 84})
        n_first = len(llm.requests)
        kinds_first = [r[0] for r in query(cut, "SELECT kind FROM agent_steps ORDER BY step")]
        _run(cut, llm.base_url)
        n_total = len(llm.requests)
    assert stopped.stopped and 0 < n_first < n_whole and kinds_first == ["candidate"]
    assert n_total == n_whole, (n_first, n_total, n_whole)
    assert query(cut, "SELECT count(*) FROM llm_calls")[0][0] == query(whole, "SELECT count(*) FROM llm_calls")[0][0]
    assert _key(_label(cut, "agent") or "") == _key(TRUE)


def test_a_budget_stop_inside_a_step_keeps_its_label_and_finishes_it_on_resume(tmp_path, planted_db):
    whole, cut = copy_db(planted_db, tmp_path / "w.duckdb"), copy_db(planted_db, tmp_path / "c.duckdb")
    with LoopbackLLM(script) as llm:
        _run(whole, llm.base_url)
        whole_chat = _chat(llm.requests)
    with LoopbackLLM(script) as llm:
        # 30 tokens: the first candidate's label and some of its 6 simulations, then the budget stops it.
        stopped = _run(cut, llm.base_url, llm={"max_tokens": 30})
        first = query(cut, "SELECT kind, status, code, text FROM agent_steps ORDER BY step")
        n_first_calls, n_first = query(cut, "SELECT count(*) FROM llm_calls")[0][0], len(llm.requests)
        _run(cut, llm.base_url)
        chat = _chat(llm.requests)
    assert stopped.stopped and [r[:3] for r in first] == [("candidate", "failed", "budget_stopped")]
    assert _key(first[0][3]) == _key(BROAD)
    assert 1 < n_first_calls == n_first  # the label and the simulations it got are stored with the stopped step
    assert chat == whole_chat  # the explainer is not asked again for the stopped step's label
    steps = query(cut, "SELECT kind, status, calibration_score IS NOT NULL FROM agent_steps ORDER BY step")
    assert steps[0] == ("candidate", "ok", True) and _key(_label(cut, "agent") or "") == _key(TRUE)


def _mark_holdout(db: Path) -> None:
    """Tag one token of each holdout context of the feature with its purpose (ZZCAL / ZZSCORE)."""
    with store.open_store(db, read_only=True) as con:
        fc = store.read_feature_contexts(con, 1, [FEATURE])[FEATURE]
    purposes: dict[int, set[str]] = {}
    for c, purpose in scoring_contexts(fc, LabelConfig(n_sim_top=6, n_sim_random=6)):  # type: ignore[call-arg]
        purposes.setdefault(c.seq, set()).add(purpose)
    con = duckdb.connect(str(db))
    try:
        for seq, ps in purposes.items():
            tag = "ZZSCORE" if ps == {"scoring"} else "ZZCAL" if ps == {"calibration"} else None
            if tag:
                con.execute("UPDATE sequences SET tokens = list_concat([tokens[1] || ?], tokens[2:]) WHERE seq = ?",
                            [tag, seq])
        # Every other holdout sequence too (ZZHOLD at its first token and at every 'the'), so a hard negative
        # drawn from the holdout split would show its tag wherever its window falls.
        con.execute("UPDATE sequences SET tokens = list_transform(tokens, lambda t: CASE WHEN trim(lower(t)) = 'the' "
                    "THEN t || 'ZZHOLD' ELSE t END) WHERE split = 'holdout'")
        con.execute("UPDATE sequences SET tokens = list_concat([tokens[1] || 'ZZHOLD'], tokens[2:]) "
                    "WHERE split = 'holdout' AND NOT contains(tokens[1], 'ZZ')")
    finally:
        con.close()


def test_no_holdout_text_reaches_the_explainer_and_scoring_contexts_stay_untouched(tmp_path, planted_db):
    db = copy_db(planted_db, tmp_path / "l.duckdb")
    _mark_holdout(db)
    with LoopbackLLM(script) as llm:
        _run(db, llm.base_url)
        explain_requests = [json.dumps(r) for p, r in llm.requests if p.endswith("/chat/completions")]
        sim_requests = [json.dumps(r) for p, r in llm.requests if not p.endswith("/chat/completions")]
        _run(db, llm.base_url, score=True)  # then the chosen label is scored, on the scoring contexts
        scored = [json.dumps(r) for p, r in llm.requests if not p.endswith("/chat/completions")]
    stored = [r[0] for r in query(db, "SELECT prompt FROM agent_steps WHERE prompt IS NOT NULL")]
    assert stored and explain_requests
    for text in stored + explain_requests:
        assert "ZZCAL" not in text and "ZZSCORE" not in text and "ZZHOLD" not in text
    # The hard negatives (explain-split contexts where the neighbour 'the' fires) reach the candidates.
    assert query(db, "SELECT count(*) FROM hard_negatives WHERE feature = ?", [FEATURE])[0][0] > 0
    assert any("Contexts where features similar to this one fire" in t for t in explain_requests)
    assert any("ZZCAL" in t for t in sim_requests) and not any("ZZSCORE" in t for t in sim_requests)
    assert any("ZZSCORE" in t for t in scored)  # the tags are visible where they belong


def test_batch_api_with_the_agent_is_refused_in_one_line(tmp_path, planted_db):
    db = copy_db(planted_db, tmp_path / "b.duckdb")
    r = CliRunner().invoke(main, ["label", "--strategy", "agent", "--batch-api", "--base-url", "http://127.0.0.1:9/v1",
                                  "--db", str(db)])
    assert r.exit_code == 2 and "--strategy agent runs live only" in r.output, r.output
    assert query(db, "SELECT count(*) FROM explanations")[0][0] == 0


def test_an_explainer_without_usable_probes_is_a_failed_step_and_the_best_label_stays(tmp_path, planted_db):
    def no_probes(path: str, request: dict) -> Reply:
        if path.endswith("/chat/completions") and "Test it on new text" in request["messages"][-1]["content"]:
            return Reply(content="I would rather not write any texts.")
        return script(path, request)

    db = copy_db(planted_db, tmp_path / "n.duckdb")
    with LoopbackLLM(no_probes) as llm:
        _run(db, llm.base_url, agent_rounds=2)
    rows = query(db, "SELECT kind, status, code FROM agent_steps ORDER BY step")
    assert rows == [("candidate", "ok", None), ("candidate", "ok", None), ("probe", "failed", "no_probes"),
                    ("choice", "ok", None)]
    assert _key(_label(db, "agent") or "") == _key(BROAD)


def _label_cmd(db: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "autointerp", "label", "--db", str(db), "--base-url", url, "--explainer-model",
            "m-explain", "--simulator-model", "m-sim", "--features", f"{FEATURE}:{FEATURE + 1}", "--strategy", "agent",
            "--k", "2", "--agent-rounds", "1", "--agent-probes", "4", "--sim-fewshot", "0", "--no-judge",
            "--no-baseline", "--sim-top", "6", "--sim-random", "6", "--null-samples", "0", "--no-reference",
            "--n-boot", "200", "--timeout", "60"]


def test_kill_9_between_steps_resumes_from_the_stored_steps(tmp_path, planted_db):
    whole, killed = copy_db(planted_db, tmp_path / "w.duckdb"), copy_db(planted_db, tmp_path / "k.duckdb")
    env = {**os.environ, "OPENAI_API_KEY": "sk-test", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with LoopbackLLM(script) as llm:
        assert subprocess.run(_label_cmd(whole, llm.base_url), env=env, capture_output=True).returncode == 0
        n_whole = len(llm.requests)
    hang = {"on": True}

    def hanging(path: str, request: dict) -> Reply:
        if hang["on"] and path.endswith("/chat/completions") and "Test it on new text" in str(request["messages"]):
            return Reply(content=PROBES, delay_s=20)  # the probe request is in flight when the process dies
        return script(path, request)

    with LoopbackLLM(hanging) as llm:
        proc = subprocess.Popen(_label_cmd(killed, llm.base_url), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not any("Test it on new text" in str(r.get("messages")) for _, r in list(llm.requests)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n_first = len(llm.requests)
        assert [r[0] for r in query(killed, "SELECT kind FROM agent_steps ORDER BY step")] == ["candidate", "candidate"]
        hang["on"] = False
        done = subprocess.run(_label_cmd(killed, llm.base_url), env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        # Only the request that was in flight when the process died is asked again.
        assert len(llm.requests) == n_whole + 1, (n_first, len(llm.requests), n_whole)
    assert _key(_label(killed, "agent") or "") == _key(TRUE)
