"""The command line as a user runs it: a real process, a real DuckDB file, the tiny model saved as an HF directory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from autointerp.errors import AutointerpError
from tests.helpers import make_sae_dir, write_corpus

HOOK = "blocks.0.mlp.hook_post"


def cli(*args: str, db: Path | None = None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "autointerp", *args] + (["--db", str(db)] if db else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def snapshot(db: Path) -> list:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
                for t in ("dictionaries", "sequences", "features", "examples")]
    finally:
        con.close()


@pytest.fixture(scope="module")
def base_db(tmp_path_factory, tiny_model, tiny_model_dir, corpus_file) -> Path:
    db = tmp_path_factory.mktemp("cli") / "base.duckdb"
    collect_stage(db, CollectConfig(model=str(tiny_model_dir), hook=HOOK, dataset=str(corpus_file), n_tokens=800,
                                    ctx_len=16, top_k=3, n_quantiles=2, per_quantile=2, n_random=3), model=tiny_model)
    return db


def test_collect_sql_show_status_end_to_end(tmp_path, tiny_model_dir, corpus_file):
    db = tmp_path / "e2e.duckdb"
    out = cli("collect", "--model", str(tiny_model_dir), "--hook", HOOK, "--dataset", str(corpus_file),
              "--tokens", "640", "--ctx-len", "16", db=db)
    assert "dictionary 1: 64 features over 640 tokens" in out.stdout
    rows = json.loads(cli("sql", "SELECT feature, max_act FROM features ORDER BY max_act DESC LIMIT 3",
                          "--format", "json", db=db).stdout)
    assert len(rows) == 3 and rows[0]["max_act"] >= rows[1]["max_act"] >= rows[2]["max_act"]
    csv_out = cli("sql", "SELECT count(*) AS n FROM contexts WHERE kind = 'top'", "--format", "csv", db=db).stdout
    assert csv_out.splitlines()[0] == "n" and int(csv_out.splitlines()[1]) > 0
    assert csv_out.endswith("\n") and not csv_out.endswith("\n\n") and "\r" not in csv_out
    top = rows[0]["feature"]
    shown = cli("show", str(top), "--no-color", db=db).stdout
    assert f"feature {top}" in shown and "== explain / top ==" in shown and "|" in shown
    status = cli("status", db=db).stdout
    assert "complete" in status and HOOK in status
    again = cli("collect", "--model", str(tiny_model_dir), "--hook", HOOK, "--dataset", str(corpus_file),
                "--tokens", "640", "--ctx-len", "16", db=db)
    assert "nothing to do" in again.stdout


def test_sql_is_read_only_and_errors_are_clear(base_db):
    before = snapshot(base_db)
    bad = cli("sql", "DROP TABLE examples", db=base_db, check=False)
    assert bad.returncode == 2 and "read-only" in bad.stderr.lower().replace("read only", "read-only")
    bad = cli("sql", "SELEC nonsense", db=base_db, check=False)
    assert bad.returncode == 2 and "SQL error" in bad.stderr and "Traceback" not in bad.stderr
    assert snapshot(base_db) == before


@pytest.mark.parametrize("command", ["collect", "sql", "show", "status"])
def test_every_command_has_help_with_an_example(command):
    out = cli(command, "--help").stdout
    assert "Example" in out and "autointerp " + command in out


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-model-xyz"], "unknown model 'no-such-model-xyz'"),
    (["--hook", "blocks.0.mlp.hook_nope"], "unknown hook 'blocks.0.mlp.hook_nope'"),
    (["--tokens", "10", "--ctx-len", "16"], "smaller than one context"),
    (["--dataset", "/nonexistent/corpus.txt"], "does not exist"),
])
def test_bad_input_through_the_cli_leaves_the_database_as_it_was(base_db, tiny_model_dir, corpus_file, args, message):
    before = snapshot(base_db)
    defaults = {"--model": str(tiny_model_dir), "--hook": HOOK, "--dataset": str(corpus_file), "--tokens": "800",
                "--ctx-len": "16"}
    for k, v in zip(args[::2], args[1::2], strict=True):
        defaults[k] = v
    flat = [x for kv in defaults.items() for x in kv]
    proc = cli("collect", *flat, db=base_db, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(base_db) == before


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"valid start\n\xc3\x28 invalid", b"text\x00with nul"])
def test_bad_corpus_leaves_the_database_as_it_was(tmp_path, base_db, tiny_model, tiny_model_dir, content):
    before = snapshot(base_db)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    cfg = CollectConfig(model=str(tiny_model_dir), hook=HOOK, dataset=str(bad), n_tokens=800, ctx_len=16)
    with pytest.raises(AutointerpError):
        collect_stage(base_db, cfg, model=tiny_model)
    assert snapshot(base_db) == before


def test_sae_of_the_wrong_width_is_refused(tmp_path, base_db, tiny_model, tiny_model_dir, corpus_file):
    before = snapshot(base_db)
    sae = make_sae_dir(tmp_path / "sae", "blocks.1.hook_resid_post", d_in=tiny_model.cfg.d_model + 1)
    cfg = CollectConfig(model=str(tiny_model_dir), sae=str(sae), dataset=str(corpus_file), n_tokens=800, ctx_len=16)
    with pytest.raises(AutointerpError, match="d_in=33"):
        collect_stage(base_db, cfg, model=tiny_model)
    assert snapshot(base_db) == before


def _start_collect(db: Path, model_dir: Path, corpus: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "autointerp", "collect", "--model", str(model_dir), "--hook", HOOK,
           "--dataset", str(corpus), "--tokens", "120000", "--ctx-len", "16", "--db", str(db), *extra]
    # Default SIGINT in the child: a test run started in the background (nohup, `&`) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_progress(proc: subprocess.Popen, min_tokens: int = 1000) -> None:
    """Read the progress bar until it shows work under way (the model is loaded, the run registered)."""
    os.set_blocking(proc.stderr.fileno(), False)
    seen = ""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError):
            seen += os.read(proc.stderr.fileno(), 65536).decode(errors="replace")
        counts = [float(x.rstrip("k")) * (1000 if x.endswith("k") else 1)
                  for x in __import__("re").findall(r"\| ([\d.]+k?)/", seen)]
        if counts and counts[-1] >= min_tokens:
            return
        assert proc.poll() is None, seen
        time.sleep(0.05)
    raise AssertionError(f"no progress: {seen[-500:]}")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT])
def test_killed_collection_is_marked_incomplete_and_a_rerun_completes_it(tmp_path, tiny_model_dir, how):
    big = write_corpus(tmp_path / "big.txt", n_paragraphs=4000)
    db = tmp_path / "killed.duckdb"
    proc = _start_collect(db, tiny_model_dir, big)
    _wait_for_progress(proc)
    proc.send_signal(how)
    proc.wait(timeout=60)
    if how == signal.SIGINT:
        os.set_blocking(proc.stderr.fileno(), True)
        assert proc.returncode == 130 and "marked incomplete" in proc.stderr.read()
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT status FROM dictionaries").fetchall() == [("incomplete",)]
    assert con.execute("SELECT count(*) FROM examples").fetchall() == [(0,)]
    con.close()
    status = cli("status", db=db).stdout
    assert "incomplete" in status

    rerun = _start_collect(db, tiny_model_dir, big)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    clean = tmp_path / "clean.duckdb"
    assert _start_collect(clean, tiny_model_dir, big).wait(timeout=300) == 0
    a, b = snapshot(db), snapshot(clean)
    assert [r[12] for r in a[0]] == ["complete"]
    assert a[1:] == b[1:]


def test_killed_collection_resumes_from_its_checkpoint(tmp_path, tiny_model_dir):
    big = write_corpus(tmp_path / "big.txt", n_paragraphs=4000)
    db = tmp_path / "ckpt.duckdb"
    proc = _start_collect(db, tiny_model_dir, big, "--checkpoint-every", "0.2")
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("ckpt.duckdb.collect-*.ckpt")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    _wait_for_progress(proc, 8000)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert list(tmp_path.glob("ckpt.duckdb.collect-*.ckpt"))
    rerun = _start_collect(db, tiny_model_dir, big)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "resumed from a checkpoint at" in out
    assert not list(tmp_path.glob("ckpt.duckdb.collect-*"))  # removed once complete
    clean = tmp_path / "clean.duckdb"
    assert _start_collect(clean, tiny_model_dir, big).wait(timeout=300) == 0
    assert snapshot(db)[1:] == snapshot(clean)[1:]


def test_control_of_an_sae_dictionary_needs_an_sae_for_the_random_model(tmp_path, tiny_model, tiny_model_dir,
                                                                         corpus_file):
    sae = make_sae_dir(tmp_path / "sae", "blocks.1.hook_resid_post", d_in=tiny_model.cfg.d_model)
    db = tmp_path / "sae.duckdb"
    collect_stage(db, CollectConfig(model=str(tiny_model_dir), sae=str(sae), dataset=str(corpus_file), n_tokens=800,
                                    ctx_len=16), model=tiny_model)
    before = snapshot(db)
    proc = cli("control", "--like", "1", "--base-url", "http://127.0.0.1:9/v1", db=db, check=False)
    assert proc.returncode == 2 and "--sae DIR" in proc.stderr and "random-init model" in proc.stderr
    assert snapshot(db) == before
