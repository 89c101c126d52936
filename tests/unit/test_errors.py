"""Errors by kind at the command line, each from a real process: bad input exits 2 and writes nothing; a
lock held past the wait, an LLM endpoint that fails, and a database read that fails inside the label
stage exit 1 with their cause, each as one line without a traceback. No plain AutointerpError exists."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from autointerp.errors import AutointerpError, BadInput, InternalError, LLMError, LockTimeout
from tests.helpers import copy_db
from tests.llm_server import LoopbackLLM, Reply


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "OPENAI_API_KEY": "sk-test", **(env or {})}
    full_env.pop("OPENAI_BASE_URL", None)
    return subprocess.run([sys.executable, "-m", "autointerp", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines and lines[-1].startswith("error: "), proc.stderr
    return lines[-1]


def rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_the_base_error_cannot_be_raised_plain():
    with pytest.raises(TypeError, match="raise a kind"):
        raise AutointerpError("which kind?")
    assert [k("x").exit_code for k in (BadInput, LockTimeout, LLMError, InternalError)] == [2, 1, 1, 1]


def test_bad_input_exits_2_and_writes_nothing(tmp_path, tiny_model_dir):
    db = tmp_path / "bad.duckdb"
    corpus = tmp_path / "nul.txt"
    corpus.write_bytes(b"some text\x00 and a NUL byte in it, so not a text file\n" * 50)
    proc = cli("collect", "--model", str(tiny_model_dir), "--hook", "blocks.0.mlp.hook_post", "--dataset",
               str(corpus), "--tokens", "64", "--ctx-len", "16", "--db", str(db))
    assert proc.returncode == 2
    assert "NUL byte" in one_line_error(proc)
    assert not db.exists() or rows(db, "SELECT count(*) FROM dictionaries") == [(0,)]


def test_a_lock_held_past_the_wait_exits_1_naming_the_holder(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "held.duckdb")
    code = "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        proc = cli("status", "--db", str(db), env={"AUTOINTERP_LOCK_WAIT_S": "1"})
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(20)
    assert proc.returncode == 1
    assert f"PID {holder.pid}" in one_line_error(proc) and "stayed locked" in proc.stderr


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_llm_endpoint_that_fails_exits_1_with_its_reason(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "llm.duckdb")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    proc = cli("explain", "--db", str(db), "--features", "0:2", "--base-url", url, "--explainer-model", "m",
               "--simulator-model", "m", "--batch-api", "--batch-poll", "0.1")
    assert proc.returncode == 1
    assert "Batch API" in one_line_error(proc) and "failed" in proc.stderr
    assert "sk-test" not in proc.stderr


def test_a_database_read_failing_in_the_label_stage_is_internal_not_bad_input(tmp_path, collected_db):
    db = copy_db(collected_db, tmp_path / "broken.duckdb")
    with duckdb.connect(str(db)) as con:  # a threshold that does not cast: the contexts cannot be read
        con.execute("""UPDATE dictionaries SET config = json_merge_patch(config, '{"threshold": "high"}')""")
    with LoopbackLLM(lambda path, request: Reply(content="digits")) as server:
        proc = cli("explain", "--db", str(db), "--features", "0:2", "--base-url", server.base_url,
                   "--explainer-model", "m", "--simulator-model", "m")
    assert proc.returncode == 1
    assert "could not read the contexts of features 0..1" in one_line_error(proc)
    assert rows(db, "SELECT count(*) FROM explanations") == [(0,)]
