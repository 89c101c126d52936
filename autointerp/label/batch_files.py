"""Offline batch files: `batch export` writes a stage's pending requests as one JSONL file for `vllm
run-batch` (or any OpenAI-format runner); `batch import` ingests its output exactly like a Batch API
result (the same `BatchRun.ingest`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autointerp import store
from autointerp.config import LabelConfig, LLMConfig
from autointerp.label.batch import BatchRun
from autointerp.label.batchio import Result, read_results
from autointerp.label.stage import Progress
from autointerp.records import ProgressFn


def export_requests(db: str | Path, dictionary_id: int, features: list[int], stage: str, cfg: LabelConfig,
                    llm_cfg: LLMConfig, explainer_model: str, simulator_model: str, out: str | Path
                    ) -> tuple[int, int]:
    """Write the stage's pending requests as one OpenAI-format JSONL file (each line names its endpoint, as
    `vllm run-batch` reads it), recorded as an exported batch. Returns (units, requests)."""
    run = BatchRun(db, dictionary_id, cfg, llm_cfg.model_copy(update={"batch_max_requests": 2**62,
                                                                      "batch_max_bytes": 2**62}),
                   None, explainer_model, simulator_model)
    units = run.pending_units(stage, features)
    if not units:
        Path(out).write_bytes(b"")
        return 0, 0
    group, members, reqs = next(iter(run._groups(stage, units)))
    with store.open_store(db, wait_s=600) as con:
        store.add_batches(con, run._rows(stage, group, members, reqs, "file"))
    tmp = Path(f"{out}.part")
    with tmp.open("wb") as f:
        for r in reqs:
            f.write(r.line())
    tmp.replace(out)
    return len(members), len(reqs)


@dataclass
class Imported:
    groups: int
    results: int
    unreadable: int
    skipped: list[str]  # groups already imported, or unknown here
    progress: Progress


def import_results(db: str | Path, path: str | Path, on_progress: ProgressFn | None = None) -> Imported:
    """Ingest an offline runner's output file exactly like a Batch API result: each exported group whose
    custom_ids appear in it is parsed, scored and stored (no re-asks: there is no live endpoint; requests
    without a usable result stay pending for the next export)."""
    results, unreadable = read_results(Path(path).read_bytes())
    groups: dict[str, dict[str, Result]] = {}
    for k, r in results.items():
        groups.setdefault(k.split(":", 1)[0], {})[k] = r
    skipped, done = [], 0
    progress = Progress()
    for group, mine in groups.items():
        with store.open_store(db, wait_s=600) as con:
            rows = store.group_batches(con, group)
        if not rows or rows[0].ingested_at is not None:
            skipped.append(f"{group} ({'already imported' if rows else 'not exported from this database'})")
            continue
        c = json.loads(rows[0].config)
        cfg = LabelConfig(**c["label"])
        run = BatchRun(db, rows[0].dictionary_id, cfg, LLMConfig.model_validate({"batch_attempts": 20}), None, c["explainer"],
                       c["simulator"], on_progress=on_progress)
        run.progress = progress
        run.ingest(rows, mine)
        with store.open_store(db, wait_s=600) as con:
            for row in rows:
                store.update_batch(con, row.batch_key, status="imported", n_completed=sum(
                    1 for r in mine.values() if r.body is not None), n_failed=sum(1 for r in mine.values() if r.error))
        if cfg.baseline:
            from autointerp.label.stage import label_stage

            feats = sorted({u["f"] for u in json.loads(rows[0].units)})
            label_stage(db, rows[0].dictionary_id, feats, cfg.model_copy(update={"null_samples": 0}), None,
                        explain_stage=rows[0].stage == "explain", score_stage=True)
        done += 1
    return Imported(done, len(results), unreadable, skipped, progress)
