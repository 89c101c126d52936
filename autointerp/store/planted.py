"""Planted dictionaries' truth (`planted_truth`) and what `check-llm` reads back: each label's newest scores
on a planted dictionary, and the LLM calls they cost."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from autointerp.store.db import Connection, insert_rows


@dataclass(frozen=True)
class TruthRow:
    dictionary_id: int
    feature: int
    name: str
    description: str
    kind: str
    spec: dict[str, Any]
    spec_hash: str
    noise: float
    source: str


def add_planted_truth(con: Connection, rows: list[TruthRow]) -> None:
    """Insert the truth rows (replacing those of their dictionary), inside the caller's transaction."""
    for did in {r.dictionary_id for r in rows}:
        con.execute("DELETE FROM planted_truth WHERE dictionary_id = ?", [did])
    insert_rows(con, "planted_truth", [{**r.__dict__, "spec": json.dumps(r.spec, sort_keys=True)} for r in rows])


def planted_truth(con: Connection, dictionary_id: int) -> list[TruthRow]:
    rows = con.execute(
        "SELECT dictionary_id, feature, name, description, kind, spec, spec_hash, noise, source FROM planted_truth "
        "WHERE dictionary_id = ? ORDER BY feature", [dictionary_id]).fetchall()
    return [TruthRow(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7], r[8]) for r in rows]


def planted_dictionaries(con: Connection) -> list[int]:
    """Complete planted dictionaries, newest first."""
    return [r[0] for r in con.execute(
        "SELECT dictionary_id FROM dictionaries WHERE kind = 'planted' AND status = 'complete' "
        "ORDER BY dictionary_id DESC").fetchall()]


@dataclass(frozen=True)
class LabelScore:
    feature: int
    explainer: str
    method: str
    value: float | None


def planted_scores(con: Connection, dictionary_id: int, simulator: str, explainers: list[str],
                   methods: tuple[str, ...]) -> list[LabelScore]:
    """The newest score of each (feature, explainer, method) by `simulator` on the dictionary."""
    if not explainers or not methods:
        return []
    rows = con.execute(
        f"SELECT feature, explainer, method, value FROM latest_scores WHERE dictionary_id = ? AND simulator = ? "
        f"AND explainer IN ({', '.join('?' * len(explainers))}) AND method IN ({', '.join('?' * len(methods))})",
        [dictionary_id, simulator, *explainers, *methods]).fetchall()
    return [LabelScore(*r) for r in rows]


@dataclass(frozen=True)
class RoleUsage:
    role: str
    calls: int
    tokens: int
    cost_usd: float
    seconds: float  # summed request latency


def call_usage(con: Connection, dictionary_id: int) -> list[RoleUsage]:
    """LLM calls made for the dictionary, per role (explain, simulate, judge)."""
    rows = con.execute(
        "SELECT role, count(*), coalesce(sum(prompt_tokens + completion_tokens), 0), coalesce(sum(cost_usd), 0), "
        "coalesce(sum(latency_s), 0) FROM llm_calls WHERE dictionary_id = ? GROUP BY role ORDER BY role",
        [dictionary_id]).fetchall()
    return [RoleUsage(r[0], int(r[1]), int(r[2]), float(r[3]), float(r[4])) for r in rows]


def scorable_features(con: Connection, dictionary_id: int) -> list[int]:
    """Features that fire in both splits: a top context to explain from and one to score on (a rule can fire
    only in one split's texts, e.g. years in 100k tokens of the Python docs, and could then not be scored)."""
    return [r[0] for r in con.execute(
        "SELECT feature FROM features f WHERE dictionary_id = ? AND max_act > 0 AND (SELECT count(DISTINCT split) "
        "FROM examples c WHERE c.dictionary_id = f.dictionary_id AND c.feature = f.feature AND c.kind = 'top') = 2 "
        "ORDER BY feature", [dictionary_id]).fetchall()]
