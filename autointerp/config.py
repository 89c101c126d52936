"""One frozen config tree. Every field is described; values are validated when the config is built."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CollectConfig(Frozen):
    """What `autointerp collect` does. Defaults follow Delphi and OpenAI's neuron explainer (README: Collection)."""

    model: str = Field("smollm2-135m", description="TransformerLens model name, local HF model directory, or 'smollm2-135m' (offline)")
    hook: str | None = Field(None, description="TransformerLens hook point whose activations (or SAE input) are the features; "
                             "default: the SAE's hook, else blocks.6.mlp.hook_post")
    sae: str | None = Field(None, description="SAELens SAE: a local directory saved by SAELens, or 'release:sae_id'; None for neurons")
    dataset: str = Field("default", description="'default', a .txt/.jsonl/.parquet file or directory, or an HF dataset name")
    text_field: str = Field("text", description="field holding the text in .jsonl/.parquet/HF datasets")
    n_tokens: int = Field(200_000, gt=0, description="tokens to collect over (text tokens, BOS not counted)")
    ctx_len: int = Field(64, gt=1, le=4096, description="text tokens per context")
    seed: int = Field(0, ge=0, description="seeds the split assignment, the random and quantile samples, and random init")
    batch_size: int = Field(16, gt=0, description="contexts per forward pass")
    top_k: int = Field(20, gt=0, description="top-activating contexts kept per feature and split")
    n_quantiles: int = Field(10, gt=0, description="rank-quantile bins of active contexts (Delphi's 10)")
    per_quantile: int = Field(5, gt=0, description="contexts sampled from each quantile bin per split")
    n_random: int = Field(20, gt=0, description="random contexts per split (the same contexts for every feature)")
    holdout_frac: float = Field(0.2, gt=0.0, lt=1.0, description="share of contexts assigned to the holdout split")
    threshold: float = Field(0.0, description="a token is 'active' when its activation exceeds this")
    features: tuple[int, int] | None = Field(None, description="collect only features [start, stop) of the hook or SAE")
    random_init: bool = Field(False, description="collect on a freshly initialised copy of the model (seeded by `seed`)")

    @model_validator(mode="after")
    def _check(self) -> CollectConfig:
        if self.n_tokens < self.ctx_len:
            raise ValueError(
                f"--tokens {self.n_tokens} is smaller than one context (--ctx-len {self.ctx_len}); "
                "ask for at least ctx_len tokens"
            )
        if self.features is not None and not (0 <= self.features[0] < self.features[1]):
            raise ValueError(f"features range {self.features} is empty or negative; use START:STOP with START < STOP")
        return self

    @property
    def reservoir_size(self) -> int:
        """Active contexts sampled uniformly per feature and split, from which quantile samples are drawn."""
        return 2 * self.n_quantiles * self.per_quantile

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (batch size does not)."""
        return self.model_dump(exclude={"batch_size"})

    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
