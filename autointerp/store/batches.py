"""Batch API runs and batch files: the `batches` table (one row per provider batch or exported file,
recorded before anything is sent) and the atomic ingestion of a group's results."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from autointerp.records import BATCH_DONE
from autointerp.redact import redact
from autointerp.store.db import Connection, insert_rows, transaction
from autointerp.store.results import Bundle, insert_bundles


@dataclass(frozen=True)
class BatchRow:
    batch_key: str
    group_key: str
    provider: str
    url: str
    stage: str
    dictionary_id: int
    status: str
    n_requests: int
    units: str  # JSON
    config: str  # JSON
    batch_id: str | None = None
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    n_completed: int = 0
    n_failed: int = 0
    cost_usd: float | None = None
    error: str | None = None
    ingested_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


_COLUMNS = [f.name for f in fields(BatchRow)]
_UPDATABLE = {"batch_id", "input_file_id", "output_file_id", "error_file_id", "status", "n_completed", "n_failed",
              "cost_usd", "error"}


def add_batches(con: Connection, rows: list[BatchRow]) -> None:
    """Record batches (in one transaction) before their files are uploaded."""
    with transaction(con):
        insert_rows(con, "batches", [{k: v for k, v in asdict(r).items()
                                      if k not in ("created_at", "updated_at", "ingested_at")}
                                     for r in rows])


def update_batch(con: Connection, batch_key: str, **values: Any) -> None:
    bad = set(values) - _UPDATABLE
    if bad:
        raise ValueError(f"not updatable batch columns: {sorted(bad)}")
    if values.get("error") is not None:
        values["error"] = redact(values["error"])
    sets = ", ".join(f"{k} = ?" for k in values)
    con.execute(f"UPDATE batches SET {sets}, updated_at = current_timestamp WHERE batch_key = ?",
                [*values.values(), batch_key])


def record_cancel(con: Connection, batch_key: str, status: str) -> None:
    """The status a cancel call answered, unless the batch has already finished: a running label stage may
    have polled it to its final status (and ingested it) while the cancel was on its way, and the cancel's
    answer is older than that."""
    done = ", ".join("?" for _ in BATCH_DONE)
    con.execute(f"UPDATE batches SET status = ?, updated_at = current_timestamp WHERE batch_key = ? "
                f"AND status NOT IN ({done})", [status, batch_key, *BATCH_DONE])


def _rows(con: Connection, where: str, params: list[Any]) -> list[BatchRow]:
    cur = con.execute(f"SELECT {', '.join(_COLUMNS)} FROM batches {where} ORDER BY created_at, batch_key", params)
    return [BatchRow(*r) for r in cur.fetchall()]


def list_batches(con: Connection, dictionary_id: int | None = None) -> list[BatchRow]:
    if dictionary_id is None:
        return _rows(con, "", [])
    return _rows(con, "WHERE dictionary_id = ?", [dictionary_id])


def open_batches(con: Connection, dictionary_id: int) -> list[BatchRow]:
    """Provider batches of the dictionary whose results are not ingested yet (any stage)."""
    return _rows(con, "WHERE dictionary_id = ? AND provider <> 'file' AND ingested_at IS NULL", [dictionary_id])


def group_batches(con: Connection, group_key: str) -> list[BatchRow]:
    return _rows(con, "WHERE group_key = ?", [group_key])


def get_batch(con: Connection, key: str) -> BatchRow | None:
    """A batch by our key or the provider's id."""
    rows = _rows(con, "WHERE batch_key = ? OR batch_id = ?", [key, key])
    return rows[0] if rows else None


def finish_group(con: Connection, bundles: list[Bundle], costs: dict[str, float]) -> int:
    """Write a group's results and mark its batches ingested, in one transaction: a run killed while
    ingesting wrote nothing and ingests the same results again. Returns the bundles written."""
    with transaction(con):
        written = insert_bundles(con, bundles)
        for key, usd in costs.items():
            update_batch(con, key, cost_usd=usd)
            con.execute("UPDATE batches SET ingested_at = current_timestamp WHERE batch_key = ?", [key])
    return written


def batch_failures(con: Connection, dictionary_id: int, stage: str, model: str) -> dict[Any, int]:
    """How many batches each unit of work failed in (a failed, expired or missing request, recorded as an
    error call with its batch id): features for 'explain', explanation ids for 'score'."""
    if stage == "explain":
        sql = ("SELECT feature, count(DISTINCT batch_id) FROM llm_calls WHERE dictionary_id = ? AND model = ? "
               "AND batch_id IS NOT NULL AND status = 'error' AND role = 'explainer' AND explanation_id IS NULL "
               "GROUP BY feature")
    else:
        sql = ("SELECT explanation_id, count(DISTINCT batch_id) FROM llm_calls WHERE dictionary_id = ? AND model = ? "
               "AND batch_id IS NOT NULL AND status = 'error' AND role IN ('simulator', 'judge') AND run_id IS NULL "
               "GROUP BY explanation_id")
    return dict(con.execute(sql, [dictionary_id, model]).fetchall())
