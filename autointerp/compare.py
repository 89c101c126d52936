"""Comparing dictionaries (a trained model against its random-init control): pure functions over score rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autointerp import scoring


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


def _mean_ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    if len(values) < 2:
        return float("nan"), float("nan")
    c = scoring._resample_counts(len(values), n_boot, seed)
    return scoring._percentiles((c @ values) / len(values), n_boot)


def distribution(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Distribution:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return Distribution(0, float("nan"), (float("nan"), float("nan")), float("nan"))
    return Distribution(len(values), float(values.mean()), _mean_ci(values, n_boot, seed), float(np.median(values)))


def compare(method: str, explainer: str, a: dict[int, float], b: dict[int, float], n_boot: int = 1000,
            seed: int = 0) -> Comparison:
    """a, b: feature -> score. Paired by feature index (the same architecture: the same positions)."""
    va = np.array([v for v in a.values() if v is not None], dtype=np.float64)
    vb = np.array([v for v in b.values() if v is not None], dtype=np.float64)
    common = sorted(f for f in set(a) & set(b) if a[f] is not None and b[f] is not None)
    diffs = np.array([a[f] - b[f] for f in common], dtype=np.float64)
    diffs = diffs[np.isfinite(diffs)]
    diff_mean = float(diffs.mean()) if len(diffs) else float("nan")
    return Comparison(method, explainer, distribution(va, n_boot, seed), distribution(vb, n_boot, seed),
                      len(diffs), diff_mean, _mean_ci(diffs, n_boot, seed))


def captured_share(behaviour: np.ndarray, effect: np.ndarray, n_boot: int = 1000,
                   seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Share of the dictionary's behaviour its labels capture: behaviour scores weighted by each feature's
    ablation effect, sum(b * e) / sum(e) over features with a positive effect, with a bootstrap CI."""
    keep = np.isfinite(behaviour) & np.isfinite(effect) & (effect > 0)
    b, e = behaviour[keep], effect[keep]
    if len(b) == 0:
        return float("nan"), (float("nan"), float("nan"))
    value = float((b * e).sum() / e.sum())
    if len(b) < 2:
        return value, (float("nan"), float("nan"))
    c = scoring._resample_counts(len(b), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = (c @ (b * e)) / (c @ e)
    return value, scoring._percentiles(boot, n_boot)
