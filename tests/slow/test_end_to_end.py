"""The whole pipeline on the embedded default: SmolLM2-135M collected, labelled by SmolLM2-135M-Instruct
through a real llama.cpp server on 127.0.0.1, simulated in-process. Minutes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow


def llama_servers(tag: str) -> set[str]:
    """llama.cpp servers started under the command with this tag in its environment (which they inherit):
    a demo or bench running beside the suite has servers of its own, started at any moment."""
    pids = subprocess.run(["pgrep", "-f", "llama_cpp.server"], capture_output=True, text=True).stdout.split()
    ours = set()
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:  # gone already
            continue
        if f"AUTOINTERP_E2E_TAG={tag}".encode() in environ:
            ours.add(pid)
    return ours


def test_run_on_the_embedded_default(tmp_path):
    db = tmp_path / "e2e.duckdb"
    tag = uuid.uuid4().hex
    cmd = [sys.executable, "-m", "autointerp", "run", "--db", str(db), "--tokens", "12800", "--ctx-len", "32",
           "--label-features", "0:3", "--sim-top", "4", "--sim-random", "4", "--concurrency", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env={**os.environ, "AUTOINTERP_E2E_TAG": tag})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3/3 features done" in proc.stdout
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT feature, explainer, status, label, error FROM explanations WHERE null_kind IS NULL "
                       "ORDER BY ALL").fetchall()
    llm_rows = [r for r in rows if r[1] == "smollm2-135m-instruct"]
    assert len(llm_rows) == 3 and len(rows) == 6
    # Weak labels are fine; a failure must be a failure with a reason, never a placeholder label.
    for _, _, status, label, error in llm_rows:
        assert (status == "ok" and label and error is None) or (status == "failed" and label is None and error)
    calls = con.execute("SELECT role, endpoint, status, prompt_tokens FROM llm_calls").fetchall()
    assert any(r[0] == "explainer" and r[1].startswith("http://127.0.0.1:") for r in calls)
    ok_labels = sum(r[2] == "ok" for r in llm_rows)
    assert ok_labels >= 1, llm_rows
    # The LLM's simulations ran in-process, one request per simulation run (all of a label's contexts as one
    # list of prompts), and every one succeeded.
    sims = [r for r in calls if r[0] == "simulator"]
    assert sims and all(r[1] == "in-process:llama.cpp" and r[2] == "ok" and r[3] > 50 for r in sims)
    n_runs, n_simulated = con.execute("SELECT count(DISTINCT run_id), count(*) FROM simulations "
                                      "WHERE simulator = 'smollm2-135m-instruct'").fetchone()
    assert n_runs == len(sims) and n_simulated > n_runs
    llm_runs = con.execute("SELECT r.status, count(*) FROM score_runs r JOIN explanations e USING (explanation_id) "
                           "WHERE r.stage = 'simulation' AND e.explainer = 'smollm2-135m-instruct' GROUP BY 1").fetchall()
    assert llm_runs == [("ok", ok_labels)], llm_runs
    scored = con.execute("SELECT count(*) FROM labels WHERE explainer = 'smollm2-135m-instruct' "
                         "AND correlation_top_random IS NOT NULL").fetchone()[0]
    assert scored >= 1  # a label whose held-out contexts show variance gets a correlation
    scores = con.execute("SELECT count(*) FROM labels WHERE explainer = 'baseline:token-lookup' "
                         "AND correlation_top_random IS NOT NULL").fetchone()[0]
    assert scores >= 3  # every baseline label is scored
    con.close()
    assert not llama_servers(tag), "the local llama.cpp server outlived the command"
