"""Behaviour scores on a tiny model with a planted neuron whose true rule is known: it fires on digits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from autointerp.behaviour import RESOLVED_CI_WIDTH
from autointerp.behaviour import patcher as behaviour
from autointerp.collect import corpus
from autointerp.label import scoring
from autointerp.models import FeatureReader
from tests.helpers import SAMPLE_TEXT, make_tokenizer

HOOK = "blocks.0.mlp.hook_post"
K = 3  # the planted neuron


def has_digit(t: str) -> bool:
    return any(ch.isdigit() for ch in t)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from transformers import AutoTokenizer

    tok_dir = tmp_path_factory.mktemp("tok")
    make_tokenizer().save_pretrained(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)  # TransformerLens wants a tokenizer that knows its path
    V = len(tok)
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, d_mlp=8, n_heads=2, d_head=8, d_vocab=V, n_ctx=64,
                                  act_fn="relu", normalization_type=None, seed=0)
    model = HookedTransformer(cfg, tokenizer=tok)
    digit = torch.tensor([has_digit(tok.decode([i])) for i in range(V)], dtype=torch.float32)
    text = (SAMPLE_TEXT + " 12 345 6789 2024 1999 42 7 ") * 16
    path = tmp_path_factory.mktemp("text") / "digits.txt"
    path.write_text(text)
    ctxs = np.stack(list(corpus.contexts(corpus.pieces(str(path)), tok, 24, 120)))
    follows = torch.zeros(V)  # tokens that come right after a digit token in this text
    for row in ctxs:
        for a, b in zip(row[:-1], row[1:], strict=True):
            if digit[a]:
                follows[b] = 1.0
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[:, 0] = digit  # direction 0: "this token has a digit"
        model.embed.W_E[:, 2:] = torch.randn(V, 14) * 0.1
        model.blocks[0].mlp.W_in[0, K] = 5.0
        model.blocks[0].mlp.b_in[K] = -0.5  # relu: 4.5 on digit tokens, 0 elsewhere
        model.blocks[0].mlp.W_out[K, 1] = 1.0  # writes direction 1 ...
        model.unembed.W_U[1] = 2.0 * follows - 1.0  # ... which predicts what follows digits here
        model.unembed.W_U[2:] = torch.randn(14, V) * 0.1
    model.eval()
    tokens = torch.cat([torch.full((len(ctxs), 1), tok.bos_token_id), torch.from_numpy(ctxs)], 1)
    acts = FeatureReader(model, HOOK)(tokens)[:, 1:, K]
    strings = [[tok.decode([t]) for t in row] for row in ctxs]
    return model, tokens, acts, strings


def _score(planted, rule) -> dict[str, float]:
    """Behaviour scores of a rule's predictions, calibrated on the first 20 contexts and scored on the rest,
    with the calibrated ablation (the feature's mean on the calibration contexts)."""
    model, tokens, acts, strings = planted
    pred = torch.tensor([[9.0 if rule(t) else 0.0 for t in row] for row in strings])
    cal, sc = slice(0, 20), slice(20, None)  # calibration contexts, scored contexts
    a, b = scoring.fit_calibration([(acts[i].numpy(), pred[i].numpy()) for i in range(20)])
    replacement = pred[sc] * a + b
    ablate = float(acts[cal].mean())
    (losses,) = behaviour.Patcher(model, HOOK).losses(tokens[sc], K, ablate, [replacement])
    return {s.method: s.value for s, _ in behaviour.behaviour_scores(losses, n_boot=200)}


def test_planted_neuron_fires_on_digits(planted):
    _, _, acts, strings = planted
    flat_acts = acts.flatten().numpy()
    flat_digit = np.array([has_digit(t) for row in strings for t in row])
    assert flat_digit.any() and (~flat_digit).any()
    assert np.allclose(flat_acts[flat_digit], 4.5, atol=1e-4) and np.allclose(flat_acts[~flat_digit], 0.0, atol=1e-4)


@pytest.mark.parametrize("form", ["behaviour", "behaviour_loss"])
def test_true_rule_scores_one_a_wrong_rule_and_the_constant_zero(planted, form):
    """Under the KL headline as under the loss form: the neuron's own rule repairs all the ablation's damage,
    a rule about other tokens next to none, a constant (the calibrated ablation itself) exactly none."""
    true = _score(planted, has_digit)
    wrong = _score(planted, lambda t: t.strip().lower().startswith(("t", "a", "s")))
    constant = _score(planted, lambda t: True)
    assert true["ablation_effect"] > 0.01 and true["ablation_kl"] > 0.01  # the neuron matters
    assert true[form] == pytest.approx(1.0, abs=0.02)
    assert abs(wrong[form]) < 0.1, wrong
    assert constant[form] == pytest.approx(0.0, abs=1e-6)
    assert true["behaviour_resolved"] == 1.0


def test_a_feature_without_effect_is_reported_not_divided_by_zero(planted):
    model, tokens, acts, strings = planted
    dead = 5  # a neuron with no weights: ablating it changes nothing
    (losses,) = behaviour.Patcher(model, HOOK).losses(tokens[:8], dead, 0.0, [torch.ones(8, tokens.shape[1] - 1)])
    results = {s.method: (s.value, note) for s, note in behaviour.behaviour_scores(losses, n_boot=50)}
    assert np.isnan(results["behaviour"][0]) and results["behaviour"][1].startswith("no effect")
    assert np.isnan(results["behaviour_loss"][0]) and results["behaviour_loss"][1].startswith("no effect")
    assert np.isnan(results["behaviour_resolved"][0])


def _losses(damage: np.ndarray, kl_damage: np.ndarray, repaired_share: float) -> behaviour.ContextLosses:
    clean = np.full(len(damage), 3.0)
    return behaviour.ContextLosses(clean, clean + damage, clean + damage * (1 - repaired_share), kl_damage,
                                   kl_damage * (1 - repaired_share))


def test_the_loss_form_is_undefined_where_the_loss_damage_ci_contains_zero():
    """The loss damage changes sign across contexts (its CI straddles 0): the loss ratio's sign is noise, so
    behaviour_loss is stored undefined with the reason, and the KL headline, whose damage is never negative,
    still scores."""
    rng = np.random.default_rng(0)
    damage = rng.normal(0.0, 0.05, 200)
    scores = {s.method: (s, note) for s, note in behaviour.behaviour_scores(
        _losses(damage, np.abs(damage) + 0.01, 0.5), n_boot=200)}
    effect = scores["ablation_effect"][0]
    assert effect.ci_low < 0 < effect.ci_high
    loss, note = scores["behaviour_loss"]
    assert np.isnan(loss.value) and note is not None and "does not exclude 0" in note
    assert scores["behaviour"][0].value == pytest.approx(0.5)
    assert scores["behaviour"][0].ci_low <= 0.5 <= scores["behaviour"][0].ci_high


def test_resolved_means_a_ci_narrower_than_the_bound():
    """Many contexts with a steady damage give a narrow CI (resolved); a few with a wildly varying one do not."""
    rng = np.random.default_rng(1)
    steady = {s.method: s for s, _ in behaviour.behaviour_scores(
        _losses(np.full(300, 0.1), rng.uniform(0.05, 0.15, 300), 0.5), n_boot=200)}
    assert steady["behaviour"].ci_high - steady["behaviour"].ci_low < RESOLVED_CI_WIDTH
    assert steady["behaviour_resolved"].value == 1.0
    few = _losses(np.full(6, 0.1), rng.uniform(0.0, 1.0, 6), 0.5)
    few = replace(few, kl_simulated=few.kl_ablated * rng.uniform(0.0, 1.0, 6))
    wide = {s.method: s for s, _ in behaviour.behaviour_scores(few, n_boot=200)}
    assert wide["behaviour"].ci_high - wide["behaviour"].ci_low >= RESOLVED_CI_WIDTH
    assert wide["behaviour_resolved"].value == 0.0


def test_captured_weights_by_kl_damage_and_counts_features_without_effect():
    """Every KL damage is >= 0, so the share is defined whenever one feature is scored; a feature with damage but
    no behaviour score (its ablation changes nothing measurable) is counted, not weighted."""
    from autointerp.analysis.compare import captured_share

    b = np.array([1.0, 0.0, np.nan, 0.5])
    w = np.array([0.3, 0.1, 1e-7, 0.0])
    cap = captured_share(b, w, n_boot=200)
    assert cap.share == pytest.approx((1.0 * 0.3 + 0.0 * 0.1) / 0.4)
    assert cap.scored == 3 and cap.no_effect == 1
    assert cap.ci[0] <= cap.share <= cap.ci[1]
    assert "1 no effect" in cap.text()
    none = captured_share(np.array([np.nan]), np.array([0.0]))
    assert not np.isfinite(none.share) and none.text() == "none scored (1 no effect)"
