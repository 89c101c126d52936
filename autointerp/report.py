"""A static HTML report: one file, plots embedded as PNG, no server, no network."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

SCORE_METHODS = ("correlation_top_random", "correlation_random", "explained_variance", "detection", "fuzzing",
                 "behaviour", "behaviour_kl")


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" class="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(columns: list[str], rows: list[tuple], cls: str = "") -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if not np.isfinite(v) else f"{v:.3f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _highlight(tokens: list[str], acts: list[float], scale: float) -> str:
    spans = []
    for t, a in zip(tokens, acts, strict=True):
        alpha = max(0.0, min(1.0, a / scale)) if scale > 0 else 0.0
        spans.append(f'<span style="background: rgba(34,139,34,{alpha:.2f})" title="{a:.3f}">'
                     f"{html.escape(t).replace(chr(10), '↵')}</span>")
    return '<div class="ctx">' + "".join(spans) + "</div>"


def _histograms(scores: dict[int, dict[str, list[float]]], names: dict[int, str]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in SCORE_METHODS if any(scores[d].get(m) for d in scores)]
    if not methods:
        return "<p>No scores yet.</p>"
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 2.6), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        for d, per in scores.items():
            values = [v for v in per.get(m, []) if v is not None and np.isfinite(v)]
            if values:
                ax.hist(values, bins=20, alpha=0.55, label=names[d])
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    return _png(fig)


def _scatter(x: list[float | None], y: list[float | None], xlabel: str, ylabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None
           and np.isfinite(a) and np.isfinite(b)]
    if len(pts) < 2:
        return f"<p>Not enough features with both {html.escape(xlabel)} and {html.escape(ylabel)}.</p>"
    fig, ax = plt.subplots(figsize=(3.6, 3.0))
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=10, alpha=0.7)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(fig)


def build(con: Any, dictionary_ids: list[int] | None = None, n_best: int = 5) -> str:
    """The report as one HTML string, read from an open (read-only) store connection."""
    dicts = con.execute("SELECT dictionary_id, model, hook, kind, random_init, seed, n_tokens, n_features "
                        "FROM dictionaries WHERE status = 'complete' ORDER BY dictionary_id").fetchall()
    if dictionary_ids:
        dicts = [d for d in dicts if d[0] in dictionary_ids]
    sections = []
    for did, model, hook, kind, random_init, _seed, n_tokens, n_features in dicts:
        if random_init and any(not d[4] and d[1] == model and d[2] == hook for d in dicts):
            continue  # shown beside its trained dictionary
        group = [did] + [d[0] for d in dicts if d[4] and d[1] == model and d[2] == hook and d[0] != did]
        names = {g: f"dictionary {g}" + (" (random init)" if g != did or random_init else " (trained)") for g in group}
        rows = con.execute(
            f"SELECT dictionary_id, explainer, feature, {', '.join(SCORE_METHODS)}, label FROM labels "
            f"WHERE dictionary_id IN ({', '.join('?' * len(group))}) AND status = 'ok'", group).fetchall()
        scores: dict[int, dict[str, list[float]]] = {g: {} for g in group}
        llm: dict[int, dict[str, Any]] = {}
        base: dict[int, dict[str, Any]] = {}
        for r in rows:
            rec = dict(zip(("dictionary_id", "explainer", "feature", *SCORE_METHODS, "label"), r, strict=True))
            if not rec["explainer"].startswith("baseline:"):
                for m in SCORE_METHODS:
                    scores[rec["dictionary_id"]].setdefault(m, []).append(rec[m])
                if rec["dictionary_id"] == did:
                    llm[rec["feature"]] = rec
            elif rec["dictionary_id"] == did:
                base[rec["feature"]] = rec
        summary_cols = ["dictionary_id", "explainer", "labels", "failed", "mean_correlation_top_random",
                        "mean_explained_variance", "mean_detection", "mean_fuzzing", "mean_behaviour",
                        "behaviour_captured"]
        summary = con.execute(f"SELECT {', '.join(summary_cols)} FROM dictionary_summary "
                              f"WHERE dictionary_id IN ({', '.join('?' * len(group))}) ORDER BY 1, 2", group).fetchall()
        ranked = sorted((f for f in llm if llm[f]["correlation_top_random"] is not None),
                        key=lambda f: -llm[f]["correlation_top_random"])
        picks = [("best", f) for f in ranked[:n_best]] + [("worst", f) for f in ranked[-n_best:][::-1]
                                                           if f not in ranked[:n_best]]
        examples = []
        for tag, f in picks:
            max_act = con.execute("SELECT max_act FROM features WHERE dictionary_id = ? AND feature = ?",
                                  [did, f]).fetchone()[0]
            ctxs = con.execute("SELECT tokens, acts FROM contexts WHERE dictionary_id = ? AND feature = ? "
                               "AND split = 'explain' AND kind = 'top' ORDER BY rank LIMIT 3", [did, f]).fetchall()
            examples.append(
                f'<div class="feature"><h4>{tag}: feature {f}, correlation '
                f'{llm[f]["correlation_top_random"]:.3f}: {html.escape(llm[f]["label"] or "")}</h4>'
                + "".join(_highlight(t, a, max_act) for t, a in ctxs) + "</div>")
        feats = sorted(llm)
        sections.append(
            f"<section><h2>{html.escape(model)} · {html.escape(hook)} · {kind} · dictionary {did}</h2>"
            f"<p>{n_features:,} features over {n_tokens:,} tokens; compared with: "
            f"{', '.join(names[g] for g in group[1:]) or 'no random-init control yet'}.</p>"
            + _table(summary_cols, summary, "summary")
            + "<h3>Score distributions, LLM labels (trained beside control)</h3>" + _histograms(scores, names)
            + '<div class="row">'
            + "<div><h3>Correlation against behaviour</h3>"
            + _scatter([llm[f]["correlation_top_random"] for f in feats], [llm[f]["behaviour"] for f in feats],
                       "correlation_top_random", "behaviour") + "</div>"
            + "<div><h3>Baseline against LLM labels</h3>"
            + _scatter([base[f]["correlation_top_random"] if f in base else None for f in feats],
                       [llm[f]["correlation_top_random"] for f in feats],
                       "token-lookup baseline correlation", "LLM label correlation") + "</div></div>"
            + "<h3>Best and worst features</h3>" + ("".join(examples) or "<p>No scored LLM labels yet.</p>")
            + "</section>")
    cost = con.execute("SELECT role, model, count(*) AS calls, count(*) FILTER (status = 'error') AS errors, "
                       "sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) FROM llm_calls "
                       "GROUP BY ALL ORDER BY ALL").fetchall()
    cost_html = _table(["role", "model", "calls", "errors", "prompt_tokens", "completion_tokens", "cost_usd"], cost,
                       "cost")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:2px 6px;font-size:12px}.ctx{font-family:monospace;font-size:12px;"
             "white-space:pre-wrap;margin:4px 0;padding:4px;border:1px solid #eee}.row{display:flex;gap:2em}"
             ".plot{max-width:100%}")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>autointerp report</title>"
            f"<style>{style}</style></head><body><h1>autointerp report</h1>"
            + ("".join(sections) or "<p>No complete dictionary.</p>")
            + "<h2>LLM cost and tokens</h2>" + cost_html + "</body></html>")
