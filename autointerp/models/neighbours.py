"""What hard negatives are computed from: every feature of a dictionary read over stored sequences (each
sequence's max per feature, where it peaks, and the token-level correlation between features), and the
decoder cosine between SAE latents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

BATCH = 16  # sequences per forward pass


@dataclass
class SequenceReads:
    """Per sequence and feature: the max activation and its first position; the features' Pearson
    correlation over every token read (None when not asked for)."""

    seq_max: np.ndarray  # [sequence, feature]
    seq_peak: np.ndarray  # [sequence, feature]
    correlation: np.ndarray | None  # [feature, feature]


def read_sequences(fn: Callable[[torch.Tensor], torch.Tensor], sequences: list[list[int]], bos: int | None,
                   correlation: bool) -> SequenceReads:
    """`fn` (token ids [batch, pos] -> activations [batch, pos, feature]) over `sequences`, BOS in front
    when given (its position is dropped), batched by length."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    maxes: dict[int, np.ndarray] = {}
    peaks: dict[int, np.ndarray] = {}
    moments: list[torch.Tensor] = []  # [count], sum x, sum x x^T, accumulated in float64
    for start in range(0, len(order), BATCH):
        chunk = order[start:start + BATCH]
        for length in sorted({len(sequences[i]) for i in chunk}):
            same = [i for i in chunk if len(sequences[i]) == length]
            if length == 0:
                continue
            ids = torch.tensor([([bos] if bos is not None else []) + sequences[i] for i in same], dtype=torch.long)
            with torch.no_grad():
                acts = fn(ids).float().cpu()
            if bos is not None:
                acts = acts[:, 1:]
            m, p = acts.max(dim=1)
            for j, i in enumerate(same):
                maxes[i], peaks[i] = m[j].numpy(), p[j].numpy()
            if correlation:
                _accumulate(moments, acts.reshape(-1, acts.shape[-1]).double())
    width = next(iter(maxes.values())).shape[0] if maxes else 0
    seq_max = np.stack([maxes.get(i, np.zeros(width)) for i in range(len(sequences))]) if maxes else np.zeros((0, 0))
    seq_peak = np.stack([peaks.get(i, np.zeros(width, int)) for i in range(len(sequences))]) if peaks \
        else np.zeros((0, 0), int)
    return SequenceReads(seq_max, seq_peak.astype(int), _pearson(moments) if correlation and moments else None)


def _accumulate(moments: list[torch.Tensor], x: torch.Tensor) -> None:
    step = [torch.tensor(float(x.shape[0]), dtype=torch.float64), x.sum(0), x.T @ x]
    if not moments:
        moments.extend(step)
    else:
        for k in range(3):
            moments[k] += step[k]


def _pearson(moments: list[torch.Tensor]) -> np.ndarray:
    n, s, ss = moments
    cov = ss / n - torch.outer(s / n, s / n)
    sd = torch.sqrt(torch.clamp(torch.diagonal(cov), min=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (cov / torch.outer(sd, sd)).numpy()
    corr[~np.isfinite(corr)] = 0.0  # a feature that never varies correlates with nothing
    return corr


def nearest(similarity: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each feature's `k` most similar other features of a square similarity matrix (ties: the lower index
    first) and their similarity."""
    sim = similarity.astype(np.float64, copy=True)
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sim, order, axis=1)


def decoder_neighbours(sae: object, start: int, stop: int, k: int, chunk: int = 1024
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Each latent of [start, stop)'s `k` nearest latents of that range by decoder cosine (indices within the
    range), a chunk of rows at a time so a wide SAE never holds its whole similarity matrix."""
    w = sae.W_dec.detach().float()[start:stop]  # type: ignore[attr-defined]
    w = w / torch.clamp(w.norm(dim=1, keepdim=True), min=1e-12)
    found = []
    for lo in range(0, w.shape[0], chunk):
        sim = (w[lo:lo + chunk] @ w.T).cpu().numpy().astype(np.float64)
        sim[np.arange(sim.shape[0]), np.arange(lo, lo + sim.shape[0])] = -np.inf
        order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        found.append((order, np.take_along_axis(sim, order, axis=1)))
    return np.concatenate([o for o, _ in found]), np.concatenate([v for _, v in found])
