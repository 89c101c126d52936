"""Faults around a collection: another process holding the database when a finished collection is
written (a real second process with a read-only DuckDB connection), and a planted checkpoint."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import torch

from autointerp.collect.collector import Collector
from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from autointerp.errors import LockTimeout

HOOK = "blocks.0.mlp.hook_post"


def _cfg(tiny_model_dir: Path, corpus_file: Path) -> CollectConfig:
    return CollectConfig(model=str(tiny_model_dir), hook=HOOK, dataset=str(corpus_file), n_tokens=800, ctx_len=16,
                         batch_size=4)


def _rows(db: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


class _Holder:
    """A second process holding a read-only DuckDB connection to `db` for `hold_s` seconds, or until
    `release()` when hold_s is 0."""

    def __init__(self, db: Path, hold_s: float):
        code = ("import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); "
                "print('held', flush=True); h = float(sys.argv[2]); time.sleep(h) if h else sys.stdin.read(); "
                "c.close()")
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(hold_s)], stdout=subprocess.PIPE,
                                     stdin=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "held"
        self.since = time.monotonic()

    def release(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(20)


def _hold_during_collection(db: Path, hold_s: float, holders: list[_Holder]):
    """A progress callback that, at the first batch (after the dictionary is registered, while the
    collector holds no connection), starts a process that holds the database."""

    def update(event: object) -> None:
        if not holders:
            holders.append(_Holder(db, hold_s))

    return update


def test_a_finished_collection_waits_for_a_reader_in_another_process_then_completes(
        tmp_path, tiny_model, tiny_model_dir, corpus_file, caplog):
    db = tmp_path / "held.duckdb"
    cfg = _cfg(tiny_model_dir, corpus_file)
    holders: list[_Holder] = []
    with caplog.at_level(logging.WARNING, logger="autointerp.store"):
        out = collect_stage(db, cfg, _hold_during_collection(db, 8.0, holders), model=tiny_model,
                            final_write_wait_s=60.0)
    (holder,) = holders
    waited = time.monotonic() - holder.since
    assert holder.proc.wait(10) == 0
    assert holder.proc.stdin is not None
    holder.proc.stdin.close()
    assert waited >= 8.0, "the write cannot have happened while the other process held the database"
    assert not out.already_complete and out.n_tokens == 800
    assert _rows(db, "SELECT status, n_tokens FROM dictionaries") == [("complete", 800)]
    assert _rows(db, "SELECT count(*) FROM features")[0][0] == out.n_features > 0
    # The wait is visible and names the process that holds the lock.
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "waiting for the database lock" in said and f"PID {holder.proc.pid}" in said
    assert not list(tmp_path.glob("*.ckpt")), "the checkpoint goes once the data is committed"


def test_a_lock_held_past_the_wait_deletes_nothing_and_a_rerun_writes_it_from_the_checkpoint(
        tmp_path, tiny_model, tiny_model_dir, corpus_file):
    db = tmp_path / "held.duckdb"
    cfg = _cfg(tiny_model_dir, corpus_file)
    holders: list[_Holder] = []
    with pytest.raises(LockTimeout, match=r"could not be written.*Nothing is lost") as err:
        collect_stage(db, cfg, _hold_during_collection(db, 0, holders), model=tiny_model, final_write_wait_s=1.0)
    (holder,) = holders
    assert err.value.holder is not None and f"PID {holder.proc.pid}" in err.value.holder
    assert holder.release() == 0
    # Nothing deleted: the dictionary is registered (incomplete) and the finished state is checkpointed.
    assert _rows(db, "SELECT status FROM dictionaries") == [("incomplete",)]
    (ckpt,) = tmp_path.glob("*.ckpt")
    assert Collector.load(ckpt, cfg, 64).n_contexts == 800 // 16

    again = collect_stage(db, cfg, model=tiny_model, final_write_wait_s=60.0)
    assert again.resumed_tokens == 800 and again.n_tokens == 800  # every context from the checkpoint, none run
    assert _rows(db, "SELECT status FROM dictionaries") == [("complete",)]
    # Identical to a collection that was never blocked.
    clean = tmp_path / "clean.duckdb"
    collect_stage(clean, cfg, model=tiny_model)
    q = "SELECT feature, max_act, mean_act, frac_active, hist_counts FROM features ORDER BY feature"
    assert _rows(db, q) == _rows(clean, q)
    assert not list(tmp_path.glob("*.ckpt"))


class _Payload:
    """Unpickling this creates a file: the proof that loading ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_planted_checkpoint_with_a_pickle_payload_is_refused_not_run(
        tmp_path, tiny_model, tiny_model_dir, corpus_file, writer):
    db = tmp_path / "planted.duckdb"
    cfg = _cfg(tiny_model_dir, corpus_file)
    marker = tmp_path / "code-ran"
    ckpt = Path(f"{db}.collect-{cfg.config_hash()}.ckpt")
    payload = {"version": 1, "n_features": 64, "buffers": _Payload(marker)}
    if writer == "pickle":
        ckpt.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, ckpt)
    with pytest.raises(ValueError):
        Collector.load(ckpt, cfg, 64)
    out = collect_stage(db, cfg, model=tiny_model)
    assert not marker.exists(), "loading the checkpoint ran the code inside it"
    assert out.resumed_tokens == 0 and out.n_tokens == 800
    assert _rows(db, "SELECT status FROM dictionaries") == [("complete",)]
