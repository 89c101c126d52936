"""SAE formats: SAELens directories and releases, sparsify checkpoints and plain safetensors, loaded
as SAELens SAEs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from autointerp.errors import BadInput
from autointerp.models.lm import resolve_device, torch_dtype

SAELENS_WEIGHTS = "sae_weights.safetensors"  # SAE.save_model
SPARSIFY_WEIGHTS = "sae.safetensors"  # sparsify SparseCoder.save_to_disk, beside cfg.json

# sparsify names an SAE by the HF module whose output it reads (its hookpoint, also its directory name);
# these are the modules whose output is a TransformerLens hook. Prefixes such as "model." are dropped first.
_SPARSIFY_HOOKPOINTS: list[tuple[str, str]] = [
    (r"(?:layers|h|blocks)[._](\d+)", "blocks.{}.hook_resid_post"),
    (r"(?:layers|h|blocks)\.(\d+)\.mlp", "blocks.{}.hook_mlp_out"),
    (r"(?:layers|h|blocks)\.(\d+)\.mlp\.act", "blocks.{}.mlp.hook_post"),  # GPT-2 / NeoX: the GELU output
    (r"(?:layers|h|blocks)\.(\d+)\.(?:self_attn|attn|attention)", "blocks.{}.hook_attn_out"),
    (r"(?:embed_tokens|wte|embed_in)", "hook_embed"),
]
_HF_PREFIXES = ("base_model.model.", "model.", "transformer.", "gpt_neox.", "base_model.")


def sparsify_hook_name(hookpoint: str) -> str | None:
    """The TransformerLens hook of a sparsify hookpoint (an HF module name, e.g. layers.6 -> blocks.6.hook_resid_post)."""
    name = hookpoint.partition("/")[0]  # sparsify allows a '/seedN' suffix
    for prefix in _HF_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    for pattern, hook in _SPARSIFY_HOOKPOINTS:
        m = re.fullmatch(pattern, name)
        if m:
            return hook.format(*m.groups())
    return None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return {k: v.float() for k, v in load_file(str(path), device="cpu").items()}
    except Exception as exc:  # safetensors raises its own error types for a damaged header
        raise BadInput(f"cannot read {path} as safetensors: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _build_sae(where: Path, weights: dict[str, torch.Tensor], hook: str, activation: str,
               k: int | None = None, threshold: torch.Tensor | float | None = None,
               apply_b_dec_to_input: bool = False, place: tuple[str, str] = ("cpu", "float32")) -> Any:
    """A SAELens SAE (StandardSAE / JumpReLUSAE / TopKSAE) holding these weights, so everything downstream
    (FeatureReader, the Patcher's encode and W_dec) treats it like one SAELens loaded."""
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    missing = [n for n in ("W_enc", "b_enc", "W_dec", "b_dec") if n not in weights]
    if missing:
        raise BadInput(f"{where}: no {', '.join(missing)} among its tensors ({', '.join(sorted(weights))})")
    d_in, d_sae = weights["W_enc"].shape if weights["W_enc"].dim() == 2 else (-1, -1)
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    bad = [f"{n} {tuple(weights[n].shape)} (expected {s})" for n, s in want.items() if tuple(weights[n].shape) != s]
    if d_in < 0 or bad:
        raise BadInput(f"{where}: shapes do not fit W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], "
                              f"b_dec [d_in]: {'; '.join(bad) or 'W_enc is not 2-D'}")
    meta = SAEMetadata(hook_name=hook)
    state = {n: weights[n] for n in want}
    common = dict(d_in=int(d_in), d_sae=int(d_sae), apply_b_dec_to_input=apply_b_dec_to_input, metadata=meta,
                  device=place[0], dtype=place[1])
    sae: Any
    if activation == "relu":
        sae = StandardSAE(StandardSAEConfig(**common))
    elif activation == "jumprelu":
        if threshold is None:
            raise BadInput(f"{where}: a jumprelu SAE needs a 'threshold' tensor [d_sae] or number")
        t = threshold if isinstance(threshold, torch.Tensor) else torch.full((int(d_sae),), float(threshold))
        if tuple(t.shape) != (d_sae,):
            raise BadInput(f"{where}: threshold has shape {tuple(t.shape)}, expected ({d_sae},)")
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
        state["threshold"] = t.float()
    elif activation == "topk":
        if not isinstance(k, int) or not 0 < k <= d_sae:
            raise BadInput(f"{where}: a topk SAE needs an integer k in 1..{d_sae}, got {k!r}")
        sae = TopKSAE(TopKSAEConfig(**common, k=k))
    else:
        raise BadInput(f"{where}: unknown activation {activation!r}; expected relu, jumprelu or topk")
    sae.load_state_dict(state)
    return sae


def _load_sparsify(path: Path, place: tuple[str, str]) -> Any:
    """An EleutherAI sparsify checkpoint (the format Delphi reads): cfg.json + sae.safetensors with
    encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec; TopK with cfg k.
    sparsify encodes topk(relu(encoder(x - b_dec))) for an SAE, which is SAELens's TopK with b_dec applied."""
    cfg = _read_json(path / "cfg.json")
    if cfg.get("transcode"):
        raise BadInput(f"{path} is a sparsify transcoder (transcode=true): it reads one hook and writes "
                              "another, which collection and behaviour scores do not model; only SAEs are supported")
    if cfg.get("activation", "topk") != "topk":
        raise BadInput(f"{path}: sparsify activation {cfg.get('activation')!r} is not supported (only topk)")
    hook = cfg.get("hook_name") or sparsify_hook_name(path.name)
    if hook is None:
        raise BadInput(
            f"{path}: cannot tell the TransformerLens hook of sparsify hookpoint '{path.name}' (known: layers.N, "
            "layers.N.mlp, layers.N.self_attn, h.N.mlp.act, embed_tokens); add \"hook_name\": \"blocks.N....\" "
            "to its cfg.json (sparsify ignores extra keys)")
    raw = _read_safetensors(path / SPARSIFY_WEIGHTS)
    if "encoder.weight" not in raw or "W_dec" not in raw:
        raise BadInput(f"{path / SPARSIFY_WEIGHTS}: expected sparsify's encoder.weight, encoder.bias, W_dec, "
                              f"b_dec; found {', '.join(sorted(raw))}")
    weights = {"W_enc": raw["encoder.weight"].T.contiguous(), "b_enc": raw.get("encoder.bias"),
               "W_dec": raw["W_dec"], "b_dec": raw.get("b_dec")}
    d_in = cfg.get("d_in")
    if d_in is not None and int(d_in) != raw["encoder.weight"].shape[-1]:
        raise BadInput(f"{path}: cfg.json says d_in={d_in} but encoder.weight is "
                              f"{tuple(raw['encoder.weight'].shape)}")
    return _build_sae(path, {n: t for n, t in weights.items() if t is not None}, hook, "topk", k=cfg.get("k"),
                      apply_b_dec_to_input=True, place=place)


def _load_plain(path: Path, place: tuple[str, str]) -> Any:
    """A .safetensors file with W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec (and threshold for
    jumprelu), described by a JSON sidecar of the same name (x.safetensors -> x.json)."""
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        raise BadInput(
            f"--sae {path}: a bare safetensors file needs a JSON sidecar {sidecar.name} beside it, e.g. "
            '{"hook_name": "blocks.6.hook_resid_post", "activation": "relu" | "jumprelu" | "topk", "k": 32}')
    meta = _read_json(sidecar)
    hook = meta.get("hook_name")
    if not isinstance(hook, str) or not hook:
        raise BadInput(f"{sidecar}: needs \"hook_name\" (the TransformerLens hook the SAE reads)")
    weights = _read_safetensors(path)
    threshold = weights.get("threshold", meta.get("threshold"))
    return _build_sae(path, weights, hook, str(meta.get("activation", "")), k=meta.get("k"), threshold=threshold,
                      apply_b_dec_to_input=bool(meta.get("apply_b_dec_to_input", False)), place=place)


def _load_saelens_dir(path: Path, place: tuple[str, str]) -> Any:
    from sae_lens import SAE

    try:
        return SAE.load_from_disk(str(path), device=place[0], dtype=place[1])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f"cannot load a SAELens SAE from {path}: {exc}") from exc


def _load_local(path: Path, place: tuple[str, str]) -> Any:
    if path.is_file():
        if path.suffix == ".safetensors":
            return _load_plain(path, place)
        raise BadInput(f"--sae {path}: a file, but not .safetensors; expected a SAELens directory, a sparsify "
                              "checkpoint directory, or a .safetensors file with a JSON sidecar")
    names = sorted(p.name for p in path.iterdir())
    if (path / "cfg.json").exists() and (path / SAELENS_WEIGHTS).exists():
        return _load_saelens_dir(path, place)
    if (path / "cfg.json").exists() and (path / SPARSIFY_WEIGHTS).exists():
        return _load_sparsify(path, place)
    hookpoints = [n for n in names if (path / n / SPARSIFY_WEIGHTS).exists()]
    if hookpoints:
        raise BadInput(f"--sae {path} holds sparsify SAEs for several hookpoints; pass one of them: "
                              + ", ".join(str(path / n) for n in hookpoints[:8]))
    raise BadInput(
        f"--sae {path}: not a known SAE format (found {', '.join(names[:12]) or 'an empty directory'}); expected "
        f"SAELens (cfg.json + {SAELENS_WEIGHTS}), sparsify (cfg.json + {SPARSIFY_WEIGHTS}), or a .safetensors file "
        "with a JSON sidecar")


def load_sae(spec: str, device: str | torch.device = "cpu", dtype: str = "float32") -> Any:
    """An SAE as a SAELens SAE object, from: a SAELens directory (`SAE.save_model`), an EleutherAI sparsify
    checkpoint directory (cfg.json + sae.safetensors, one hookpoint), a .safetensors file with W_enc / b_enc /
    W_dec / b_dec and a JSON sidecar, or 'release:sae_id' from the hub."""
    from sae_lens import SAE

    torch_dtype(dtype)
    place = (str(device if isinstance(device, torch.device) else resolve_device(device)), dtype)
    path = Path(spec)
    if path.exists():
        sae = _load_local(path, place)
    else:
        if ":" not in spec:
            raise BadInput(
                f"--sae {spec}: no such file or directory; for a SAELens release write RELEASE:SAE_ID "
                "(e.g. gpt2-small-res-jb:blocks.8.hook_resid_pre)"
            )
        release, sae_id = spec.split(":", 1)
        try:
            sae = SAE.from_pretrained(release, sae_id, device=place[0], dtype=place[1])
        except Exception as exc:  # SAELens raises many kinds for an unknown release or no network
            raise BadInput(f"cannot load SAELens SAE {release}:{sae_id}: {exc}") from exc
    sae.eval()
    return sae


def sae_hook_name(sae: Any) -> str:
    return str(sae.cfg.metadata.hook_name)


def sae_model_kwargs(sae: Any) -> dict[str, Any]:
    return dict(getattr(sae.cfg.metadata, "model_from_pretrained_kwargs", None) or {})
