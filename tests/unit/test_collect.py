"""Collection on a tiny Llama built from a config: stored values against a brute-force pass over the whole run."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from autointerp.collect import corpus
from autointerp.collect.buffers import _SALT_RANDOM, _SALT_RESERVOIR, hash_uniform, split_of
from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from autointerp.models import FeatureReader, load_sae
from tests.helpers import make_sae_dir

HOOK = "blocks.0.mlp.hook_post"


def _cfg(tiny_model_dir: Path, corpus_file: Path, **kw) -> CollectConfig:
    base = dict(model=str(tiny_model_dir), hook=HOOK, dataset=str(corpus_file), n_tokens=1600, ctx_len=16,
                top_k=4, n_quantiles=3, per_quantile=2, n_random=5, batch_size=7, seed=3)
    base.update(kw)
    return CollectConfig(**base)


def _brute_force(model, cfg: CollectConfig, sae=None):
    """All contexts and their activations, computed directly with run_with_cache."""
    ctxs = np.stack(list(corpus.contexts(corpus.pieces(cfg.dataset), model.tokenizer, cfg.ctx_len,
                                         cfg.n_tokens // cfg.ctx_len)))
    bos = torch.full((len(ctxs), 1), model.tokenizer.bos_token_id)
    inputs = torch.cat([bos, torch.from_numpy(ctxs)], dim=1)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs, names_filter=[cfg.hook or HOOK])
    acts = cache[cfg.hook or HOOK]
    if sae is not None:
        with torch.no_grad():
            acts = sae.encode(acts)
    return ctxs, acts[:, 1:].float()


def _rows(db: Path, sql: str, params=()):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def collected(tmp_path_factory, tiny_model, tiny_model_dir, corpus_file):
    db = tmp_path_factory.mktemp("db") / "a.duckdb"
    cfg = _cfg(tiny_model_dir, corpus_file)
    out = collect_stage(db, cfg, model=tiny_model)
    ctxs, acts = _brute_force(tiny_model, cfg)
    return db, cfg, out, ctxs, acts


def test_stored_activations_equal_run_with_cache(collected):
    db, cfg, out, ctxs, acts = collected
    rows = _rows(db, "SELECT e.feature, e.seq, e.acts, s.token_ids FROM examples e JOIN sequences s USING (dictionary_id, seq)")
    assert len(rows) > 1000
    worst = 0.0
    for feature, seq, stored, token_ids in rows:
        assert token_ids == ctxs[seq].tolist()
        worst = max(worst, float(np.abs(np.asarray(stored) - acts[seq, :, feature].numpy()).max()))
    assert worst <= 1e-4


def test_top_k_equals_brute_force(collected):
    db, cfg, out, ctxs, acts = collected
    holdout = split_of(cfg.seed, cfg.holdout_frac, torch.arange(len(ctxs))).numpy()
    ctx_max = acts.amax(1).numpy()  # [n_ctx, F]
    for split, mask in (("explain", ~holdout), ("holdout", holdout)):
        for f in range(ctx_max.shape[1]):
            cand = [(ctx_max[s, f], s) for s in np.nonzero(mask)[0] if ctx_max[s, f] > cfg.threshold]
            expected = [s for _, s in sorted(cand, key=lambda t: (-t[0], t[1]))[: cfg.top_k]]
            got = [r[0] for r in _rows(db, "SELECT seq FROM examples WHERE feature=? AND split=? AND kind='top' "
                                           "ORDER BY rank", (f, split))]
            assert got == expected, (split, f)


def test_quantile_samples_lie_in_ordered_bins_drawn_from_the_hash_reservoir(collected):
    db, cfg, out, ctxs, acts = collected
    holdout = split_of(cfg.seed, cfg.holdout_frac, torch.arange(len(ctxs))).numpy()
    ctx_max = acts.amax(1).numpy()
    checked = 0
    for split, mask in (("explain", ~holdout), ("holdout", holdout)):
        for f in range(ctx_max.shape[1]):
            rows = _rows(db, "SELECT quantile, max_act, bin_low, bin_high, seq FROM examples "
                             "WHERE feature=? AND split=? AND kind='quantile' ORDER BY quantile, rank", (f, split))
            if not rows:
                continue
            for _q, m, low, high, _ in rows:
                assert low - 1e-6 <= m <= high + 1e-6
            highs = {q: h for q, _, _, h, _ in rows}
            lows = {q: lo for q, _, lo, _, _ in rows}
            for q in sorted(highs)[:-1]:
                assert highs[q] <= lows[q + 1] + 1e-6
            # The reservoir is the R active contexts with the smallest hash keys (top-k excluded after).
            seqs = np.nonzero(mask & (ctx_max[:, f] > cfg.threshold))[0]
            keys = hash_uniform(cfg.seed, _SALT_RESERVOIR, torch.from_numpy(seqs), torch.tensor([f]))[:, 0].numpy()
            reservoir = set(seqs[np.argsort(keys)[: cfg.reservoir_size]].tolist())
            assert {s for *_, s in rows} <= reservoir
            checked += 1
    assert checked > 10


def test_random_contexts_are_the_smallest_hash_keys_and_shared(collected):
    db, cfg, out, ctxs, acts = collected
    holdout = split_of(cfg.seed, cfg.holdout_frac, torch.arange(len(ctxs))).numpy()
    keys = hash_uniform(cfg.seed, _SALT_RANDOM, torch.arange(len(ctxs))).numpy()
    for split, mask in (("explain", ~holdout), ("holdout", holdout)):
        seqs = np.nonzero(mask)[0]
        expected = sorted(seqs[np.argsort(keys[seqs])[: cfg.n_random]].tolist())
        per_feature = _rows(db, "SELECT feature, list(seq ORDER BY seq) FROM examples WHERE split=? AND kind='random' "
                                "GROUP BY feature", (split,))
        assert len(per_feature) == acts.shape[2]
        assert all(s == expected for _, s in per_feature)


def test_random_draw_is_uniform_over_contexts_and_seeded():
    n_ctx, r, trials = 40, 4, 2000
    counts = np.zeros(n_ctx)
    seqs = torch.arange(n_ctx)
    for seed in range(trials):
        keys = hash_uniform(seed, _SALT_RANDOM, seqs).numpy()
        counts[np.argsort(keys)[:r]] += 1
    expected = trials * r / n_ctx
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 80  # 39 degrees of freedom: p ~ 1e-4 at 80
    assert torch.equal(hash_uniform(7, _SALT_RANDOM, seqs), hash_uniform(7, _SALT_RANDOM, seqs))
    assert not torch.equal(hash_uniform(7, _SALT_RANDOM, seqs), hash_uniform(8, _SALT_RANDOM, seqs))


def test_splits_are_disjoint(collected):
    db, *_ = collected
    both = _rows(db, "SELECT seq FROM examples GROUP BY seq HAVING count(DISTINCT split) > 1")
    assert both == []
    mismatched = _rows(db, "SELECT count(*) FROM examples e JOIN sequences s USING (dictionary_id, seq) "
                           "WHERE e.split <> s.split")
    assert mismatched == [(0,)]
    assert _rows(db, "SELECT count(DISTINCT split) FROM sequences") == [(2,)]


def test_feature_statistics_equal_brute_force(collected):
    db, cfg, out, ctxs, acts = collected
    flat = acts.reshape(-1, acts.shape[2]).numpy()
    rows = _rows(db, "SELECT feature, max_act, mean_act, frac_active, n_active, hist_bin_width, hist_counts "
                     "FROM features ORDER BY feature")
    assert len(rows) == flat.shape[1]
    for f, mx, mean, frac, n_active, width, hist in rows:
        col = flat[:, f]
        assert mx == pytest.approx(col.max(), abs=1e-5)
        assert mean == pytest.approx(col.mean(), abs=1e-5)
        assert n_active == int((col > 0).sum()) and frac == pytest.approx(n_active / len(col))
        pos = col[col > 0]
        assert sum(hist) == len(pos)
        expected = np.bincount(np.minimum((pos / width).astype(int), len(hist) - 1), minlength=len(hist))
        assert hist == expected.tolist()
        assert col.max() < width * len(hist)


def test_same_seed_same_result_whatever_the_batch_size(tmp_path, tiny_model, tiny_model_dir, corpus_file, collected):
    db_a = collected[0]
    db_b = tmp_path / "b.duckdb"
    collect_stage(db_b, _cfg(tiny_model_dir, corpus_file, batch_size=3), model=tiny_model)
    q = "SELECT feature, split, kind, rank, seq, acts FROM examples ORDER BY ALL"
    assert _rows(db_a, q) == _rows(db_b, q)
    db_c = tmp_path / "c.duckdb"
    collect_stage(db_c, _cfg(tiny_model_dir, corpus_file, seed=4), model=tiny_model)
    assert _rows(db_a, "SELECT seq, split FROM sequences ORDER BY seq") != _rows(db_c, "SELECT seq, split FROM sequences ORDER BY seq")


def test_rerun_of_a_complete_collection_does_nothing(tiny_model, tiny_model_dir, corpus_file, collected):
    db, cfg, *_ = collected
    before = _rows(db, "SELECT count(*) FROM examples")
    out = collect_stage(db, cfg, model=tiny_model)
    assert out.already_complete
    assert _rows(db, "SELECT count(*) FROM examples") == before
    assert _rows(db, "SELECT count(*) FROM dictionaries") == [(1,)]


def test_sae_latents_equal_run_with_cache(tmp_path, tiny_model, tiny_model_dir, corpus_file):
    hook = "blocks.1.hook_resid_post"
    sae_dir = make_sae_dir(tmp_path / "sae", hook, d_in=tiny_model.cfg.d_model, d_sae=40)
    db = tmp_path / "sae.duckdb"
    cfg = _cfg(tiny_model_dir, corpus_file, hook=None, sae=str(sae_dir))
    out = collect_stage(db, cfg, model=tiny_model)
    assert out.n_features == 40
    assert _rows(db, "SELECT kind, hook FROM dictionaries") == [("sae", hook)]
    ctxs, acts = _brute_force(tiny_model, cfg.model_copy(update={"hook": hook}), sae=load_sae(str(sae_dir)))
    rows = _rows(db, "SELECT feature, seq, acts FROM examples")
    assert rows
    worst = max(float(np.abs(np.asarray(a) - acts[s, :, f].numpy()).max()) for f, s, a in rows)
    assert worst <= 1e-4


def test_feature_range_collects_a_slice(tmp_path, tiny_model, tiny_model_dir, corpus_file, collected):
    db = tmp_path / "slice.duckdb"
    collect_stage(db, _cfg(tiny_model_dir, corpus_file, features=(5, 9)), model=tiny_model)
    assert _rows(db, "SELECT min(feature), max(feature), count(*) FROM features") == [(5, 8, 4)]
    q = "SELECT seq, acts FROM examples WHERE feature = 6 AND kind = 'top' ORDER BY split, rank"
    assert _rows(db, q) == _rows(collected[0], q)


def test_reader_rejects_wrong_sae_width(tmp_path, tiny_model):
    from autointerp.errors import AutointerpError

    sae = load_sae(str(make_sae_dir(tmp_path / "wide", HOOK, d_in=999)))
    with pytest.raises(AutointerpError, match="d_in=999"):
        FeatureReader(tiny_model, HOOK, sae=sae)
