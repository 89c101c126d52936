"""The browser's web app (Starlette): each request opens the database read-only, reads what its page shows
through `autointerp.store`, closes it, then renders a Jinja2 template with autoescape on. A labelling job
writing the same file waits at most for one request's reads; the browser waits for the job's writes."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from autointerp import store
from autointerp.analysis import report
from autointerp.analysis.serve import views
from autointerp.errors import AutointerpError, BadInput, LockTimeout, is_bad_input
from autointerp.store import browse


class NotFound(AutointerpError):
    """What a page asks for is not in the database (HTTP 404)."""


PAGE_SIZE = 50
REQUEST_LOCK_WAIT_S = 30.0  # how long a request waits for a writer (a label run) to let go of the file


class FileMemo:
    """Reads that change only when the database file does (the shuffled-label nulls of a dictionary), kept
    while the file and its write-ahead log keep their size and modification time; any write drops them all."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.state: tuple[tuple[int, int] | None, ...] | None = None
        self.values: dict[Any, Any] = {}

    def _state(self) -> tuple[tuple[int, int] | None, ...]:
        out: list[tuple[int, int] | None] = []
        for path in (self.db, self.db.with_name(self.db.name + ".wal")):
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append(None)
        return tuple(out)

    def check(self) -> None:
        """Call before a request opens the file: forgets everything if the file changed."""
        state = self._state()
        if state != self.state:
            self.state, self.values = state, {}

    def get(self, key: Any, read: Callable[[], Any]) -> Any:
        if key not in self.values:
            self.values[key] = read()
        return self.values[key]


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadInput(f"'{name}' must be a whole number, not '{raw}'") from None


def _float(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name, "").strip()
    if raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadInput(f"'{name}' must be a number, not '{raw}'") from None


def _default_dictionary(dicts: list[store.DictionaryRow]) -> int:
    complete = [d for d in dicts if d.status == "complete"]
    if not complete:
        raise NotFound("no complete dictionary in this database; run `autointerp collect` first")
    trained = [d for d in complete if not d.random_init]
    return (trained or complete)[-1].dictionary_id


def _list_context(con: Any, request: Request, memo: FileMemo) -> dict[str, Any]:
    dicts = store.list_dictionaries(con)
    did = _int(request, "dictionary") or _default_dictionary(dicts)
    d = store.get_dictionary(con, did)
    explainers = browse.explainers(con, did)
    methods = browse.score_methods(con, did)
    explainer = request.query_params.get("explainer") or (explainers[0][0] if explainers else None)
    page = max(_int(request, "page", 1) or 1, 1)
    q = browse.FeatureQuery(did, explainer, request.query_params.get("q", "").strip(),
                            request.query_params.get("sort", "feature"), request.query_params.get("desc") == "1",
                            _float(request, "min"), _float(request, "max"), (page - 1) * PAGE_SIZE, PAGE_SIZE)
    listing = browse.feature_page(con, q, methods)
    runs = [r.run_id for r in listing.rows if r.run_id]
    scores = views.by_run(browse.run_scores(con, did, [r.feature for r in listing.rows], runs))
    nulls = memo.get(("nulls", did, explainer), functools.partial(browse.null_values, con, did, explainer)
                     ) if explainer else {}
    columns = [m for m in views.LIST_METHODS if m in methods]
    rows = [(r, [views.score(scores.get(r.run_id or "", {}).get(m), m, nulls.get((r.simulator or "", m), []))
                 for m in columns]) for r in listing.rows]
    params = {"dictionary": did, "explainer": explainer, "q": q.search, "sort": q.sort, "desc": "1" if q.descending
              else None, "min": request.query_params.get("min"), "max": request.query_params.get("max")}
    return {"d": d, "name": views.dictionary_name(d), "dictionaries": [(x.dictionary_id, views.dictionary_name(x))
            for x in dicts if x.status == "complete"], "explainers": explainers, "explainer": explainer,
            "methods": methods, "columns": columns, "rows": rows, "total": listing.total, "page": page,
            "pages": max(1, -(-listing.total // PAGE_SIZE)), "q": q, "params": params}


def _feature_context(con: Any, did: int, feature: int, memo: FileMemo) -> dict[str, Any]:
    d = store.get_dictionary(con, did)
    stats = store.feature_stats(con, did, feature)
    if stats is None:
        raise NotFound(f"dictionary {did} has no feature {feature} ({d.n_features} features)")
    labels = browse.feature_labels(con, did, feature)
    runs = [lab.run_id for lab in labels if lab.run_id]
    scores = views.by_run(browse.run_scores(con, did, [feature], runs))
    nulls = {x: memo.get(("nulls", did, x), functools.partial(browse.null_values, con, did, x))
             for x in {lab.explainer for lab in labels if lab.null_kind is None}}
    controls = []
    for c in views.paired(d, store.list_dictionaries(con)):
        c_labels = [lab for lab in browse.feature_labels(con, c.dictionary_id, feature) if lab.null_kind is None]
        c_scores = views.by_run(browse.run_scores(con, c.dictionary_id, [feature], [
            lab.run_id for lab in c_labels if lab.run_id]))
        controls.append((c, store.feature_stats(con, c.dictionary_id, feature),
                         views.label_views(c_labels, c_scores, {})))
    bounds = browse.feature_bounds(con, did) or (feature, feature)
    max_act = float(stats["max_act"]) or 1.0
    return {"d": d, "name": views.dictionary_name(d), "feature": feature, "stats": stats,
            "bars": views.histogram(stats["hist_bin_width"], list(stats["hist_counts"])),
            "groups": views.context_groups(store.feature_contexts(con, did, feature), max_act),
            "steps": views.agent_step_views(store.agent_steps(con, did, feature), max_act),
            "labels": views.label_views(labels, scores, nulls), "controls": controls,
            "prev": feature - 1 if feature > bounds[0] else None, "next": feature + 1 if feature < bounds[1] else None}


def create_app(db: str | Path) -> Starlette:
    """The browser over the database at `db` (opened read-only by each request)."""
    db = Path(db)
    env = report.environment()
    env.globals.update(fmt=views.fmt, qs=views.query_string)
    memo = FileMemo(db)

    def page(template: str, build: Callable[[Any], dict[str, Any]]) -> Response:
        started = time.perf_counter()
        memo.check()
        try:
            with store.open_store(db, read_only=True, wait_s=REQUEST_LOCK_WAIT_S) as con:
                context = build(con)
        except AutointerpError as exc:
            status = (503 if isinstance(exc, LockTimeout) else 400 if is_bad_input(exc)
                      else 404 if isinstance(exc, NotFound) else 500)
            return HTMLResponse(env.get_template("serve/error.html.j2").render(message=str(exc), db=db), status)
        context.update(db=db, elapsed_ms=1000 * (time.perf_counter() - started))
        return HTMLResponse(env.get_template(template).render(**context))

    def features(request: Request) -> Response:
        name = "serve/rows.html.j2" if request.query_params.get("fragment") else "serve/list.html.j2"
        return page(name, lambda con: _list_context(con, request, memo))

    def feature(request: Request) -> Response:
        did, f = int(request.path_params["did"]), int(request.path_params["feature"])
        return page("serve/feature.html.j2", lambda con: _feature_context(con, did, f, memo))

    def sql(request: Request) -> Response:
        text = request.query_params.get("q", "").strip()

        def build(con: Any) -> dict[str, Any]:
            columns, rows = store.user_query(con, text) if text else ([], [])
            return {"sql": text, "columns": columns, "rows": rows[:1000], "n_rows": len(rows)}

        return page("serve/sql.html.j2", build)

    def compare(request: Request) -> Response:
        return page("serve/compare.html.j2", lambda con: _compare_context(con, request))

    def full_report(request: Request) -> Response:
        return page("serve/raw.html.j2", lambda con: {"html": report.build(con)})

    return Starlette(routes=[Route("/", features), Route("/feature/{did:int}/{feature:int}", feature),
                             Route("/sql", sql), Route("/compare", compare), Route("/report", full_report)])


def _compare_context(con: Any, request: Request) -> dict[str, Any]:
    from autointerp.analysis import compare as cmp

    dicts = [d for d in store.list_dictionaries(con) if d.status == "complete"]
    a, b = _int(request, "a"), _int(request, "b")
    if a is None or b is None:
        trained = next((d for d in dicts if not d.random_init), None)
        control = views.paired(trained, dicts)[0] if trained and views.paired(trained, dicts) else None
        a, b = (trained.dictionary_id, control.dictionary_id) if trained and control else (a, b)
    context: dict[str, Any] = {"dictionaries": [(d.dictionary_id, views.dictionary_name(d)) for d in dicts],
                               "a": a, "b": b, "columns": [], "rows": []}
    if a is not None and b is not None:
        da, dbb = store.get_dictionary(con, a), store.get_dictionary(con, b)
        values = store.score_values(con, [a, b])
        context["columns"], context["rows"] = cmp.compare_table(values, a, b) if values else ([], [])
        context["names"] = (views.dictionary_name(da), views.dictionary_name(dbb))
        series: dict[str, dict[str, list[float | None]]] = {}
        for v in values:
            series.setdefault(f"{'A' if v.dictionary_id == a else 'B'}: {v.explainer}", {}).setdefault(
                v.method, []).append(v.value)
        context["plot"] = report.histograms(series) if values else None
    return context
