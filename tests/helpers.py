"""Builders for tests: a tiny tokenizer and GPT-2-shaped model saved as a real HF directory,
tiny corpora, and SAELens SAEs saved to disk. Nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

SAMPLE_TEXT = """The cat sat on the mat. The dog ran to the park and back again.
Numbers like 12, 345 and 6789 appear in text; so do dates such as 1999-12-31.
def add(a, b):
    return a + b
Rivers flow to the sea. Mountains rise above the clouds, and snow falls in winter.
She said "hello" and he answered 'goodbye'. They laughed.
""" * 3


def make_tokenizer(text: str = SAMPLE_TEXT, vocab_size: int = 300) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


def make_model_dir(path: Path, seed: int = 0, n_layer: int = 2, n_embd: int = 32) -> Path:
    """A tiny Llama (SmolLM2's architecture) with random weights, saved with its tokenizer as an HF model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), max_position_embeddings=256, hidden_size=n_embd, intermediate_size=2 * n_embd,
                      num_hidden_layers=n_layer, num_attention_heads=4, num_key_value_heads=2,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    # Larger-than-default weights so that activations vary a lot between tokens.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_sae_dir(path: Path, hook: str, d_in: int, d_sae: int = 48, seed: int = 0) -> Path:
    """A SAELens StandardSAE with random weights, saved with SAELens's own save_model."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=SAEMetadata(hook_name=hook, model_name="tiny"))
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.5)
        sae.b_enc.fill_(-0.1)
    path.mkdir(parents=True, exist_ok=True)
    sae.save_model(path)
    return path


def random_encoder(d_in: int, d_sae: int, seed: int = 0) -> Any:
    """[d_in, d_sae] random unit-scale encoder directions (a trained SAE's sparsity comes from its activation)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(d_in, d_sae, generator=g) / d_in**0.5


def make_topk_sae_dir(path: Path, hook: str, d_in: int, d_sae: int, k: int, seed: int = 0) -> Path:
    """An EleutherAI sparsify TopK checkpoint (cfg.json + sae.safetensors) with random weights: k latents per token."""
    from safetensors.torch import save_file

    enc = random_encoder(d_in, d_sae, seed)
    path.mkdir(parents=True, exist_ok=True)
    save_file({"encoder.weight": enc.T.contiguous(), "encoder.bias": torch.zeros(d_sae), "W_dec": enc.T.contiguous(),
               "b_dec": torch.zeros(d_in)}, str(path / "sae.safetensors"))
    (path / "cfg.json").write_text(json.dumps({"k": k, "d_in": d_in, "hook_name": hook, "activation": "topk"}))
    return path


def make_jumprelu_sae_file(path: Path, hook: str, enc: Any, threshold: Any) -> Path:
    """A JumpReLU SAE as a .safetensors file with its JSON sidecar: encoder enc [d_in, d_sae], thresholds [d_sae]."""
    from safetensors.torch import save_file

    d_in, d_sae = enc.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"W_enc": enc.contiguous(), "b_enc": torch.zeros(d_sae), "W_dec": enc.T.contiguous(),
               "b_dec": torch.zeros(d_in), "threshold": threshold.float().contiguous()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"hook_name": hook, "activation": "jumprelu"}))
    return path


def write_corpus(path: Path, n_paragraphs: int = 60) -> Path:
    """A .txt corpus of varied paragraphs (deterministic)."""
    words = SAMPLE_TEXT.split()
    paras = []
    for i in range(n_paragraphs):
        k = (i * 7) % len(words)
        paras.append(" ".join(words[k:] + words[:k])[: 200 + (i * 37) % 400])
    path.write_text("\n\n".join(paras) + "\n")
    return path


HOOK = "blocks.0.mlp.hook_post"
TINY_COLLECT = dict(hook=HOOK, n_tokens=1600, ctx_len=16, top_k=6, n_quantiles=2, per_quantile=2, n_random=6)
PRICES = {"m-explain": [1.0, 2.0], "m-sim": [0.5, 0.0]}


def query(db: Path, sql: str, params: tuple | list = ()) -> list[tuple]:
    """Rows of `sql` on a read-only connection to `db` (closed before returning)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def copy_db(src: Path, dst: Path) -> Path:
    dst.write_bytes(src.read_bytes())
    return dst


def run_label(db: Path, url: str, features: list[int], *, dictionary_id: int = 1, explain: bool = True,
              score: bool = True, api_key: str = "sk-secret-test-key", null_samples: int = 0,
              reference: bool = False, llm: dict | None = None, **cfg: Any) -> Any:
    """The label stage through its Python entry point, against the endpoint at `url` (the test price table)."""
    import json
    import tempfile

    from autointerp.config import LabelConfig, LLMConfig
    from autointerp.label.stage import label_stage, open_llm

    prices = Path(tempfile.mkstemp(suffix=".json")[1])
    prices.write_text(json.dumps(PRICES))
    llm_cfg = LLMConfig(**{"base_urls": (url,), "explainer_model": "m-explain", "simulator_model": "m-sim",
                           "concurrency": 4, "timeout_s": 2.0, "max_attempts": 4, "max_wait_s": 1.0,
                           "prices": str(prices), **(llm or {})})
    label_cfg = LabelConfig(**{"n_sim_top": 6, "n_sim_random": 6, "n_boot": 200, "null_samples": null_samples,
                              "reference": reference, **cfg})
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = api_key
    try:
        with open_llm(llm_cfg) as session:
            return label_stage(db, dictionary_id, features, label_cfg, session, explain_stage=explain,
                               score_stage=score, concurrency=llm_cfg.concurrency)
    finally:
        if old is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old
        prices.unlink()
