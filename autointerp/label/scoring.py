"""Scores as pure functions of true and predicted activations. No I/O, no models: the simulator's
output comes in as arrays. Every score has a bootstrap 95% CI over examples (contexts)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from autointerp.records import ScoreRow, ScoreRun

Examples = Sequence[tuple[np.ndarray, np.ndarray]]  # (true, predicted) per context, equal lengths


@dataclass(frozen=True)
class Score:
    method: str
    value: float  # nan when undefined (e.g. no variance)
    n_examples: int
    ci_low: float
    ci_high: float

    def record(self, run: ScoreRun, note: str | None = None) -> ScoreRow:
        """This score as a `scores` row of `run`, undefined values (NaN) stored as NULL."""
        return self.row(run.run_id, run.explanation_id, run.dictionary_id, run.feature, run.simulator, note)

    def row(self, run_id: str, explanation_id: str, dictionary_id: int, feature: int, simulator: str,
            note: str | None = None) -> ScoreRow:
        """This score as a `scores` row of the run `run_id`, undefined values (NaN) stored as NULL."""

        def finite(v: float) -> float | None:
            return float(v) if np.isfinite(v) else None

        return ScoreRow(run_id=run_id, explanation_id=explanation_id, dictionary_id=dictionary_id,
                        feature=feature, simulator=simulator, method=self.method, value=finite(self.value),
                        n_examples=self.n_examples, ci_low=finite(self.ci_low), ci_high=finite(self.ci_high),
                        note=note)


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


@functools.lru_cache(maxsize=64)
def resample_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n]: how often each example is drawn in each bootstrap resample (same draws as `bootstrap`).
    The draws depend on (n, n_boot, seed) only, and every score of a run asks for the same few: made once
    each and shared, so the array is read-only."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_boot, n))
    cells = (np.arange(n_boot)[:, None] * n + idx).ravel()
    counts = np.bincount(cells, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
    counts.flags.writeable = False
    return counts


def percentile_ci(values: np.ndarray, n_boot: int) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) < n_boot // 2:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def _sums(examples: Examples, calibration: tuple[float, float] | None = None) -> np.ndarray:
    """Per-example sufficient statistics: n, sum t, sum p, sum t^2, sum p^2, sum t*p (p calibrated if given)."""
    rows = []
    for t, p in examples:
        t = np.asarray(t, np.float64)
        p = np.asarray(p, np.float64)
        if calibration is not None:
            p = p * calibration[0] + calibration[1]
        rows.append([len(t), t.sum(), p.sum(), (t * t).sum(), (p * p).sum(), (t * p).sum()])
    return np.asarray(rows, np.float64).reshape(-1, 6)


def _corr_from_sums(s: np.ndarray) -> np.ndarray:
    n, st, sp, stt, spp, stp = (s[..., i] for i in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = stp - st * sp / n
        var_t, var_p = stt - st * st / n, spp - sp * sp / n
        r = cov / np.sqrt(var_t * var_p)
    return np.where((var_t > 1e-12 * np.maximum(stt, 1)) & (var_p > 1e-12 * np.maximum(spp, 1)), r, np.nan)


def _ev_from_sums(s: np.ndarray) -> np.ndarray:
    n, st, sp, stt, spp, stp = (s[..., i] for i in range(6))
    with np.errstate(invalid="ignore", divide="ignore"):
        mse = (stt - 2 * stp + spp) / n
        var_t = stt / n - (st / n) ** 2
        ev = 1.0 - mse / var_t
    return np.where(var_t > 1e-12 * np.maximum(stt / np.maximum(n, 1), 1e-30), ev, np.nan)


def correlation_score(method: str, examples: Examples, n_boot: int = 1000, seed: int = 0) -> Score:
    """Pooled correlation with a bootstrap CI over examples, vectorised through per-example sums."""
    value = pooled_correlation(examples)
    if len(examples) < 2:
        return Score(method, value, len(examples), float("nan"), float("nan"))
    boot = _corr_from_sums(resample_counts(len(examples), n_boot, seed) @ _sums(examples))
    return Score(method, value, len(examples), *percentile_ci(boot, n_boot))


def explained_variance_score(
    calibration_examples: Examples, examples: Examples, n_boot: int = 1000, seed: int = 0
) -> Score:
    cal = fit_calibration(calibration_examples) if calibration_examples else (1.0, 0.0)
    value = explained_variance(examples, cal)
    if len(examples) < 2:
        return Score("explained_variance", value, len(examples), float("nan"), float("nan"))
    boot = _ev_from_sums(resample_counts(len(examples), n_boot, seed) @ _sums(examples, cal))
    return Score("explained_variance", value, len(examples), *percentile_ci(boot, n_boot))


def accuracy_score(method: str, labels: np.ndarray, predictions: np.ndarray, n_boot: int = 1000,
                   seed: int = 0) -> Score:
    """Balanced accuracy with a bootstrap CI, vectorised over resamples."""
    y, yhat = np.asarray(labels, bool), np.asarray(predictions, bool)
    value = balanced_accuracy(y, yhat)
    if len(y) < 2:
        return Score(method, value, len(y), float("nan"), float("nan"))
    c = resample_counts(len(y), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = ((c @ (y & yhat)) / (c @ y) + (c @ (~y & ~yhat)) / (c @ ~y)) / 2
    return Score(method, value, len(y), *percentile_ci(boot, n_boot))


def auc_score(method: str, labels: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Score:
    """AUC with a bootstrap CI: each resample weighs every (positive, negative) pair by their draw counts."""
    y, sc = np.asarray(labels, bool), np.asarray(scores, np.float64)
    value = auc(y, sc)
    if len(y) < 2:
        return Score(method, value, len(y), float("nan"), float("nan"))
    c = resample_counts(len(y), n_boot, seed)
    wins = (y[:, None] & ~y[None, :]) * ((sc[:, None] > sc[None, :]) + 0.5 * (sc[:, None] == sc[None, :]))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.einsum("bi,ij,bj->b", c, wins, c) / ((c @ y) * (c @ ~y))
    return Score(method, value, len(y), *percentile_ci(boot, n_boot))


def mean_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% CI of the mean of `values`."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return float("nan"), float("nan")
    c = resample_counts(len(values), n_boot, seed)
    return percentile_ci((c @ values) / len(values), n_boot)


def ratio_ci(num: np.ndarray, den: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Bootstrap 95% CI of sum(num) / sum(den), resampling the pairs together."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if len(num) < 2:
        return float("nan"), float("nan")
    c = resample_counts(len(num), n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        return percentile_ci((c @ num) / (c @ den), n_boot)


def _corr_or_zero(s: np.ndarray) -> np.ndarray:
    """Correlation from sums, 0 where the predictions have no variance (a constant prediction explains
    nothing) and NaN only where the truth has none."""
    n, st, stt, spp, sp = s[..., 0], s[..., 1], s[..., 3], s[..., 4], s[..., 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        var_t, var_p = stt - st * st / n, spp - sp * sp / n
    r = _corr_from_sums(s)
    flat_p = ~(var_p > 1e-12 * np.maximum(spp, 1))
    return np.where(np.isnan(r) & flat_p & (var_t > 1e-12 * np.maximum(stt, 1)), 0.0, r)


def correlation_gain_score(method: str, examples: Examples, reference: Examples, n_boot: int = 1000,
                           seed: int = 0) -> Score:
    """Pooled correlation of `examples` minus that of `reference` (the same contexts and truths, predicted
    from a label that says nothing), with a paired bootstrap CI: both resampled with the same draws."""
    if len(examples) != len(reference):
        raise ValueError(f"{len(examples)} examples against {len(reference)} reference examples")
    ours, ref = _sums(examples), _sums(reference)
    if len(examples) == 0:
        return Score(method, float("nan"), 0, float("nan"), float("nan"))
    value = float(_corr_or_zero(ours.sum(0)) - _corr_or_zero(ref.sum(0)))
    if len(examples) < 2:
        return Score(method, value, len(examples), float("nan"), float("nan"))
    c = resample_counts(len(examples), n_boot, seed)
    return Score(method, value, len(examples), *percentile_ci(_corr_or_zero(c @ ours) - _corr_or_zero(c @ ref), n_boot))
