"""Reads for the feature browser (`autointerp serve`): a page of a dictionary's features with one explainer's
best label each, and everything stored about one feature.

The `labels` view computes every margin and p-value of a dictionary at once (tens of seconds on a 131k-feature
dictionary); these reads ask only for what one page shows. They keep the views' rules: the newest explanation
per (feature, explainer, prompt), its newest simulation run per simulator, the newest behaviour run made from
that run. Filtering `explanations` by explainer before choosing the newest is the same choice, because the
explainer is part of the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autointerp.errors import BadInput
from autointerp.store.db import Connection

MAIN_METHOD = "correlation_top_random"  # picks an explainer's best label when a feature has several
FEATURE_SORTS = ("feature", "max_act", "mean_act", "frac_active")

_NEWEST_EXPLANATION = ("QUALIFY row_number() OVER (PARTITION BY feature, explainer, prompt_hash "
                       "ORDER BY created_at DESC, explanation_id) = 1")
_SEARCH = "AND label ILIKE $s ESCAPE '\\'"  # $s: the search text with %, _ and \\ escaped
_NEWEST_RUN = "QUALIFY row_number() OVER (PARTITION BY explanation_id, simulator ORDER BY created_at DESC, run_id) = 1"


@dataclass(frozen=True)
class FeatureQuery:
    """One request of the feature list. `sort` is a features column, 'label' or a score method; `score_min` and
    `score_max` bound the sort column when it is a score."""

    dictionary_id: int
    explainer: str | None
    search: str = ""
    sort: str = "feature"
    descending: bool = False
    score_min: float | None = None
    score_max: float | None = None
    offset: int = 0
    limit: int = 50


@dataclass(frozen=True)
class ListRow:
    feature: int
    max_act: float
    mean_act: float
    frac_active: float
    label: str | None
    explanation_id: str | None
    simulator: str | None
    run_id: str | None


@dataclass(frozen=True)
class ListPage:
    total: int
    rows: list[ListRow]


def explainers(con: Connection, dictionary_id: int) -> list[tuple[str, int]]:
    """Explainers with ok labels in a dictionary (not the nulls), most labels first, baselines last."""
    return [(r[0], r[1]) for r in con.execute(
        "SELECT explainer, count(*) AS n FROM explanations WHERE dictionary_id = ? AND status = 'ok' "
        "AND null_kind IS NULL GROUP BY explainer ORDER BY explainer LIKE 'baseline:%', n DESC, explainer",
        [dictionary_id]).fetchall()]


def score_methods(con: Connection, dictionary_id: int) -> list[str]:
    """Score methods stored for a dictionary."""
    return [r[0] for r in con.execute("SELECT DISTINCT method FROM scores WHERE dictionary_id = ? ORDER BY method",
                                      [dictionary_id]).fetchall()]


def _best_labels_sql(sort_method: str | None, paged_first: bool, search: bool = False) -> str:
    """The explainer's best label per feature (ranked by MAIN_METHOD), with its run and the sort score; with
    `paged_first`, only for the features of the CTE `page`; with `search`, only labels matching `$s`."""
    sort_join = ("LEFT JOIN (SELECT run_id, value AS sort_value FROM scores WHERE dictionary_id = $d AND method = $m) "
                 "USING (run_id)") if sort_method else ""
    return f"""
        lab AS (SELECT * FROM explanations WHERE dictionary_id = $d AND explainer = $x AND null_kind IS NULL
                {"AND feature IN (SELECT feature FROM page)" if paged_first else ""} {_NEWEST_EXPLANATION}),
        ok AS (SELECT feature, explanation_id, label FROM lab WHERE status = 'ok' {_SEARCH if search else ""}),
        run AS (SELECT explanation_id, run_id, simulator FROM score_runs
                WHERE stage = 'simulation' AND explanation_id IN (SELECT explanation_id FROM ok) {_NEWEST_RUN}),
        main AS (SELECT run_id, value AS main FROM scores WHERE dictionary_id = $d AND method = '{MAIN_METHOD}'
                 AND feature IN (SELECT feature FROM ok)),
        best AS (SELECT * FROM ok LEFT JOIN run USING (explanation_id) LEFT JOIN main USING (run_id) {sort_join}
                 QUALIFY row_number() OVER (PARTITION BY feature ORDER BY main DESC NULLS LAST, explanation_id) = 1)"""


def _order(q: FeatureQuery, sort_method: str | None) -> str:
    direction = "DESC" if q.descending else "ASC"
    if q.sort == "label":
        return f"b.label {direction} NULLS LAST, f.feature"
    if sort_method:
        return f"b.sort_value {direction} NULLS LAST, f.feature"
    return f"f.{q.sort} {direction}, f.feature"


def feature_page(con: Connection, q: FeatureQuery, methods: list[str]) -> ListPage:
    """A page of features with the explainer's best label: searched (case-insensitive substring of the
    label), bounded by a score range, sorted by a features column or a score (`methods` are the known ones)."""
    if q.sort not in FEATURE_SORTS and q.sort != "label" and q.sort not in methods:
        raise BadInput(f"cannot sort by '{q.sort}': use one of {', '.join(FEATURE_SORTS + ('label', *methods))}")
    sort_method = None if q.sort in FEATURE_SORTS or q.sort == "label" else q.sort
    where = ["f.dictionary_id = $d"]
    params: dict[str, Any] = {"d": q.dictionary_id, "x": q.explainer or "", "lim": q.limit, "off": q.offset}
    if sort_method:
        params["m"] = sort_method
        where.append("TRUE")  # a score sort needs every label's score
    if q.sort == "label":
        where.append("TRUE")  # a label sort needs every feature's best label
    if q.search:
        where.append("b.label IS NOT NULL")
        params["s"] = "%" + q.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    for name, op, bound in (("lo", ">=", q.score_min), ("hi", "<=", q.score_max)):
        if bound is not None:
            if not sort_method:
                raise BadInput("a score range needs the list sorted by that score")
            where.append(f"b.sort_value {op} ${name}")
            params[name] = bound
    if len(where) == 1:  # ordered by a features column alone: page the features first, then label that page
        sql = f"""WITH page AS (SELECT * FROM features f WHERE f.dictionary_id = $d
                                ORDER BY {_order(q, None)} LIMIT $lim OFFSET $off), {_best_labels_sql(None, True)}
            SELECT f.feature, f.max_act, f.mean_act, f.frac_active, b.label, b.explanation_id, b.simulator, b.run_id,
                   (SELECT count(*) FROM features WHERE dictionary_id = $d) AS total
            FROM page f LEFT JOIN best b USING (feature) ORDER BY {_order(q, None)}"""
    else:
        sql = f"""WITH {_best_labels_sql(sort_method, False, bool(q.search))}
            SELECT f.feature, f.max_act, f.mean_act, f.frac_active, b.label, b.explanation_id, b.simulator,
                   b.run_id, count(*) OVER () AS total
            FROM features f LEFT JOIN best b USING (feature) WHERE {' AND '.join(where)}
            ORDER BY {_order(q, sort_method)} LIMIT $lim OFFSET $off"""
    rows = con.execute(sql, params).fetchall()
    if not rows:
        total = 0 if q.offset == 0 else feature_page(con, FeatureQuery(**{**q.__dict__, "offset": 0}), methods).total
        return ListPage(total, [])
    return ListPage(int(rows[0][-1]), [ListRow(*r[:-1]) for r in rows])


@dataclass(frozen=True)
class RunScore:
    """One score of a run: the simulation run itself, or (stage 'behaviour') the newest behaviour run made
    from it, reported under the simulation run's id."""

    run_id: str
    method: str
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n_examples: int
    note: str | None


def run_scores(con: Connection, dictionary_id: int, features: list[int], run_ids: list[str]) -> list[RunScore]:
    """Scores of these simulation runs (of these features) and of the newest behaviour run made from each.
    The features' range bounds the scans: DuckDB skips row groups outside it (rows are written in batches of
    neighbouring features); `list_contains` filters during the scan, faster here than a join."""
    if not run_ids:
        return []
    bounds = {"d": dictionary_id, "lo": min(features), "hi": max(features)}
    source = dict(con.execute("""
        SELECT run_id, source_run_id FROM score_runs WHERE stage = 'behaviour' AND dictionary_id = $d
        AND feature BETWEEN $lo AND $hi AND list_contains($ids, source_run_id)
        QUALIFY row_number() OVER (PARTITION BY source_run_id ORDER BY created_at DESC, run_id) = 1""",
                              {**bounds, "ids": run_ids}).fetchall())
    rows = con.execute("""
        SELECT run_id, method, value, ci_low, ci_high, n_examples, note FROM scores
        WHERE dictionary_id = $d AND feature BETWEEN $lo AND $hi AND list_contains($ids, run_id)""",
                       {**bounds, "ids": run_ids + list(source)}).fetchall()
    out = [RunScore(source.get(r[0], r[0]), *r[1:]) for r in rows]
    return sorted(out, key=lambda s: (s.run_id, s.method))


def null_values(con: Connection, dictionary_id: int, explainer: str) -> dict[tuple[str, str], list[float]]:
    """Scores of the shuffled-label nulls made from an explainer's labels, per (simulator, method)."""
    rows = con.execute(f"""
        WITH e AS (SELECT * FROM explanations WHERE dictionary_id = $d AND null_kind = 'shuffled' AND null_of = $x
                   {_NEWEST_EXPLANATION}),
        run AS (SELECT explanation_id, run_id, simulator FROM score_runs WHERE stage = 'simulation'
                AND explanation_id IN (SELECT explanation_id FROM e WHERE status = 'ok') {_NEWEST_RUN})
        SELECT run.simulator, s.method, s.value FROM run JOIN scores s USING (run_id) WHERE s.value IS NOT NULL
        UNION ALL
        SELECT run.simulator, s.method, s.value FROM run
        JOIN (SELECT * FROM score_runs WHERE stage = 'behaviour' AND source_run_id IN (SELECT run_id FROM run)
              QUALIFY row_number() OVER (PARTITION BY source_run_id ORDER BY created_at DESC, run_id) = 1) b
          ON b.source_run_id = run.run_id
        JOIN scores s ON s.run_id = b.run_id WHERE s.value IS NOT NULL""",
                       {"d": dictionary_id, "x": explainer}).fetchall()
    out: dict[tuple[str, str], list[float]] = {}
    for sim, method, value in rows:
        out.setdefault((sim, method), []).append(float(value))
    return out


@dataclass(frozen=True)
class LabelRun:
    """One label of a feature (real, baseline, imported or null; ok or failed) and, per simulator, its newest
    simulation run and the newest behaviour run made from it, with their settings."""

    explanation_id: str
    explainer: str
    label: str | None
    status: str
    error: str | None
    null_kind: str | None
    null_of: str | None
    label_feature: int | None
    prompt_hash: str
    config: str | None
    created_at: Any
    run_id: str | None
    simulator: str | None
    run_status: str | None
    run_error: str | None
    run_config: str | None
    behaviour_config: str | None


def feature_labels(con: Connection, dictionary_id: int, feature: int) -> list[LabelRun]:
    """Every newest label of one feature with its newest runs: real labels first, then the nulls."""
    rows = con.execute(f"""
        WITH e AS (SELECT * FROM explanations WHERE dictionary_id = $d AND feature = $f {_NEWEST_EXPLANATION}),
        run AS (SELECT * FROM score_runs WHERE stage = 'simulation' AND dictionary_id = $d AND feature = $f
                AND explanation_id IN (SELECT explanation_id FROM e) {_NEWEST_RUN}),
        beh AS (SELECT source_run_id, config FROM score_runs WHERE stage = 'behaviour' AND dictionary_id = $d
                AND feature = $f AND source_run_id IN (SELECT run_id FROM run)
                QUALIFY row_number() OVER (PARTITION BY source_run_id ORDER BY created_at DESC, run_id) = 1)
        SELECT e.explanation_id, e.explainer, e.label, e.status, e.error, e.null_kind, e.null_of, e.label_feature,
               e.prompt_hash, CAST(e.config AS VARCHAR), e.created_at, run.run_id, run.simulator, run.status,
               run.error, CAST(run.config AS VARCHAR), CAST(beh.config AS VARCHAR)
        FROM e LEFT JOIN run USING (explanation_id) LEFT JOIN beh ON beh.source_run_id = run.run_id
        ORDER BY e.null_kind NULLS FIRST, e.explainer LIKE 'baseline:%', e.explainer, run.simulator""",
                       {"d": dictionary_id, "f": feature}).fetchall()
    return [LabelRun(*r) for r in rows]


def feature_bounds(con: Connection, dictionary_id: int) -> tuple[int, int] | None:
    """The lowest and highest feature index stored for a dictionary (None when it has none)."""
    row = con.execute("SELECT min(feature), max(feature) FROM features WHERE dictionary_id = ?",
                      [dictionary_id]).fetchone()
    return None if row is None or row[0] is None else (int(row[0]), int(row[1]))
