"""The label stage dealt out to client processes (--processes): the same rows as one process, a child's failure
stops the pass with that failure, and a kill -9 of the run leaves no child writing. Real spawned interpreters, real
HTTP to the loopback server, a real DuckDB file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autointerp.config import LabelConfig, LLMConfig
from autointerp.errors import AutointerpError
from autointerp.label import processes
from autointerp.label.roles import RoleGate
from autointerp.label.stage import label_event
from tests.helpers import copy_db, run_label
from tests.helpers import query as q
from tests.llm_server import LoopbackLLM
from tests.unit.test_labelling import good_script

ROOT = Path(__file__).resolve().parents[2]
ROWS = {
    "labels": "SELECT feature, explainer, label, status, null_kind, null_of, correlation_top_random, "
              "correlation_gain, explained_variance, detection, fuzzing FROM labels ORDER BY ALL",
    "scores": "SELECT feature, simulator, method, value, n_examples, ci_low, ci_high FROM scores ORDER BY ALL",
    "simulations": "SELECT feature, simulator, seq, split, kind, rank, purpose, predicted FROM simulations "
                   "ORDER BY ALL",
    "calls": "SELECT feature, role, model, status, prompt_tokens, completion_tokens FROM llm_calls ORDER BY ALL",
}


def test_two_client_processes_write_the_rows_one_process_writes(tmp_path, collected_db):
    """Features dealt to two processes: every label, score, simulation and request as with one (nulls and the
    reference included), and the progress adds up."""
    features = list(range(8))
    out = {}
    with LoopbackLLM(good_script) as llm:
        for n in (1, 2):
            db = copy_db(collected_db, tmp_path / f"p{n}.duckdb")
            progress = run_label(db, llm.base_url, features, null_samples=4, reference=True, llm={"processes": n})
            out[n] = progress, {name: q(db, sql) for name, sql in ROWS.items()}
    (one, rows_one), (two, rows_two) = out[1], out[2]
    for name in ROWS:
        assert rows_two[name] == rows_one[name], name
    assert len(rows_one["labels"]) > 8 and len(rows_one["scores"]) > 8  # the comparison is not of empty tables
    assert (two.features_total, two.features_done, two.explained, two.scored) == \
           (one.features_total, one.features_done, one.explained, one.scored) == (8, 8, 8, 8)
    assert two.nulls is not None and one.nulls is not None and two.nulls.scored == one.nulls.scored > 0


def test_a_child_that_fails_stops_the_pass_with_its_error(tmp_path):
    """A child's exception comes back to the parent as itself (not a hang, not a vague death), and the pass stops."""
    bad = tmp_path / "not-a-database.duckdb"
    bad.write_bytes(b"this is not a DuckDB file\n" * 100)
    spec = processes.PassSpec(str(bad), 1, LabelConfig(), explain_stage=True, score_stage=True, concurrency=2)
    cfg = LLMConfig(base_urls=("http://127.0.0.1:9/v1",), explainer_model="e", simulator_model="s", processes=2)
    start = time.monotonic()
    with pytest.raises(AutointerpError) as err:
        processes.run_pass(spec, [0, 1, 2, 3], cfg, 2, RoleGate(), None, label_event)
    assert "not-a-database.duckdb" in str(err.value) and "without finishing" not in str(err.value)
    assert time.monotonic() - start < 60


def test_budget_and_features_are_shared_so_children_never_spend_more_than_the_whole():
    cfg = LLMConfig(base_urls=("http://127.0.0.1:9/v1",), max_cost_usd=1.0, max_tokens=1001, processes=3)
    part = processes.share(cfg, 3)
    assert part.processes == 1 and 3 * part.max_cost_usd <= 1.0 and 3 * part.max_tokens <= 1001  # type: ignore[operator]


_PARENT = """
import sys
from tests.helpers import run_label
run_label(__import__("pathlib").Path(sys.argv[1]), sys.argv[2], list(range(8)), llm={"processes": 2})
"""


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status and "spawn_main" in (entry / "cmdline").read_text():
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State"))
    except (OSError, StopIteration):
        return False
    return "zombie" not in state


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_kill_9_of_the_run_leaves_no_client_process_writing(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "k.duckdb")

    def slow(path: str, request: dict):
        time.sleep(0.3)
        return good_script(path, request)

    with LoopbackLLM(slow) as llm:
        parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(db), llm.base_url], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            deadline = time.monotonic() + 120
            while len(llm.requests) < 4 and time.monotonic() < deadline and parent.poll() is None:
                time.sleep(0.1)
            children = _children_of(parent.pid)
            assert len(children) == 2 and len(llm.requests) >= 4, "the children never started working"
            os.kill(parent.pid, signal.SIGKILL)
            parent.wait()
            deadline = time.monotonic() + 10
            while any(_alive(c) for c in children) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not any(_alive(c) for c in children)
        finally:
            if parent.poll() is None:
                parent.kill()


def test_progress_adds_up_the_children_and_never_shows_one_childs_total_as_the_whole(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "progress.duckdb")
    events = []
    with LoopbackLLM(good_script) as llm:
        cfg = LLMConfig(base_urls=(llm.base_url,), explainer_model="m-explain", simulator_model="m-sim", processes=2)
        spec = processes.PassSpec(str(db), 1, LabelConfig(n_sim_top=6, n_sim_random=6, n_boot=200, null_samples=0,
                                                          reference=False),
                                  explain_stage=True, score_stage=True, concurrency=4)
        progress = processes.run_pass(spec, list(range(8)), cfg, 2, RoleGate(), events.append, label_event)
    assert progress.features_done == progress.features_total == 8
    assert events and all(e.total == 8 for e in events) and events[-1].done == 8
