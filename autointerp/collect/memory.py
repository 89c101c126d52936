"""The memory a collection holds beyond the model and the SAE: the formula of docs/guide/collect.md."""

from __future__ import annotations

from dataclasses import dataclass

from autointerp.collect.stats import HIST_BINS
from autointerp.config import CollectConfig


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a collection holds beyond the model and the SAE (docs/guide/collect.md, Memory)."""

    buffers: int  # top-k, reservoir, random contexts and statistics: for the whole run
    batch: int  # one batch's activations and the working copies the reduction makes of them
    examples: int  # the result's example rows (per-token activations), built once at the end

    @property
    def collect(self) -> int:
        """While contexts are fed: the buffers and one batch."""
        return self.buffers + self.batch

    @property
    def result(self) -> int:
        """While the result tables are built: the buffers, a sorted copy of them and the example rows."""
        return 2 * self.buffers + self.examples


def collect_memory(cfg: CollectConfig, n_features: int) -> MemoryEstimate:
    """The memory formula of docs/guide/collect.md for `cfg` over `n_features` features, in bytes."""
    f, length, k, res, r = n_features, cfg.ctx_len, cfg.top_k, cfg.reservoir_size, cfg.n_random
    act = 4 * length  # one context's float32 activations
    # per feature and split: top (key f32, slot, seq, max f32), reservoir (key f64, slot, seq, max f32), random
    per_split = k * (24 + act) + res * (28 + act) + r * act
    stats = 2 * 8 + 8 + 4 + 8 * HIST_BINS + 8
    buffers = f * (2 * per_split + stats)
    batch = 4 * cfg.batch_size * length * f * 4  # acts, the SAE's pre-activations / the histogram's bins, ...
    rows = 2 * f * (k + r + cfg.n_quantiles * cfg.per_quantile)
    examples = rows * (act + 40)  # the numpy columns; the Arrow table shares their activations (no copy)
    return MemoryEstimate(buffers, batch, examples)
