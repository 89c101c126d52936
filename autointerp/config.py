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


class LabelConfig(Frozen):
    """What `autointerp explain`, `score` and `run` do after collection."""

    explainer_model: str = Field("smollm2-135m-instruct", description="model name sent to the explainer endpoint")
    simulator_model: str = Field("smollm2-135m-instruct", description="model name sent to the simulator endpoint")
    simulator_mode: str = Field("echo", pattern="^(echo|chat)$",
                                description="echo: one completions request per context with prompt logprobs; "
                                            "chat: JSON answers, for endpoints without echo")
    concurrency: int = Field(8, gt=0, le=1024, description="requests in flight at once")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout")
    max_attempts: int = Field(6, gt=0, le=50, description="tries per request (429, 5xx, timeouts, dropped connections)")
    max_cost_usd: float | None = Field(None, gt=0, description="stop the batch cleanly when this much is spent")
    max_tokens: int | None = Field(None, gt=0, description="stop the batch cleanly after this many tokens")
    n_explain_top: int = Field(10, ge=0, description="explain-split top contexts shown to the explainer")
    n_explain_quantile: int = Field(10, ge=0, description="explain-split quantile contexts shown to the explainer")
    max_reasks: int = Field(2, ge=0, le=10, description="re-asks after an unusable explainer reply")
    n_sim_top: int = Field(10, ge=1, description="holdout top contexts simulated (odd ranks calibrate, even ranks score)")
    n_sim_random: int = Field(10, ge=1, description="holdout random contexts simulated (same split rule)")
    n_boot: int = Field(1000, ge=10, description="bootstrap resamples for the 95% CIs")
    judge: bool = Field(True, description="also score detection and fuzzing (Delphi), one chat request each")
    n_judge: int = Field(5, ge=1, description="positive and negative examples each for detection and fuzzing")
    baseline: bool = Field(True, description="also label and score every feature with the token-lookup baseline")
