"""How many requests the live label path sends: a label's contexts as one list of prompts where the endpoint
takes lists, one prompt per request where it refuses them (same predictions and scores); a role whose first
replies are all unusable stopped and recorded, not asked again for every feature."""

from __future__ import annotations

from tests.helpers import copy_db, run_label
from tests.helpers import query as q
from tests.llm_server import LoopbackLLM, Reply
from tests.unit.test_labelling import good_script, judge_reply

FEATURES = list(range(8))
SIMULATED = ("SELECT s.feature, s.seq, s.split, s.kind, s.rank, s.purpose, s.predicted FROM simulations s "
             "JOIN explanations e USING (explanation_id) WHERE s.simulator = 'm-sim' AND e.explainer = 'm-explain' "
             "ORDER BY ALL")
SCORES = ("SELECT s.feature, s.method, s.value FROM scores s JOIN explanations e USING (explanation_id) "
          "WHERE s.simulator = 'm-sim' AND e.explainer = 'm-explain' ORDER BY ALL")


def labelled(db, list_prompts: bool):
    with LoopbackLLM(good_script, list_prompts=list_prompts) as llm:
        progress = run_label(db, llm.base_url, FEATURES, null_samples=4)
        sent = [r for p, r in llm.requests if p.endswith("/completions") and "chat" not in p]
    return progress, sent


def test_list_prompts_and_one_per_request_give_the_same_predictions_and_scores(tmp_path, collected_db):
    lists = copy_db(collected_db, tmp_path / "lists.duckdb")
    single = copy_db(collected_db, tmp_path / "single.duckdb")
    p_lists, sent_lists = labelled(lists, True)
    p_single, sent_single = labelled(single, False)
    assert p_lists.scored == p_single.scored == len(FEATURES)
    # The same prompts, grouped differently: a list per label, or one each after the one refused list.
    assert all(isinstance(r["prompt"], list) for r in sent_lists)
    assert isinstance(sent_single[0]["prompt"], list)
    assert all(isinstance(r["prompt"], str) for r in sent_single[1:])
    assert sorted(p for r in sent_lists for p in r["prompt"]) == sorted(r["prompt"] for r in sent_single[1:])
    rows = q(lists, SIMULATED)
    assert rows and rows == q(single, SIMULATED)
    assert q(lists, SCORES) == q(single, SCORES)
    # One simulator request per scored label (nulls included) with lists; the refusal found once, recorded.
    (runs,) = q(lists, "SELECT count(*) FROM score_runs WHERE simulator = 'm-sim' AND status = 'ok'")[0]
    assert q(lists, "SELECT count(*), count(error) FROM llm_calls WHERE role = 'simulator'") == [(runs, 0)]
    refused = q(single, "SELECT error FROM llm_calls WHERE role = 'simulator' AND status = 'error'")
    assert len(refused) == 1 and "one prompt per request" in refused[0][0] and "HTTP 400" in refused[0][0]
    assert p_lists.notes == []
    assert len(p_single.notes) == 1 and "takes one prompt per completions request" in p_single.notes[0]


def garbage_judge(path: str, request: dict) -> Reply:
    if path.endswith("/chat/completions") and judge_reply(request) is not None:
        return Reply(content="I think the answer is yes, probably.")
    return good_script(path, request)


def test_a_judge_with_no_usable_reply_is_stopped_and_recorded(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "a.duckdb")
    with LoopbackLLM(garbage_judge) as llm:
        progress = run_label(db, llm.base_url, FEATURES, null_samples=4, llm={"concurrency": 1})
        judge_calls = sum(1 for p, r in llm.requests if p.endswith("/chat/completions")
                          and judge_reply(r) is not None)
    # Every label is scored by simulation; the judges are asked until 4 replies came back unusable (each
    # with its one re-ask), then never again: not for the other features, not for the nulls.
    assert progress.scored == len(FEATURES)
    assert judge_calls == 4 * 2
    assert progress.notes == ["judge m-sim: 0 of 4 replies usable; detection and fuzzing skipped for this run"]
    assert not any(k.endswith("role_stopped") for k in progress.failed)
    assert q(db, "SELECT count(*) FROM scores WHERE method IN ('detection', 'fuzzing')") == [(0,)]
    # Recorded in the runs: the first ones (at most 4: each had a reply) with the judges' unusable replies,
    # the rest with the stop.
    errors = [e for (e,) in q(db, "SELECT error FROM score_runs WHERE simulator = 'm-sim' ORDER BY created_at")]
    stopped = [e for e in errors if e and "skipped (role_stopped): judge m-sim: 0 of 4" in e]
    assert len(stopped) >= len(errors) - 4 and len(stopped) >= len(FEATURES)


def judge_requests(llm: LoopbackLLM) -> int:
    return sum(1 for p, r in llm.requests if p.endswith("/chat/completions") and judge_reply(r) is not None)


def test_a_stopped_judge_stays_stopped_on_later_runs_until_retried(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "a.duckdb")
    garbage = [True]

    def script(path: str, request: dict) -> Reply:
        return (garbage_judge if garbage[0] else good_script)(path, request)

    line = "judge m-sim: 0 of 4 replies usable; detection and fuzzing skipped for this run"
    with LoopbackLLM(script) as llm:
        first = run_label(db, llm.base_url, FEATURES[:4], llm={"concurrency": 1})
        asked = judge_requests(llm)
        assert asked == 4 * 2 and first.notes == [line]
        # A later run (more features, as a resume would) on the same database, endpoint and model.
        second = run_label(db, llm.base_url, FEATURES, llm={"concurrency": 1})
        assert judge_requests(llm) == asked
        assert second.scored == len(FEATURES) - 4
        assert len(second.notes) == 1
        assert second.notes[0].startswith(line + " (stopped by an earlier run on this database, ")
        assert second.notes[0].endswith("--retry-stopped-roles asks it again)")
        assert q(db, "SELECT endpoint, model, role, stopped, replies, usable, reason FROM role_stops") == [
            (llm.base_url, "m-sim", "judge", True, 4, 0, line)]
        later = [e for (e,) in q(db, "SELECT r.error FROM score_runs r JOIN explanations e USING (explanation_id) "
                                     "WHERE r.simulator = 'm-sim' AND e.feature >= 4")]
        assert len(later) == 4 and all("stopped by an earlier run" in e for e in later)
        # The flag asks the judge again; one that now answers is kept, and later runs ask it too.
        garbage[0] = False
        retried = run_label(db, llm.base_url, [8], llm={"concurrency": 1, "retry_stopped_roles": True})
        judged = judge_requests(llm) - asked
        assert judged > 0 and retried.notes == []
        assert run_label(db, llm.base_url, [9], llm={"concurrency": 1}).notes == []
        assert judge_requests(llm) > asked + judged
    assert q(db, "SELECT stopped, usable > 0 FROM role_stops ORDER BY created_at") == [(True, False), (False, True)]
    assert q(db, "SELECT count(*) > 0 FROM scores WHERE method IN ('detection', 'fuzzing') AND feature = 9") == [(True,)]


def is_chat_simulation(request: dict) -> bool:
    return '{"activations"' in request["messages"][0]["content"]


def garbage_chat_simulator(path: str, request: dict) -> Reply:
    if path.endswith("/chat/completions") and is_chat_simulation(request):
        return Reply(content="The activations are high.")
    return good_script(path, request)


def test_a_chat_simulator_with_no_usable_reply_is_stopped(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "a.duckdb")
    with LoopbackLLM(garbage_chat_simulator) as llm:
        progress = run_label(db, llm.base_url, FEATURES, llm={"concurrency": 1}, simulator_mode="chat",
                             n_sim_top=2, n_sim_random=2)
        sim_calls = sum(1 for p, r in llm.requests if p.endswith("/chat/completions")
                        and is_chat_simulation(r))
    # The first label's 4 contexts: each asked and re-asked once; then no simulation request at all.
    assert sim_calls == 4 * 2
    assert progress.notes == ["simulator m-sim: 0 of 4 replies usable; simulation (so every score of its labels) "
                              "skipped for this run"]
    assert q(db, "SELECT code, count(*) FROM score_runs WHERE simulator = 'm-sim' GROUP BY code ORDER BY code") == [
        ("role_stopped", len(FEATURES) - 1), ("unusable_reply", 1)]
