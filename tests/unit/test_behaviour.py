"""Behaviour scores on a tiny model with a planted neuron whose true rule is known: it fires on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

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
    text = (SAMPLE_TEXT + " 12 345 6789 2024 1999 42 7 ") * 4
    path = tmp_path_factory.mktemp("text") / "digits.txt"
    path.write_text(text)
    ctxs = np.stack(list(corpus.contexts(corpus.pieces(str(path)), tok, 24, 40)))
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
    model, tokens, acts, strings = planted
    pred = torch.tensor([[9.0 if rule(t) else 0.0 for t in row] for row in strings])
    cal, sc = slice(0, 20), slice(20, None)  # calibration contexts, scored contexts
    a, b = scoring.fit_calibration([(acts[i].numpy(), pred[i].numpy()) for i in range(20)])
    replacement = pred[sc] * a + b
    mean_act = float(acts.mean())
    (losses,) = behaviour.Patcher(model, HOOK).losses(tokens[sc], K, mean_act, [replacement])
    del cal
    return {s.method: s.value for s, _ in behaviour.behaviour_scores(losses, n_boot=200)}


def test_planted_neuron_fires_on_digits(planted):
    _, _, acts, strings = planted
    flat_acts = acts.flatten().numpy()
    flat_digit = np.array([has_digit(t) for row in strings for t in row])
    assert flat_digit.any() and (~flat_digit).any()
    assert np.allclose(flat_acts[flat_digit], 4.5, atol=1e-4) and np.allclose(flat_acts[~flat_digit], 0.0, atol=1e-4)


def test_true_rule_earns_a_high_behaviour_score_and_a_wrong_rule_a_low_one(planted):
    true = _score(planted, has_digit)
    wrong = _score(planted, lambda t: t.strip().lower().startswith(("t", "a", "s")))
    constant = _score(planted, lambda t: True)
    assert true["ablation_effect"] > 0.01  # the neuron matters: ablating it costs loss
    assert true["behaviour"] == pytest.approx(1.0, abs=0.02) and true["behaviour_kl"] == pytest.approx(1.0, abs=0.02)
    assert wrong["behaviour"] < 0.3 and wrong["behaviour_kl"] < 0.3
    # A constant simulation is nearly the ablation (its level is the calibration contexts' mean, not the run's).
    assert abs(constant["behaviour"]) < 0.15


def test_a_feature_without_effect_is_reported_not_divided_by_zero(planted):
    model, tokens, acts, strings = planted
    dead = 5  # a neuron with no weights: ablating it changes nothing
    (losses,) = behaviour.Patcher(model, HOOK).losses(tokens[:8], dead, 0.0, [torch.ones(8, tokens.shape[1] - 1)])
    results = {s.method: (s.value, note) for s, note in behaviour.behaviour_scores(losses, n_boot=50)}
    assert np.isnan(results["behaviour"][0]) and results["behaviour"][1].startswith("no effect")
    assert np.isnan(results["behaviour_kl"][0]) and results["behaviour_kl"][1].startswith("no effect")
