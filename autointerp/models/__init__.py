"""Models: language models (lm), random-init schemes (random_init), SAE formats (sae) and the feature
reader (reader). The only package besides collect and behaviour that imports torch, transformer_lens and
sae_lens; it imports nothing of autointerp but errors. Its public names are re-exported here."""

from autointerp.models.lm import (
    DTYPES,
    OFFLINE_HF_DIRNAME,
    OFFLINE_MODEL,
    cache_dir,
    load_model,
    load_tokenizer,
    offline_hf_dir,
    resolve_device,
    smollm2_gguf_path,
    torch_dtype,
)
from autointerp.models.random_init import EMBEDDING_MODULES, INIT_SCHEMES, random_init_copy
from autointerp.models.reader import FeatureFn, FeatureReader, stop_layer
from autointerp.models.sae import (
    SAELENS_WEIGHTS,
    SPARSIFY_WEIGHTS,
    load_sae,
    sae_hook_name,
    sae_model_kwargs,
    sparsify_hook_name,
)

__all__ = [
    "DTYPES", "EMBEDDING_MODULES", "INIT_SCHEMES", "OFFLINE_HF_DIRNAME", "OFFLINE_MODEL", "SAELENS_WEIGHTS",
    "SPARSIFY_WEIGHTS", "FeatureFn", "FeatureReader", "cache_dir", "load_model", "load_sae", "load_tokenizer", "offline_hf_dir",
    "random_init_copy", "resolve_device", "sae_hook_name", "sae_model_kwargs", "smollm2_gguf_path",
    "sparsify_hook_name", "stop_layer", "torch_dtype",
]
