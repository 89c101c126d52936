"""What the browser's pages show, built from store reads: pure functions returning records for the templates
(which escape every string: labels and tokens are text, never markup)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from autointerp.analysis.compare import describe
from autointerp.analysis.report import Span, spans
from autointerp.label.import_stage import HASH_PREFIX as IMPORTED
from autointerp.label.nulls import CONSTANT, SHUFFLED
from autointerp.label.probes import outcome
from autointerp.records import AgentStep, Context
from autointerp.store import DictionaryRow
from autointerp.store.browse import LabelRun, RunScore

# Score columns of the list, in this order, where the dictionary has them.
LIST_METHODS = ("correlation_top_random", "correlation_gain", "detection", "fuzzing", "behaviour")
# Scores of a label, compared with the shuffled-label null (the methods the `labels` view gives margins); the
# others (ablation_effect: the feature's own effect, the *_random controls) have no label-level null.
MARGIN_METHODS = ("correlation_top_random", "correlation_gain", "correlation_random", "explained_variance",
                  "detection", "fuzzing", "behaviour")
CONTEXT_KINDS = (("top", "top activations"), ("quantile", "quantiles"), ("random", "random contexts"))


@dataclass(frozen=True)
class Score:
    """A score with its CI and its zero: the margin over the mean of the shuffled-label null, and
    p = (1 + #nulls >= value) / (1 + #nulls), as the `labels` view defines them."""

    method: str
    value: float | None
    ci: tuple[float, float] | None
    margin: float | None
    p: float | None
    n_null: int
    note: str | None = None


def score(s: RunScore | None, method: str, nulls: list[float]) -> Score:
    if s is None:
        return Score(method, None, None, None, None, len(nulls))
    ci = (s.ci_low, s.ci_high) if s.ci_low is not None and s.ci_high is not None else None
    if s.value is None or not nulls or method not in MARGIN_METHODS:
        return Score(method, s.value, ci, None, None, len(nulls), s.note)
    margin = s.value - sum(nulls) / len(nulls)
    p = (1 + sum(v >= s.value for v in nulls)) / (1 + len(nulls))
    return Score(method, s.value, ci, margin, p, len(nulls), s.note)


def by_run(scores: list[RunScore]) -> dict[str, dict[str, RunScore]]:
    out: dict[str, dict[str, RunScore]] = {}
    for s in scores:
        out.setdefault(s.run_id, {})[s.method] = s
    return out


def fmt(v: float | None, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


@dataclass(frozen=True)
class Bar:
    x: float
    height: float
    title: str


def histogram(bin_width: float, counts: list[int], width: float = 400.0, height: float = 80.0) -> list[Bar]:
    """SVG bars of the positive-activation histogram (bin i is [i*w, (i+1)*w)), on a log scale."""
    top = max((math.log1p(c) for c in counts), default=0.0) or 1.0
    step = width / max(len(counts), 1)
    return [Bar(i * step, height * math.log1p(c) / top,
                f"[{i * bin_width:.3g}, {(i + 1) * bin_width:.3g}): {c:,} tokens") for i, c in enumerate(counts)]


@dataclass(frozen=True)
class ContextView:
    tag: str
    split: str
    max_act: float
    spans: list[Span]


@dataclass(frozen=True)
class ContextGroup:
    title: str
    contexts: list[ContextView]


def context_groups(contexts: list[Context], max_act: float) -> list[ContextGroup]:
    """Top, quantile (highest bin first) and random contexts, each marked with its split."""
    groups = []
    for kind, title in CONTEXT_KINDS:
        chosen = sorted((c for c in contexts if c.kind == kind),
                        key=lambda c: (-(c.quantile or 0), c.split, c.rank))
        if chosen:
            groups.append(ContextGroup(title, [
                ContextView(f"q{c.quantile}" if c.quantile is not None else f"#{c.rank}", c.split, c.max_act,
                            spans(c.tokens, c.acts, max_act)) for c in chosen]))
    return groups


def label_kind(lab: LabelRun) -> str:
    if lab.null_kind == "shuffled" or lab.explainer.startswith(SHUFFLED):
        return (f"null: a label of {lab.null_of} written for feature {lab.label_feature}"
                if lab.label_feature is not None else f"null: a shuffled label of {lab.null_of}")
    if lab.null_kind == "constant" or lab.explainer == CONSTANT:
        return "null: constant label"
    if lab.prompt_hash.startswith(IMPORTED):
        return "imported label"
    return "baseline" if lab.explainer.startswith("baseline:") else "label"


@dataclass
class LabelView:
    explainer: str
    kind: str
    label: str | None
    status: str
    error: str | None
    simulator: str | None
    run_status: str | None
    run_error: str | None
    scores: list[Score] = field(default_factory=list)
    settings: str = ""


def _settings(lab: LabelRun) -> str:
    parts = {"prompt_hash": lab.prompt_hash, "explain": lab.config, "simulation run": lab.run_config,
             "behaviour run": lab.behaviour_config}
    out = {}
    for k, v in parts.items():
        if v is None:
            continue
        try:
            out[k] = json.loads(v) if k != "prompt_hash" else v
        except ValueError:
            out[k] = v
    return json.dumps(out, sort_keys=True, default=str)


def label_views(labels: list[LabelRun], scores: dict[str, dict[str, RunScore]],
                nulls: dict[str, dict[tuple[str, str], list[float]]]) -> list[LabelView]:
    """Every label with every score; real labels get their margins over their explainer's shuffled null."""
    out = []
    for lab in labels:
        view = LabelView(lab.explainer, label_kind(lab), lab.label, lab.status, lab.error, lab.simulator,
                         lab.run_status, lab.run_error, settings=_settings(lab))
        run = scores.get(lab.run_id or "", {})
        own = nulls.get(lab.explainer, {}) if lab.null_kind is None else {}
        view.scores = [score(run[m], m, own.get((lab.simulator or "", m), [])) for m in sorted(run)]
        out.append(view)
    return out


def paired(d: DictionaryRow, dictionaries: list[DictionaryRow]) -> list[DictionaryRow]:
    """The dictionaries paired with `d`: the random-init controls of a trained one, or the trained one of a
    control (same model, hook, kind and width)."""
    return [c for c in dictionaries if c.dictionary_id != d.dictionary_id and c.model == d.model
            and c.hook == d.hook and c.kind == d.kind and c.n_features == d.n_features
            and c.random_init != d.random_init and c.status == "complete"]


def dictionary_name(d: DictionaryRow) -> str:
    return f"dictionary {d.dictionary_id}: {d.model} {d.hook} ({describe(d)})"


def query_string(params: dict[str, Any], **changes: Any) -> str:
    """The list's query string with some parameters changed (None drops one)."""
    from urllib.parse import urlencode

    merged = {**params, **changes}
    return urlencode({k: v for k, v in merged.items() if v not in (None, "")})


@dataclass(frozen=True)
class ProbeView:
    expect: bool
    outcome: str  # hit, miss, false alarm or quiet
    cut: int
    spans: list[Span]


@dataclass(frozen=True)
class StepView:
    run: str  # strategy, explainer and settings: a feature may have several runs
    step: AgentStep
    probes: list[ProbeView]


def agent_step_views(steps: list[AgentStep], max_act: float) -> list[StepView]:
    """A feature's best-of-k / agent steps in order, probes with the subject's real activations shaded
    against the feature's max (what `show` prints)."""
    views = []
    for s in steps:
        probes = [ProbeView(bool(r["expect"]), outcome(r, max_act), int(r.get("cut") or 0),
                            spans(r["tokens"], r["acts"], max_act))
                  for r in (s.activations or [])] if s.kind == "probe" else []
        views.append(StepView(f"{s.strategy}: {s.explainer} (settings {s.settings_hash})", s, probes))
    return views
