"""Comparing dictionaries (a trained model against its random-init control): pure functions over score rows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autointerp.label import scoring
from autointerp.store import DictionaryRow, LabelScores, ScoreValue


@dataclass(frozen=True)
class Distribution:
    n: int
    mean: float
    mean_ci: tuple[float, float]
    median: float


@dataclass(frozen=True)
class Comparison:
    method: str
    explainer: str
    a: Distribution
    b: Distribution
    n_paired: int
    diff_mean: float  # mean over features labelled in both of (A - B)
    diff_ci: tuple[float, float]

    @property
    def verdict(self) -> str:
        low, high = self.diff_ci
        if self.n_paired < 2 or not np.isfinite(low):
            return "too few paired features to tell"
        if low > 0:
            return "A scores higher: the labels tell A from B"
        if high < 0:
            return "B scores higher: the labels tell them apart, the wrong way round"
        return "no difference: the labels do not tell A from B"


def distribution(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Distribution:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return Distribution(0, float("nan"), (float("nan"), float("nan")), float("nan"))
    return Distribution(len(values), float(values.mean()), scoring.mean_ci(values, n_boot, seed), float(np.median(values)))


def compare(method: str, explainer: str, a: dict[int, float | None], b: dict[int, float | None], n_boot: int = 1000,
            seed: int = 0) -> Comparison:
    """a, b: feature -> score. Paired by feature index (the same architecture: the same positions)."""
    va = np.array([v for v in a.values() if v is not None], dtype=np.float64)
    vb = np.array([v for v in b.values() if v is not None], dtype=np.float64)
    common = sorted(f for f in set(a) & set(b) if a[f] is not None and b[f] is not None)
    diffs = np.array([a[f] - b[f] for f in common], dtype=np.float64)  # type: ignore[operator]
    diffs = diffs[np.isfinite(diffs)]
    diff_mean = float(diffs.mean()) if len(diffs) else float("nan")
    return Comparison(method, explainer, distribution(va, n_boot, seed), distribution(vb, n_boot, seed),
                      len(diffs), diff_mean, scoring.mean_ci(diffs, n_boot, seed))


@dataclass(frozen=True)
class Captured:
    """The share of a dictionary's behaviour its labels capture, over the labels with a behaviour score."""

    share: float
    ci: tuple[float, float]
    scored: int  # labels with a behaviour score (the weighted ones)
    no_effect: int  # labels whose feature's ablation changes nothing measurable (no behaviour score)

    def text(self) -> str:
        if not np.isfinite(self.share):
            return f"none scored ({self.no_effect} no effect)"
        return f"{self.share:.3f} {ci_text(self.ci)} ({self.no_effect} no effect)"


def captured_share(behaviour: np.ndarray, kl_damage: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Captured:
    """Share of the dictionary's behaviour its labels capture: behaviour scores weighted by each feature's
    KL damage (never negative), sum(b * w) / sum(w), with a bootstrap CI over features. A feature with
    KL damage but no behaviour score is one whose ablation changes nothing measurable: counted, not weighted."""
    keep = np.isfinite(behaviour) & np.isfinite(kl_damage)
    no_effect = int((~np.isfinite(behaviour) & np.isfinite(kl_damage)).sum())
    b, w = behaviour[keep], kl_damage[keep]
    if len(b) == 0 or w.sum() <= 0:
        return Captured(float("nan"), (float("nan"), float("nan")), int(len(b)), no_effect)
    return Captured(float((b * w).sum() / w.sum()), scoring.ratio_ci(b * w, w, n_boot, seed), int(len(b)), no_effect)


# ---------------------------------------------------------------- tables for status and compare

SUMMARY_METHODS = ("correlation_top_random", "correlation_gain", "explained_variance", "behaviour", "behaviour_resolved",
                   "ablation_kl")


def describe(d: DictionaryRow) -> str:
    """'trained', or the random-init scheme and seed of a control."""
    if not d.random_init:
        return "trained"
    return f"random init: {d.config.get('init_scheme', 'init')}, seed {d.seed}"


def ci_text(lo_hi: tuple[float, float]) -> str:
    """A CI as printed; a bootstrap over one value has none (its ends are NaN), and says so."""
    if not all(np.isfinite(lo_hi)):
        return "[no CI: one value]"
    return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"


def _fmt(d: Distribution) -> str:
    return "" if d.n == 0 else f"{d.mean:.3f} {ci_text(d.mean_ci)}"


def label_summary(labels: list[LabelScores]) -> tuple[list[str], list[list[Any]]]:
    """Per dictionary, explainer and simulator: label count, mean score with CI, captured behaviour share."""
    groups: dict[tuple[int, str, str], list[LabelScores]] = {}
    for lab in labels:
        groups.setdefault((lab.dictionary_id, lab.explainer, lab.simulator or ""), []).append(lab)
    out = []
    for (did, expl, sim), group in sorted(groups.items()):
        def col(m: str, group: list[LabelScores] = group) -> np.ndarray:
            return np.array([np.nan if g.values[m] is None else g.values[m] for g in group], dtype=np.float64)

        behaviour = col("behaviour")
        resolved = int(np.nansum(col("behaviour_resolved")))
        out.append([did, expl, sim, len(group), _fmt(distribution(col("correlation_top_random"))),
                    _fmt(distribution(col("correlation_gain"))), _fmt(distribution(col("explained_variance"))),
                    _fmt(distribution(behaviour)), f"{resolved}/{int(np.isfinite(behaviour).sum())}",
                    captured_share(behaviour, col("ablation_kl")).text()])
    return ["dictionary", "explainer", "simulator", "labels", "correlation_top_random", "correlation_gain",
            "explained_variance", "behaviour", "resolved", "captured"], out


def compare_table(values: list[ScoreValue], dict_a: int, dict_b: int) -> tuple[list[str], list[list[Any]]]:
    """One row per explainer, simulator and method: both distributions and their paired difference, with
    scores paired only from runs of the same settings (else the row says the settings differ)."""
    data: dict[tuple[str, str, str], dict[str, dict[int, dict[int, float | None]]]] = {}
    for v in values:
        per = data.setdefault((v.explainer, v.simulator, v.method), {})
        per.setdefault(v.settings_hash, {dict_a: {}, dict_b: {}})[v.dictionary_id][v.feature] = v.value
    columns = ["explainer", "simulator", "method", "n_a", "mean_a", "ci_a", "median_a", "n_b", "mean_b", "ci_b",
               "median_b", "paired", "diff_a_minus_b", "diff_ci", "verdict"]
    out: list[list[Any]] = []

    for (expl, sim, method), by_settings in sorted(data.items()):
        both = [k for k, per in by_settings.items() if per[dict_a] and per[dict_b]]
        if not both:
            out.append([expl, sim, method] + [None] * 11 + ["not compared: A and B were scored with other settings"])
            continue
        # The settings with the most paired features.
        key = max(both, key=lambda k: len(set(by_settings[k][dict_a]) & set(by_settings[k][dict_b])))
        c = compare(method, expl, by_settings[key][dict_a], by_settings[key][dict_b])
        out.append([expl, sim, method, c.a.n, c.a.mean, ci_text(c.a.mean_ci), c.a.median, c.b.n, c.b.mean,
                    ci_text(c.b.mean_ci), c.b.median, c.n_paired, c.diff_mean, ci_text(c.diff_ci), c.verdict])
    return columns, out
