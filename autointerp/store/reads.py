"""Reads for status, compare, export and the report: named queries returning typed records or tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from autointerp.errors import BadInput
from autointerp.store.db import Connection

# ---------------------------------------------------------------- reads for status, compare, export, report


@dataclass(frozen=True)
class Table:
    """Rows to show as they are (status, summaries, usage): column names and row tuples."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


def _table(con: Connection, sql: str, params: list[Any] | None = None) -> Table:
    cur = con.execute(sql, params or [])
    return Table([d[0] for d in cur.description], cur.fetchall())


def dictionary_status(con: Connection) -> Table:
    return _table(con, """
        SELECT d.dictionary_id AS id, d.model, d.hook, d.kind, d.random_init,
               coalesce(json_extract_string(d.config, '$.init_scheme'), CASE WHEN d.random_init THEN 'init' END)
                 AS scheme, d.status, d.n_tokens, d.n_features, count(f.feature) AS features_stored,
               (SELECT count(*) FROM examples e WHERE e.dictionary_id = d.dictionary_id) AS examples,
               (SELECT count(*) FROM labels x WHERE x.dictionary_id = d.dictionary_id AND x.status = 'ok'
                  AND x.null_kind IS NULL AND x.explainer NOT LIKE 'baseline:%') AS llm_labels,
               (SELECT count(*) FROM labels x WHERE x.dictionary_id = d.dictionary_id
                  AND x.status = 'failed') AS failed_labels,
               (SELECT count(DISTINCT s.explanation_id) FROM scores s
                  WHERE s.dictionary_id = d.dictionary_id) AS scored_labels,
               d.dataset, d.created_at
        FROM dictionaries d LEFT JOIN features f USING (dictionary_id)
        GROUP BY ALL ORDER BY id""")


@dataclass(frozen=True)
class LabelScores:
    """One row of the `labels` view: a label and its scores (method -> value, None where undefined)."""

    dictionary_id: int
    feature: int
    explainer: str
    simulator: str | None
    label: str | None
    null_kind: str | None
    values: dict[str, float | None]


def label_scores(con: Connection, methods: tuple[str, ...],
                 dictionary_ids: list[int] | None = None) -> list[LabelScores]:
    """Ok labels (real and null) with the given score columns of the `labels` view."""
    known = {d[0] for d in con.execute("DESCRIBE labels").fetchall()}
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise BadInput(f"no score columns {unknown} in the labels view")
    sql = (f"SELECT dictionary_id, feature, explainer, simulator, label, null_kind, {', '.join(methods)} "
           "FROM labels WHERE status = 'ok'")
    params: list[Any] = []
    if dictionary_ids is not None:
        sql += f" AND dictionary_id IN ({', '.join('?' * len(dictionary_ids))})"
        params = list(dictionary_ids)
    rows = con.execute(sql + " ORDER BY dictionary_id, explainer, feature", params).fetchall()
    return [LabelScores(*r[:6], dict(zip(methods, r[6:], strict=True))) for r in rows]  # type: ignore[call-arg]


@dataclass(frozen=True)
class ScoreValue:
    dictionary_id: int
    feature: int
    explainer: str
    simulator: str
    settings_hash: str
    method: str
    value: float | None


def score_values(con: Connection, dictionary_ids: list[int]) -> list[ScoreValue]:
    """Every score of the newest runs of these dictionaries' real labels, with the run's settings hash."""
    rows = con.execute(f"""
        SELECT l.dictionary_id, l.feature, l.explainer, l.simulator, r.settings_hash, l.method, l.value
        FROM latest_scores l JOIN score_runs r USING (run_id)
        WHERE l.dictionary_id IN ({', '.join('?' * len(dictionary_ids))}) AND l.null_kind IS NULL
        ORDER BY ALL""", dictionary_ids).fetchall()
    return [ScoreValue(*r) for r in rows]


_LABELS_EXPORT = """
    WITH beh AS (
        SELECT * FROM score_runs WHERE stage = 'behaviour'
        QUALIFY row_number() OVER (PARTITION BY source_run_id ORDER BY created_at DESC, run_id) = 1)
    SELECT l.*, r.settings_hash AS score_settings_hash, r.config AS score_settings,
           b.run_id AS behaviour_run_id, b.settings_hash AS behaviour_settings_hash,
           b.config AS behaviour_settings
    FROM labels l LEFT JOIN score_runs r ON r.run_id = l.run_id LEFT JOIN beh b ON b.source_run_id = l.run_id
    WHERE l.dictionary_id = ? ORDER BY l.feature, l.explainer, l.simulator NULLS FIRST, l.explanation_id"""


def labels_table(con: Connection, dictionary_id: int) -> Table:
    """The `labels` view of one dictionary, for export: every column (scores, `run_id`, `*_margin`, `*_p`), plus
    the settings of the simulation run the scores come from and the id and settings of the behaviour run made
    from it (the newest, as the view picks it), so every exported score names the run and settings behind it."""
    return _table(con, _LABELS_EXPORT, [dictionary_id])


def labels_columns(con: Connection) -> list[tuple[str, str]]:
    """(name, DuckDB type) of every column `labels_table` returns: the view's declared types, whatever the rows
    hold, so files written with them read together."""
    return [(r[0], r[1]) for r in con.execute(f"DESCRIBE {_LABELS_EXPORT}", [-1]).fetchall()]


def labels_arrow_schema(con: Connection) -> pa.Schema:
    """`labels_columns` as an Arrow schema, in DuckDB's own type mapping (read off an empty result)."""
    return con.sql(f"SELECT * FROM ({_LABELS_EXPORT}) LIMIT 0", params=[-1]).to_arrow_table().schema


def summary_table(con: Connection, dictionary_ids: list[int], columns: list[str]) -> Table:
    """Columns of the `dictionary_summary` view for these dictionaries."""
    return _table(con, f"SELECT {', '.join(columns)} FROM dictionary_summary "
                       f"WHERE dictionary_id IN ({', '.join('?' * len(dictionary_ids))}) ORDER BY ALL",
                  dictionary_ids)


def llm_usage(con: Connection) -> Table:
    """Calls, errors, tokens and cost per role and model."""
    return _table(con, "SELECT role, model, count(*) AS calls, count(*) FILTER (status = 'error') AS errors, "
                       "sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, "
                       "sum(cost_usd) AS cost_usd FROM llm_calls GROUP BY ALL ORDER BY ALL")




# ---------------------------------------------------------------- the schema, for the generated docs page


@dataclass(frozen=True)
class SchemaObject:
    """One table or view of the SQL contract with its columns as (name, DuckDB type, nullable)."""

    name: str
    kind: str  # 'table' or 'view'
    columns: list[tuple[str, str, bool]]


def schema_objects(con: Connection) -> list[SchemaObject]:
    """Every table and view of the main schema, by name, with its columns in order."""
    kinds = dict(con.execute(
        "SELECT table_name, CASE table_type WHEN 'VIEW' THEN 'view' ELSE 'table' END "
        "FROM information_schema.tables WHERE table_schema = 'main'").fetchall())
    cols: dict[str, list[tuple[str, str, bool]]] = {name: [] for name in kinds}
    for table, column, dtype, nullable in con.execute(
        "SELECT table_name, column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
        "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall():
        cols[table].append((column, dtype, nullable))
    return [SchemaObject(name, kinds[name], cols[name]) for name in sorted(kinds)]
