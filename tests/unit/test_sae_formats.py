"""SAEs in formats other than SAELens's: EleutherAI sparsify checkpoints and a bare safetensors file with a JSON
sidecar. Each is written here the way its library writes it, loaded with load_sae, and checked against the
activation computed by hand from the weights, alone and through collection on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import nn

from autointerp.collect import corpus
from autointerp.collect.stage import collect_stage
from autointerp.config import CollectConfig
from autointerp.errors import AutointerpError
from autointerp.models import FeatureReader, load_sae, sparsify_hook_name

D_SAE = 40


# ---------------------------------------------------------------- writers, transcribed from the libraries


class _SparsifyLayout(nn.Module):
    """The parameters of sparsify's SparseCoder (EleutherAI/sparsify, sparsify/sparse_coder.py at commit
    9d3b136c9217565af11089081444770e0d31673d): encoder = nn.Linear(d_in, num_latents), W_dec [num_latents, d_in],
    b_dec [d_in]. save_to_disk calls safetensors' save_model(self, 'sae.safetensors'), so the file's keys are
    encoder.weight, encoder.bias, W_dec, b_dec."""

    def __init__(self, d_in: int, d_sae: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.encoder = nn.Linear(d_in, d_sae)
        with torch.no_grad():
            self.encoder.weight.copy_(torch.randn(d_sae, d_in, generator=g) * 0.5)
            self.encoder.bias.copy_(torch.randn(d_sae, generator=g) * 0.1 - 0.05)
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in, generator=g))
        self.b_dec = nn.Parameter(torch.randn(d_in, generator=g) * 0.1)


def write_sparsify(path: Path, d_in: int, k: int, d_sae: int = D_SAE, seed: int = 0, **cfg_overrides) -> Path:
    """A sparsify checkpoint directory as SparseCoder.save_to_disk writes it: sae.safetensors + cfg.json holding
    SparseCoderConfig.to_dict() (sparsify/config.py: activation, expansion_factor, normalize_decoder,
    num_latents, k, multi_topk, skip_connection, transcode) plus d_in."""
    path.mkdir(parents=True, exist_ok=True)
    save_model(_SparsifyLayout(d_in, d_sae, seed), str(path / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": d_sae, "k": k,
           "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": d_in}
    cfg.update(cfg_overrides)
    (path / "cfg.json").write_text(json.dumps(cfg))
    return path


def write_plain(path: Path, d_in: int, hook: str, activation: str, d_sae: int = D_SAE, seed: int = 0,
                **sidecar) -> Path:
    """W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec (+ threshold for jumprelu) in x.safetensors and
    {"hook_name", "activation", ...} in x.json."""
    g = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(d_in, d_sae, generator=g) * 0.5, "b_enc": torch.randn(d_sae, generator=g) * 0.1,
               "W_dec": torch.randn(d_sae, d_in, generator=g), "b_dec": torch.randn(d_in, generator=g) * 0.1}
    if activation == "jumprelu" and "threshold" not in sidecar:
        tensors["threshold"] = torch.rand(d_sae, generator=g) * 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    path.with_suffix(".json").write_text(json.dumps({"hook_name": hook, "activation": activation, **sidecar}))
    return path


# ---------------------------------------------------------------- hand computations, in numpy from the files


def _tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def sparsify_by_hand(ckpt: Path, x: np.ndarray) -> np.ndarray:
    """sparsify's encode: relu(encoder(x - b_dec)), then the k largest per token; the rest zero (dense)."""
    t, k = _tensors(ckpt / "sae.safetensors"), json.loads((ckpt / "cfg.json").read_text())["k"]
    pre = np.maximum((x - t["b_dec"]) @ t["encoder.weight"].T + t["encoder.bias"], 0)
    out = np.zeros_like(pre)
    keep = np.argsort(-pre, axis=-1, kind="stable")[..., :k]
    np.put_along_axis(out, keep, np.take_along_axis(pre, keep, -1), -1)
    return out


def plain_by_hand(file: Path, x: np.ndarray) -> np.ndarray:
    t, meta = _tensors(file), json.loads(file.with_suffix(".json").read_text())
    x_in = x - t["b_dec"] if meta.get("apply_b_dec_to_input") else x
    pre = x_in @ t["W_enc"] + t["b_enc"]
    act = meta["activation"]
    if act == "relu":
        return np.maximum(pre, 0)
    if act == "jumprelu":
        thr = t["threshold"] if "threshold" in t else np.float32(meta["threshold"])
        return np.where(pre > thr, pre, 0)
    out = np.zeros_like(pre)
    keep = np.argsort(-pre, axis=-1, kind="stable")[..., : meta["k"]]
    np.put_along_axis(out, keep, np.maximum(np.take_along_axis(pre, keep, -1), 0), -1)
    return out


def _x(d_in: int, n: int = 50) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, d_in)).astype(np.float32)


def _encode(sae, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return sae.encode(torch.from_numpy(x)).numpy()


# ---------------------------------------------------------------- loading


@pytest.mark.parametrize("k", [1, 5])
def test_sparsify_encode_equals_hand_computation(tmp_path, k):
    ckpt = write_sparsify(tmp_path / "layers.1", d_in=32, k=k)
    sae = load_sae(str(ckpt))
    x = _x(32)
    got = _encode(sae, x)
    np.testing.assert_allclose(got, sparsify_by_hand(ckpt, x), atol=1e-5)
    assert ((got != 0).sum(-1) <= k).all() and (got != 0).any()
    assert (int(sae.cfg.d_in), int(sae.cfg.d_sae)) == (32, D_SAE)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    np.testing.assert_array_equal(sae.W_dec.detach().numpy(), _tensors(ckpt / "sae.safetensors")["W_dec"])


def test_sparsify_bf16_weights_load_as_float32(tmp_path):
    ckpt = write_sparsify(tmp_path / "layers.0", d_in=32, k=3)
    t = _tensors(ckpt / "sae.safetensors")
    save_file({n: torch.from_numpy(v).bfloat16() for n, v in t.items()}, str(ckpt / "sae.safetensors"))
    sae = load_sae(str(ckpt))
    assert sae.W_enc.dtype == torch.float32
    x = _x(32)
    bf = {n: torch.from_numpy(v).bfloat16().float().numpy() for n, v in t.items()}
    pre = np.maximum((x - bf["b_dec"]) @ bf["encoder.weight"].T + bf["encoder.bias"], 0)
    got = _encode(sae, x)
    for row, p in zip(got, pre, strict=True):
        top = np.sort(p)[-3:]
        np.testing.assert_allclose(np.sort(row[row != 0]), top[top > 0], atol=1e-4)


@pytest.mark.parametrize(("hookpoint", "hook"), [
    ("layers.6", "blocks.6.hook_resid_post"),
    ("model.layers.6", "blocks.6.hook_resid_post"),
    ("h.3", "blocks.3.hook_resid_post"),
    ("layers.2.mlp", "blocks.2.hook_mlp_out"),
    ("h.2.mlp.act", "blocks.2.mlp.hook_post"),
    ("layers.4.self_attn", "blocks.4.hook_attn_out"),
    ("h.4.attn", "blocks.4.hook_attn_out"),
    ("embed_tokens", "hook_embed"),
    ("layers.10/seed1", "blocks.10.hook_resid_post"),
    ("layers.2.mlp.act_fn", None),  # Llama's act_fn output is not a TransformerLens hook
    ("layers.2.input_layernorm", None),
])
def test_sparsify_hookpoint_names(hookpoint, hook):
    assert sparsify_hook_name(hookpoint) == hook


@pytest.mark.parametrize(("activation", "extra"), [
    ("relu", {}),
    ("relu", {"apply_b_dec_to_input": True}),
    ("jumprelu", {}),
    ("jumprelu", {"threshold": 0.3}),
    ("topk", {"k": 4}),
])
def test_plain_safetensors_encode_equals_hand_computation(tmp_path, activation, extra):
    file = write_plain(tmp_path / "my_sae.safetensors", d_in=32, hook="blocks.1.hook_resid_post",
                       activation=activation, **extra)
    sae = load_sae(str(file))
    x = _x(32)
    got = _encode(sae, x)
    np.testing.assert_allclose(got, plain_by_hand(file, x), atol=1e-5)
    assert (got != 0).any() and (got == 0).any()
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def test_jumprelu_threshold_is_applied(tmp_path):
    """Pre-activations between 0 and the threshold are zero for jumprelu, not for relu: the two differ."""
    x = _x(32)
    relu = _encode(load_sae(str(write_plain(tmp_path / "r.safetensors", 32, "blocks.0.hook_resid_post", "relu"))), x)
    jump = _encode(load_sae(str(write_plain(tmp_path / "j.safetensors", 32, "blocks.0.hook_resid_post", "jumprelu",
                                            threshold=0.5))), x)
    small = (relu > 0) & (relu <= 0.5)
    assert small.any()
    assert (jump[small] == 0).all() and np.allclose(jump[~small], relu[~small], atol=1e-6)


@pytest.mark.parametrize(("make", "match"), [
    (lambda p: write_sparsify(p / "layers.1", 32, k=4, activation="groupmax"), "groupmax"),
    (lambda p: write_sparsify(p / "layers.1", 32, k=4, transcode=True), "transcoder"),
    (lambda p: write_sparsify(p / "layers.1.mlp.act_fn", 32, k=4), "hook_name"),
    (lambda p: write_sparsify(p / "layers.1", 32, k=0), "k in 1..40"),
    (lambda p: (write_sparsify(p / "run" / "layers.0", 32, k=4), write_sparsify(p / "run" / "layers.1", 32, k=4))
     and p / "run", "several hookpoints"),
    (lambda p: write_plain(p / "s.safetensors", 32, "blocks.0.hook_resid_post", "gelu"), "unknown activation 'gelu'"),
    (lambda p: write_plain(p / "s.safetensors", 32, "blocks.0.hook_resid_post", "topk"), "integer k"),
    (lambda p: save_file({"W_enc": torch.zeros(4, 6)}, str(p / "s.safetensors")) or p / "s.safetensors",
     "JSON sidecar s.json"),
    (lambda p: (p / "notes.txt").write_text("hi") and p, "not a known SAE format .*notes.txt"),
    (lambda p: (p / "w.pt").write_text("x") and p / "w.pt", "not .safetensors"),
])
def test_unknown_or_unsupported_sae_is_a_clear_error(tmp_path, make, match):
    target = make(tmp_path)
    with pytest.raises(AutointerpError, match=match):
        load_sae(str(target))


def test_plain_with_wrong_shapes_names_them(tmp_path):
    file = tmp_path / "s.safetensors"
    save_file({"W_enc": torch.zeros(32, 40), "b_enc": torch.zeros(40), "W_dec": torch.zeros(32, 40),
               "b_dec": torch.zeros(32)}, str(file))
    file.with_suffix(".json").write_text(json.dumps({"hook_name": "blocks.0.hook_resid_post", "activation": "relu"}))
    with pytest.raises(AutointerpError, match=r"W_dec \(32, 40\) \(expected \(40, 32\)\)"):
        load_sae(str(file))


# ---------------------------------------------------------------- collection through each format


def _collect_and_compare(tmp_path, tiny_model, tiny_model_dir, corpus_file, sae_spec: str, hook: str, by_hand):
    db = tmp_path / "sae.duckdb"
    cfg = CollectConfig(model=str(tiny_model_dir), hook=None, sae=sae_spec, dataset=str(corpus_file), n_tokens=800,
                        ctx_len=16, top_k=4, n_quantiles=2, per_quantile=2, n_random=4, batch_size=7, seed=3)
    out = collect_stage(db, cfg, model=tiny_model)
    assert out.n_features == D_SAE
    ctxs = np.stack(list(corpus.contexts(corpus.pieces(cfg.dataset), tiny_model.tokenizer, cfg.ctx_len,
                                         cfg.n_tokens // cfg.ctx_len)))
    inputs = torch.cat([torch.full((len(ctxs), 1), tiny_model.tokenizer.bos_token_id), torch.from_numpy(ctxs)], 1)
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(inputs, names_filter=[hook])
    acts = by_hand(cache[hook][:, 1:].float().numpy())
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT kind, hook, sae FROM dictionaries").fetchall() == [("sae", hook, sae_spec)]
        rows = con.execute("SELECT feature, seq, acts FROM examples").fetchall()
    finally:
        con.close()
    assert rows
    worst = max(float(np.abs(np.asarray(a) - acts[s, :, f]).max()) for f, s, a in rows)
    assert worst <= 1e-4
    assert any(max(a) > 0 for _, _, a in rows)


def test_collect_with_a_sparsify_checkpoint(tmp_path, tiny_model, tiny_model_dir, corpus_file):
    ckpt = write_sparsify(tmp_path / "ckpt" / "layers.1", d_in=tiny_model.cfg.d_model, k=6)
    _collect_and_compare(tmp_path, tiny_model, tiny_model_dir, corpus_file, str(ckpt), "blocks.1.hook_resid_post",
                         lambda x: sparsify_by_hand(ckpt, x))


@pytest.mark.parametrize(("activation", "extra", "hook"), [
    ("relu", {}, "blocks.0.mlp.hook_post"),
    ("jumprelu", {}, "blocks.1.hook_resid_post"),
    ("topk", {"k": 5}, "blocks.0.hook_resid_post"),
])
def test_collect_with_a_plain_safetensors_sae(tmp_path, tiny_model, tiny_model_dir, corpus_file, activation, extra,
                                              hook):
    d_in = int(FeatureReader(tiny_model, hook)._raw_width())
    file = write_plain(tmp_path / "sae.safetensors", d_in=d_in, hook=hook, activation=activation, **extra)
    _collect_and_compare(tmp_path, tiny_model, tiny_model_dir, corpus_file, str(file), hook,
                         lambda x: plain_by_hand(file, x))


# ---------------------------------------------------------------- against the real sparsify package (dev only)


def test_encode_equals_the_sparsify_package(tmp_path):
    """Dev-only: `pip install --no-deps eai-sparsify natsort schedulefree` (torch, transformers etc. as ours)."""
    sparsify = pytest.importorskip("sparsify")
    torch.manual_seed(0)
    coder = sparsify.SparseCoder(32, sparsify.SparseCoderConfig(num_latents=D_SAE, k=7))
    with torch.no_grad():
        coder.encoder.bias.normal_(0, 0.1)
        coder.b_dec.normal_(0, 0.1)
    coder.save_to_disk(tmp_path / "layers.1")
    x = torch.from_numpy(_x(32))
    with torch.no_grad():
        top_acts, top_idx, _ = coder.encode(x)
    want = torch.zeros(len(x), D_SAE).scatter_(-1, top_idx, top_acts).numpy()
    ours = load_sae(str(tmp_path / "layers.1"))
    np.testing.assert_allclose(_encode(ours, x.numpy()), want, atol=1e-5)
    np.testing.assert_allclose(ours.W_dec.detach().numpy(), coder.W_dec.detach().numpy())
