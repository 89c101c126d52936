"""Ranked.merge_pairs (the sparse path: positions by binary search from the active pairs) against Ranked.merge
(a stable sort of every changed row): the same keys, slots and payload, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from autointerp.collect.buffers import Batch, Ranked


def _filled(gen: torch.Generator, n_features: int, size: int, length: int, largest: bool,
            values: torch.Tensor) -> Ranked:
    """Rows at every fill level from empty to full (keys from a few values: many ties), in shuffled slots."""
    dtype = torch.float32 if largest else torch.float64
    r = Ranked.empty(n_features, size, length, largest, dtype, torch.device("cpu"))
    for f in range(n_features):
        n = f % (size + 1)
        keys = values[torch.randint(len(values), (n,), generator=gen)].to(dtype)
        r.key[f, :n] = keys.sort(descending=largest).values
        r.slot[f] = torch.randperm(size, generator=gen)
        r.seq[f, r.slot[f, :n]] = torch.randint(0, 10**6, (n,), generator=gen)
    r.max = torch.rand((n_features, size), generator=gen)
    r.acts = torch.rand((n_features, size, length), generator=gen)
    return r


def _copy(r: Ranked) -> Ranked:
    return Ranked(r.key.clone(), r.slot.clone(), r.seq.clone(), r.max.clone(), r.acts.clone(), r.largest)


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("size", [1, 3, 8])
def test_merging_the_active_pairs_gives_the_bits_of_sorting_every_row(largest: bool, size: int):
    gen = torch.Generator().manual_seed(size * 2 + largest)
    n_features, length, b = 40, 5, 9
    values = torch.tensor([0.25, 0.5, 0.75, 1.0])
    sort = _filled(gen, n_features, size, length, largest, values)
    pairs = _copy(sort)
    empty = -math.inf if largest else math.inf
    assert set((sort.key != empty).sum(1).tolist()) == set(range(size + 1))  # every fill level, empty to full
    first = 0
    for step in range(12):
        # Contexts of a bigger batch (rows), some features active in each: a silent pair's key is an empty slot's.
        acts = torch.rand((b + 3, length, n_features), generator=gen)
        rows = torch.randperm(b + 3, generator=gen)[:b].sort().values
        seqs = torch.arange(first, first + b)
        first += b
        ctx_max = acts[rows].amax(1)
        density = (0.05, 0.3, 1.0)[step % 3]
        active = torch.rand((b, n_features), generator=gen) < density
        drawn = values[torch.randint(len(values), (b, n_features), generator=gen)]
        new_key = torch.where(active, drawn, empty).to(sort.key.dtype)
        best = new_key.amax(0) if largest else new_key.amin(0)
        feats = (best > sort.worst() if largest else best < sort.worst()).nonzero().squeeze(1)
        batch = Batch(acts)
        if len(feats):
            sort.merge(new_key, seqs, ctx_max, batch, rows, feats)
        b_idx, f_idx = active.nonzero(as_tuple=True)
        pairs.merge_pairs(b_idx, f_idx, new_key[b_idx, f_idx], seqs, ctx_max, batch, rows)
        for name in ("key", "slot", "seq", "max", "acts"):
            x, y = getattr(sort, name), getattr(pairs, name)
            assert x.dtype == y.dtype and torch.equal(x, y), (step, name)


def test_a_pair_that_only_ties_the_worst_key_stays_out_and_earlier_contexts_win_ties():
    r = Ranked.empty(1, 3, 2, largest=True, dtype=torch.float32, device=torch.device("cpu"))
    acts = torch.arange(4 * 2, dtype=torch.float32).reshape(4, 2, 1)
    ctx_max = acts.amax(1)
    b, f = torch.tensor([0, 1, 2, 3]), torch.zeros(4, dtype=torch.int64)
    r.merge_pairs(b, f, torch.tensor([1.0, 2.0, 1.0, 1.0]), torch.arange(4), ctx_max, Batch(acts), torch.arange(4))
    key, seq, _, _ = r.sorted_view()
    assert key.tolist() == [[2.0, 1.0, 1.0]] and seq.tolist() == [[1, 0, 2]]
    r.merge_pairs(b[:2], f[:2], torch.tensor([1.0, 2.0]), torch.arange(10, 12), ctx_max, Batch(acts),
                  torch.arange(2))
    key, seq, _, _ = r.sorted_view()
    assert key.tolist() == [[2.0, 2.0, 1.0]] and seq.tolist() == [[1, 11, 0]]
