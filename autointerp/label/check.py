"""`check-llm`: explain and score a planted dictionary, whose features' true descriptions are known, and say
whether the simulator follows labels and whether the explainer finds the rules.

The true description, another rule's description (wrong) and a placebo are stored as labels of explainers
TRUE, WRONG and PLACEBO and scored by the label stage like any label, beside the explainer model's own label
and the constant reference, on the same held-out contexts. Each label's `correlation_gain` (its correlation
minus the reference's) is averaged over features with a bootstrap 95% CI:
- label-following: the true description's gain, beside the wrong rule's and the placebo's;
- recovery: the LLM label's mean gain as a share of the true description's (same simulator and contexts);
- judges: detection and fuzzing accuracy of the true description and of the wrong one.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autointerp import store
from autointerp.config import LabelConfig
from autointerp.label import scoring
from autointerp.label.stage import LLMSession, Progress, label_stage
from autointerp.records import Explanation, ProgressFn

TRUE, WRONG, PLACEBO = "planted:true", "planted:wrong", "planted:placebo"
PLACEBO_LABEL = "mentions of fruit such as apples and bananas"
PROMPT_HASH = "planted-v1"
# The default run: a spread of rules that fits 10 minutes on 2 cores with the embedded default (12 took 13 min at
# load 2-4, ~62 s a feature: five labels of 8 contexts each read by the 135M model at ~100 prompt tokens/s).
DEFAULT_FEATURES = 8
# Verdict thresholds, fixed before any measurement: a gain of 0.3 is a clearly visible rule.
FOLLOWS_GAIN = 0.3
FINDS_SHARE = 0.7


@dataclass(frozen=True)
class Estimate:
    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "no scores (n=0)"
        if math.isnan(self.mean):
            return f"undefined (n={self.n})"
        ci = (f"[{self.low:+.3f}, {self.high:+.3f}]" if math.isfinite(self.low) and math.isfinite(self.high)
              else "[CI undefined]")
        return f"{self.mean:+.3f} {ci} (n={self.n})"


@dataclass
class CheckReport:
    dictionary_id: int
    simulator: str
    explainer: str
    features: list[int]
    subset: bool  # the default spread of rules, not every rule
    following: dict[str, Estimate] = field(default_factory=dict)  # label kind -> correlation_gain
    true_minus_wrong: Estimate | None = None
    recovery: Estimate | None = None
    recovery_by_kind: dict[str, Estimate] = field(default_factory=dict)
    judges: dict[str, Estimate] = field(default_factory=dict)  # "detection true" ... -> accuracy
    usage: list[store.RoleUsage] = field(default_factory=list)
    seconds: float = 0.0
    progress: Progress | None = None
    verdicts: dict[str, str] = field(default_factory=dict)


def pick_features(firing: list[int], feature_range: tuple[int, int] | None, full: bool) -> list[int]:
    """Every firing feature in the range (or all with `full`); else a spread of DEFAULT_FEATURES of them."""
    chosen = [f for f in firing if feature_range is None or feature_range[0] <= f < feature_range[1]]
    if full or feature_range is not None or len(chosen) <= DEFAULT_FEATURES:
        return chosen
    idx = np.linspace(0, len(chosen) - 1, DEFAULT_FEATURES).round().astype(int)
    return [chosen[i] for i in sorted(set(idx.tolist()))]


def truth_labels(db: str | Path, dictionary_id: int, features: list[int]) -> int:
    """Store the true, wrong and placebo labels of `features` that are missing; returns how many were added."""
    with store.open_store(db, wait_s=600) as con:
        truth = store.planted_truth(con, dictionary_id)
        have = {x: store.explained_features(con, dictionary_id, x, PROMPT_HASH) for x in (TRUE, WRONG, PLACEBO)}
    by_feature = {t.feature: i for i, t in enumerate(truth)}
    new = []
    for f in features:
        i = by_feature[f]
        # Half the rule list away: a rule of another kind, not a near neighbour of the true one.
        wrong = truth[(i + len(truth) // 2) % len(truth)]
        for explainer, label in ((TRUE, truth[i].description), (WRONG, wrong.description), (PLACEBO, PLACEBO_LABEL)):
            if f not in have[explainer]:
                new.append(Explanation(explanation_id=str(uuid.uuid4()), dictionary_id=dictionary_id, feature=f,
                                       label=label, explainer=explainer, prompt_hash=PROMPT_HASH, status="ok",
                                       config=json.dumps({"planted_rule": truth[i].name, "label_of": (
                                           wrong.name if explainer == WRONG else None)})))
    if new:
        with store.open_store(db, wait_s=600) as con:
            store.write_bundles(con, [store.Bundle(explanations=new)])
    return len(new)


def _mean_ci(values: list[float], n_boot: int) -> Estimate:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    if len(v) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    low, high = scoring.bootstrap(lambda idx: float(v[idx].mean()), len(v), n_boot)
    return Estimate(float(v.mean()), low, high, len(v))


def _ratio_ci(num: list[float], den: list[float], n_boot: int) -> Estimate:
    """mean(num) / mean(den) over paired features, resampled together; undefined (NaN) unless the simulator
    visibly follows the true descriptions: mean(den) at least FOLLOWS_GAIN and, over several features, its CI above
    0. A share of a gain near 0 can be anything (two true gains of +0.01 and +0.02 gave a "recovery" of -0.42
    [-157, -0.09])."""
    a, b = np.asarray(num, float), np.asarray(den, float)
    def stat(idx: list[int]) -> float:
        d = b[idx].mean()
        return float(a[idx].mean() / d) if d > 0 else math.nan
    if len(a) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    den_est = _mean_ci(list(b), n_boot)
    if not (den_est.mean >= FOLLOWS_GAIN and (len(b) == 1 or den_est.low > 0)):
        return Estimate(math.nan, math.nan, math.nan, len(a))
    low, high = scoring.bootstrap(stat, len(a), n_boot)
    return Estimate(stat(list(range(len(a)))), low, high, len(a))


def _verdicts(r: CheckReport) -> dict[str, str]:
    true, diff, rec = r.following.get("true"), r.true_minus_wrong, r.recovery
    follows = bool(true and diff and true.mean >= FOLLOWS_GAIN and diff.low > 0)
    if true is None or true.n == 0:
        sim = "not measured: no true description was scored (see the failures above)"
    elif follows:
        sim = "follows labels: the true description scores above a wrong rule's"
    elif diff is not None and diff.low > 0:
        sim = "follows labels weakly: the true description beats a wrong rule's, but its gain is small"
    else:
        sim = "does not follow labels: scores from it measure its prior, not the label"
    if true is None or true.n == 0:
        exp = "not measured: no true description was scored"
    elif not follows:
        exp = "cannot be judged with this simulator (it does not follow labels)"
    elif rec is not None and rec.mean >= FINDS_SHARE:
        exp = f"finds the planted rules: its labels score {rec.mean:.0%} of the true descriptions' gain"
    else:
        exp = "misses the planted rules: its labels score well below the true descriptions"
    dt, dw = r.judges.get("detection true"), r.judges.get("detection wrong")
    if dt is None or dw is None or not dt.n:
        judge = "not measured: no judge scores (--judge is off, every judge request failed, or the judge was stopped for unusable replies)"
    elif dt.low > dw.high:
        judge = "tells the true description from a wrong one"
    else:
        judge = "does not tell the true description from a wrong one"
    return {"simulator": sim, "explainer": exp, "judge": judge}


def summarise(db: str | Path, dictionary_id: int, features: list[int], simulator: str, explainer: str,
              n_boot: int) -> CheckReport:
    """The check's figures, read back from the store."""
    r = CheckReport(dictionary_id, simulator, explainer, features, subset=False)
    methods = ("correlation_gain", "detection", "fuzzing")
    with store.open_store(db, read_only=True) as con:
        scores = store.planted_scores(con, dictionary_id, simulator, [explainer, TRUE, WRONG, PLACEBO], methods)
        kinds = {t.feature: t.kind for t in store.planted_truth(con, dictionary_id)}
        r.usage = store.call_usage(con, dictionary_id)
    val = {(s.feature, s.explainer, s.method): s.value for s in scores}
    chosen = set(features)

    def of(x: str, method: str = "correlation_gain") -> dict[int, float]:
        return {f: v for (f, e, m), v in val.items() if e == x and m == method and f in chosen
                and v is not None and math.isfinite(v)}

    for name, x in (("true", TRUE), ("wrong", WRONG), ("placebo", PLACEBO), ("LLM label", explainer)):
        r.following[name] = _mean_ci(list(of(x).values()), n_boot)
    true, wrong, llm = of(TRUE), of(WRONG), of(explainer)
    both = sorted(set(true) & set(wrong))
    r.true_minus_wrong = _mean_ci([true[f] - wrong[f] for f in both], n_boot)
    paired = sorted(set(true) & set(llm))
    r.recovery = _ratio_ci([llm[f] for f in paired], [true[f] for f in paired], n_boot)
    for kind in sorted({kinds[f] for f in paired}):
        fs = [f for f in paired if kinds[f] == kind]
        r.recovery_by_kind[kind] = _ratio_ci([llm[f] for f in fs], [true[f] for f in fs], n_boot)
    for method in ("detection", "fuzzing"):
        for name, x in (("true", TRUE), ("wrong", WRONG)):
            r.judges[f"{method} {name}"] = _mean_ci(list(of(x, method).values()), n_boot)
    r.verdicts = _verdicts(r)
    return r


def check_llm(db: str | Path, dictionary_id: int, features: list[int], cfg: LabelConfig, session: LLMSession,
              concurrency: int = 8, on_progress: ProgressFn | None = None,
              clock: Callable[[], float] = time.monotonic) -> CheckReport:
    """Label and score `features` of a planted dictionary with the session's explainer and simulator, and
    the true / wrong / placebo labels with its simulator; then read the figures back."""
    truth_labels(db, dictionary_id, features)
    cfg = cfg.model_copy(update={"explainers": (session.explainer_model, TRUE, WRONG, PLACEBO), "baseline": False,
                                 "null_samples": 0, "reference": True})
    t0 = clock()
    progress = label_stage(db, dictionary_id, features, cfg, session, concurrency=concurrency,
                           on_progress=on_progress)
    report = summarise(db, dictionary_id, features, session.simulator_model, session.explainer_model, cfg.n_boot)
    report.seconds, report.progress = clock() - t0, progress
    return report
