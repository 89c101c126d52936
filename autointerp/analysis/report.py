"""A static HTML report: one file, plots embedded as PNG, no server, no network.

The data come from named reads in `autointerp.store`; the page is the jinja2 template
templates/report.html.j2, rendered with autoescape on (labels and tokens are text, never markup).
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup

from autointerp import store
from autointerp.analysis.compare import describe
from autointerp.label.nulls import CONSTANT, SHUFFLED
from autointerp.store import DictionaryRow, LabelScores

SCORE_METHODS = ("correlation_top_random", "correlation_gain", "correlation_random", "explained_variance", "detection", "fuzzing",
                 "behaviour", "behaviour_loss")
SUMMARY_COLUMNS = ["dictionary_id", "init_scheme", "explainer", "simulator", "labels", "failed", "failed_scores",
                   "mean_correlation_top_random", "mean_correlation_top_random_margin", "mean_correlation_gain",
                   "mean_explained_variance",
                   "mean_detection", "mean_fuzzing", "mean_behaviour", "mean_behaviour_margin",
                   "behaviour_scored", "behaviour_resolved", "behaviour_no_effect", "behaviour_captured"]
N_CONTEXTS = 3


@dataclass(frozen=True)
class Plot:
    """A PNG as a data URI (marked safe: made here, never from stored text), or why there is none."""

    uri: Markup | None = None
    note: str = ""


@dataclass(frozen=True)
class Span:
    token: str
    alpha: float
    act: float


@dataclass(frozen=True)
class Example:
    tag: str
    feature: int
    correlation: float
    label: str
    contexts: list[list[Span]]


@dataclass(frozen=True)
class TableView:
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    did: int
    model: str
    hook: str
    kind: str
    n_features: int
    n_tokens: int | None
    compared: list[str]
    summary: TableView
    histograms: Plot
    behaviour_scatter: Plot
    baseline_scatter: Plot
    examples: list[Example] = field(default_factory=list)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if not np.isfinite(v) else f"{v:.3f}"
    return "" if v is None else str(v)


def _view(columns: list[str], rows: list[tuple[Any, ...]] | list[list[Any]]) -> TableView:
    return TableView(list(columns), [[_cell(v) for v in r] for r in rows])


def _label_kind(explainer: str) -> tuple[int, str, int, str]:
    """Sort key and kind of a summary row: each LLM explainer, then the null labels made from its labels
    (shuffled), then the constant null label, then the token-lookup baseline."""
    if explainer.startswith(SHUFFLED):
        return 0, explainer.removeprefix(SHUFFLED), 1, f"null: shuffled labels of {explainer.removeprefix(SHUFFLED)}"
    if explainer == CONSTANT:
        return 1, "", 0, "null: constant label"
    if explainer.startswith("baseline:"):
        return 2, explainer, 0, "baseline"
    return 0, explainer, 0, "LLM labels"


def _summary(table: store.Table) -> TableView:
    i = table.columns.index("explainer")
    rows = sorted(table.rows, key=lambda r: (r[0], _label_kind(r[i])[:3], tuple(map(str, r))))
    cols = [*table.columns[: i + 1], "labels_are", *table.columns[i + 1:]]
    return _view(cols, [[*r[: i + 1], _label_kind(r[i])[3], *r[i + 1:]] for r in rows])


def _png(fig: Any) -> Plot:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return Plot(uri=Markup("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histograms(series: dict[str, dict[str, list[float | None]]]) -> Plot:
    methods = [m for m in SCORE_METHODS if any(per.get(m) for per in series.values())]
    if not methods:
        return Plot(note="No scores yet.")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 2.6), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        for name, per in series.items():
            values = [v for v in per.get(m, []) if v is not None and np.isfinite(v)]
            if values:
                ax.hist(values, bins=20, alpha=0.5, label=name)
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    return _png(fig)


def _scatter(x: list[float | None], y: list[float | None], xlabel: str, ylabel: str) -> Plot:
    pts = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None
           and np.isfinite(a) and np.isfinite(b)]
    if len(pts) < 2:
        return Plot(note=f"Not enough features with both {xlabel} and {ylabel}.")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.6, 3.0))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(fig)


def spans(tokens: list[str], acts: list[float], scale: float) -> list[Span]:
    return [Span(t.replace("\n", "↵"), max(0.0, min(1.0, a / scale)) if scale > 0 else 0.0, a)
            for t, a in zip(tokens, acts, strict=True)]


def _examples(con: Any, did: int, llm: dict[int, LabelScores], n_best: int) -> list[Example]:
    ranked = sorted((f for f in llm if llm[f].values["correlation_top_random"] is not None),
                    key=lambda f: -(llm[f].values["correlation_top_random"] or 0.0))
    picks = [("best", f) for f in ranked[:n_best]] + [("worst", f) for f in ranked[-n_best:][::-1]
                                                       if f not in ranked[:n_best]]
    out = []
    for tag, f in picks:
        stats = store.feature_stats(con, did, f)
        max_act = float(stats["max_act"]) if stats else 0.0
        tops = [c for c in store.feature_contexts(con, did, f) if c.split == "explain" and c.kind == "top"]
        out.append(Example(tag, f, llm[f].values["correlation_top_random"] or 0.0, llm[f].label or "",
                           [spans(c.tokens, c.acts, max_act) for c in sorted(tops, key=lambda c: c.rank)[:N_CONTEXTS]]))
    return out


def _section(con: Any, d: DictionaryRow, controls: list[DictionaryRow], n_best: int) -> Section:
    group = [d, *controls]
    names = {g.dictionary_id: f"dictionary {g.dictionary_id} ({describe(g)})" for g in group}
    labels = store.label_scores(con, SCORE_METHODS, [g.dictionary_id for g in group])
    series: dict[str, dict[str, list[float | None]]] = {}
    llm: dict[int, LabelScores] = {}
    base: dict[int, LabelScores] = {}
    for rec in labels:
        if rec.explainer.startswith("baseline:"):
            if rec.dictionary_id == d.dictionary_id:
                base[rec.feature] = rec
            continue
        if rec.null_kind is None:
            name = names[rec.dictionary_id]
            if rec.dictionary_id == d.dictionary_id:
                llm[rec.feature] = rec
        elif rec.null_kind == "shuffled":
            name = f"{names[rec.dictionary_id]}, shuffled-label null"
        else:
            continue  # one constant label per feature: its scores are the null's floor, shown in the table
        per = series.setdefault(name, {})
        for m in SCORE_METHODS:
            per.setdefault(m, []).append(rec.values[m])
    feats = sorted(llm)
    return Section(
        did=d.dictionary_id, model=d.model, hook=d.hook, kind=d.kind, n_features=d.n_features, n_tokens=d.n_tokens,
        compared=[names[c.dictionary_id] for c in controls],
        summary=_summary(store.summary_table(con, [g.dictionary_id for g in group], SUMMARY_COLUMNS)),
        histograms=histograms(series),
        behaviour_scatter=_scatter([llm[f].values["correlation_top_random"] for f in feats],
                                   [llm[f].values["behaviour"] for f in feats], "correlation_top_random", "behaviour"),
        baseline_scatter=_scatter([base[f].values["correlation_top_random"] if f in base else None for f in feats],
                                  [llm[f].values["correlation_top_random"] for f in feats],
                                  "token-lookup baseline correlation", "LLM label correlation"),
        examples=_examples(con, d.dictionary_id, llm, n_best))


def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("autointerp", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def build(con: Any, dictionary_ids: list[int] | None = None, n_best: int = 5) -> str:
    """The report as one HTML string, read from an open (read-only) store connection."""
    dicts = [d for d in store.list_dictionaries(con) if d.status == "complete"]
    if dictionary_ids:
        dicts = [d for d in dicts if d.dictionary_id in dictionary_ids]
    sections = []
    for d in dicts:
        same_site = [c for c in dicts if c.model == d.model and c.hook == d.hook and c.dictionary_id != d.dictionary_id]
        if d.random_init and any(not c.random_init for c in same_site):
            continue  # shown beside its trained dictionary
        controls = [c for c in same_site if c.random_init]
        sections.append(_section(con, d, controls, n_best))
    usage = store.llm_usage(con)
    return environment().get_template("report.html.j2").render(
        sections=sections, usage=_view(usage.columns, usage.rows))
