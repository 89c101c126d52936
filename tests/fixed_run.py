"""A fixed run whose rows must not change under a refactor: collect (the tiny model over the test corpus),
label live with the scripted loopback server (echo simulator, judges, nulls, the reference), label again
with the chat simulator, label a copy through the Batch API, then behaviour. `snapshot(db)` reduces a
database to its rows, table by table, without what legitimately varies between runs (uuids become keys
made of the row's own content, timestamps, latencies, temporary paths and loopback ports are dropped).

Regenerate the golden file after a deliberate change of results (a new score definition):
    PYTHONPATH=$PWD .venv/bin/python -m tests.fixed_run tests/data/fixed_run.json
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.helpers import TINY_COLLECT, copy_db, make_model_dir, query, run_label, write_corpus
from tests.llm_server import BatchScript, LoopbackLLM
from tests.unit.test_labelling import chat_sim_script, good_script

FEATURES = [0, 1, 2, 3, 4, 5]
# Columns that differ between two identical runs.
VARYING = {"created_at", "latency_s", "started_at", "finished_at", "updated_at", "duration_s", "submitted_at",
           "completed_at", "last_polled_at", "ingested_at"}
# Hashes of a temporary path or of uuids.
VARYING_IN = {"dictionaries": {"config_hash"}, "batches": {"batch_key", "group_key"}}
# Wide collection tables are compared by digest; the label tables row by row, so a diff shows what moved.
DIGESTED = {"examples", "sequences", "features", "simulations", "llm_calls"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SIG_DIGITS = 10


def run(workdir: Path) -> dict[str, Path]:
    """The fixed run in `workdir`: the live database and the Batch API one."""
    from autointerp.behaviour.stage import behaviour_stage
    from autointerp.collect.stage import collect_stage
    from autointerp.config import BehaviourConfig, CollectConfig
    from autointerp.models import load_model

    model_dir = make_model_dir(workdir / "model")
    corpus = write_corpus(workdir / "corpus.txt")
    live = workdir / "live.duckdb"
    collect_stage(live, CollectConfig(model=str(model_dir), dataset=str(corpus), **TINY_COLLECT),
                  model=load_model(str(model_dir)))
    batch = copy_db(live, workdir / "batch.duckdb")
    with LoopbackLLM(good_script) as server:
        run_label(live, server.base_url, FEATURES, null_samples=2, reference=True)
    with LoopbackLLM(chat_sim_script) as server:
        run_label(live, server.base_url, FEATURES[:3], simulator_mode="chat", llm={"simulator_model": "m-chat"})
    behaviour_stage(live, 1, BehaviourConfig(n_boot=50, device="cpu"))  # type: ignore[call-arg]
    with LoopbackLLM(good_script, batch=BatchScript(polls=1, shuffle=True)) as server:
        from tests.unit.test_batch_api import run_batch_api

        run_batch_api(batch, server.base_url, FEATURES, null_samples=2, reference=True)
    return {"live": live, "batch": batch}


def _tables(db: Path) -> list[str]:
    rows = query(db, "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
                     "AND table_name <> 'schema_migrations' ORDER BY 1")
    return [r[0] for r in rows]


def _value(v: Any, tmp: str, ids: dict[str, str]) -> Any:
    if isinstance(v, float):
        return None if math.isnan(v) else float(f"{v:.{SIG_DIGITS}g}")
    if isinstance(v, list | tuple):
        return [_value(x, tmp, ids) for x in v]
    if isinstance(v, dict):
        return {k: _value(x, tmp, ids) for k, x in v.items()}
    if isinstance(v, str):
        v = UUID.sub(lambda m: ids.get(m.group(0), "UUID"), v.replace(tmp, "TMP"))
        return re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", v)
    return v if v is None or isinstance(v, int | bool) else str(v)


def _ids(db: Path) -> dict[str, str]:
    """uuid -> a key made of what the row it names says, so links between tables survive the snapshot."""
    ids: dict[str, str] = {}
    for row in query(db, "SELECT explanation_id, dictionary_id, feature, explainer, prompt_hash, label, null_kind, "
                         "label_feature, status FROM explanations"):
        ids[row[0]] = "E" + json.dumps(row[1:])
    for row in query(db, "SELECT run_id, explanation_id, stage, simulator, settings_hash FROM score_runs"):
        ids[row[0]] = "R" + json.dumps([ids.get(row[1], row[1]), *row[2:]])
    return ids


def snapshot(db: Path, tmp: str) -> dict[str, Any]:
    """Every table's rows, sorted, with ids replaced by content keys and varying columns left out;
    the wide tables as their row count and a digest of those rows."""
    ids = _ids(db)
    out: dict[str, Any] = {}
    for table in _tables(db):
        cols = [r[0] for r in query(db, "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                                        "ORDER BY ordinal_position", [table]) 
                if r[0] not in VARYING | VARYING_IN.get(table, set()) | {"call_id"}]
        rows = query(db, f"SELECT {', '.join(cols)} FROM {table}")
        lines = sorted(json.dumps([_value(v, tmp, ids) for v in r], sort_keys=True) for r in rows)
        if table in DIGESTED:
            out[table] = {"columns": cols, "rows": len(lines),
                          "sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest()}
        else:
            out[table] = {"columns": cols, "rows": [json.loads(line) for line in lines]}
    return out


def dumps(snap: dict[str, Any]) -> str:
    """One row per line, so that a regenerated file diffs row by row."""
    lines = ["{"]
    for i, (name, tables) in enumerate(sorted(snap.items())):
        lines.append(f" {json.dumps(name)}: {{")
        for j, (table, body) in enumerate(sorted(tables.items())):
            rows = body["rows"]
            if isinstance(rows, list):
                inner = ",\n".join("    " + json.dumps(r, sort_keys=True) for r in rows)
                text = f'{{"columns": {json.dumps(body["columns"])}, "rows": [\n{inner}\n  ]}}'
            else:
                text = json.dumps(body, sort_keys=True)
            lines.append(f"  {json.dumps(table)}: {text}" + ("," if j < len(tables) - 1 else ""))
        lines.append(" }" + ("," if i < len(snap) - 1 else ""))
    return "\n".join(lines) + "\n}\n"


def compute() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        dbs = run(Path(d))
        return {name: snapshot(db, d) for name, db in dbs.items()}


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(dumps(compute()))
