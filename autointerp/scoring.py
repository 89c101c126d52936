"""Scores as pure functions of true and predicted activations. No I/O, no models: the simulator's
output comes in as arrays. Every score has a bootstrap 95% CI over examples (contexts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Examples = Sequence[tuple[np.ndarray, np.ndarray]]  # (true, predicted) per context, equal lengths


@dataclass(frozen=True)
class Score:
    method: str
    value: float  # nan when undefined (e.g. no variance)
    n_examples: int
    ci_low: float
    ci_high: float


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2:
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denom) if denom > 0 else float("nan")


def pooled_correlation(examples: Examples) -> float:
    """Correlation over all tokens of all examples pooled (OpenAI's all-at-once scoring)."""
    if not examples:
        return float("nan")
    return pearson(np.concatenate([t for t, _ in examples]), np.concatenate([p for _, p in examples]))


def fit_calibration(examples: Examples) -> tuple[float, float]:
    """Least-squares a, b with true ~ a * predicted + b, on a calibration split."""
    t = np.concatenate([t for t, _ in examples]).astype(np.float64)
    p = np.concatenate([p for _, p in examples]).astype(np.float64)
    var = p.var()
    if var == 0:
        return 0.0, float(t.mean())
    a = float(((p - p.mean()) * (t - t.mean())).mean() / var)
    return a, float(t.mean() - a * p.mean())


def explained_variance(examples: Examples, calibration: tuple[float, float]) -> float:
    """1 - Var(true - (a * pred + b)) / Var(true), with a, b fitted elsewhere."""
    if not examples:
        return float("nan")
    a, b = calibration
    t = np.concatenate([t for t, _ in examples]).astype(np.float64)
    p = np.concatenate([p for _, p in examples]).astype(np.float64) * a + b
    var = t.var()
    return float(1.0 - ((t - p) ** 2).mean() / var) if var > 0 else float("nan")


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean of the true-positive and true-negative rates (Delphi's detection and fuzzing metric)."""
    labels = np.asarray(labels, dtype=bool)
    predictions = np.asarray(predictions, dtype=bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    return float(((predictions & labels).sum() / pos + (~predictions & ~labels).sum() / neg) / 2)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def bootstrap(
    stat: Callable[[list[int]], float], n: int, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile 95% CI of stat(indices) over resamples of n examples with replacement."""
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        v = stat(rng.integers(0, n, n).tolist())
        if np.isfinite(v):
            values.append(v)
    if len(values) < n_boot // 2:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def correlation_score(method: str, examples: Examples, n_boot: int = 1000, seed: int = 0) -> Score:
    value = pooled_correlation(examples)
    low, high = bootstrap(lambda idx: pooled_correlation([examples[i] for i in idx]), len(examples), n_boot, seed)
    return Score(method, value, len(examples), low, high)


def explained_variance_score(
    calibration_examples: Examples, examples: Examples, n_boot: int = 1000, seed: int = 0
) -> Score:
    cal = fit_calibration(calibration_examples) if calibration_examples else (1.0, 0.0)
    value = explained_variance(examples, cal)
    low, high = bootstrap(lambda idx: explained_variance([examples[i] for i in idx], cal), len(examples), n_boot, seed)
    return Score("explained_variance", value, len(examples), low, high)


def accuracy_score(method: str, labels: np.ndarray, predictions: np.ndarray, n_boot: int = 1000,
                   seed: int = 0) -> Score:
    labels, predictions = np.asarray(labels, bool), np.asarray(predictions, bool)
    value = balanced_accuracy(labels, predictions)
    low, high = bootstrap(lambda idx: balanced_accuracy(labels[idx], predictions[idx]), len(labels), n_boot, seed)
    return Score(method, value, len(labels), low, high)


def auc_score(method: str, labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Score:
    labels, scores = np.asarray(labels, bool), np.asarray(scores, np.float64)
    value = auc(labels, scores)
    low, high = bootstrap(lambda idx: auc(labels[idx], scores[idx]), len(labels), n_boot, seed)
    return Score(method, value, len(labels), low, high)
