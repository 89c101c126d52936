"""One frozen config tree. Every field is described; values are validated when the config is built."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autointerp.errors import BadInput

# The random-init control's schemes (models.INIT_SCHEMES builds them; Heap et al. 2025, arXiv 2501.17727).
RANDOM_INIT_SCHEMES: dict[str, str] = {
    "init": "the architecture's initialisation (TransformerLens's), like the paper's untrained Step-0 model",
    "rerandomised": "every parameter tensor replaced by Gaussian noise with that tensor's trained mean and std",
    "rerandomised-keep-embeddings": "as rerandomised, but the trained embeddings, positions and unembedding are kept",
}


class Frozen(BaseModel):
    # allow_inf_nan=False: a NaN threshold or price compares false with everything and silently changes results
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


BIGINT_MAX = 2**63 - 1  # the store keeps seeds and ids as BIGINT


def option_flag(field: str) -> str:
    """The command-line option of a config field (`n_tokens` -> `--tokens`), for error messages."""
    for model in Frozen.__subclasses__():
        info = model.model_fields.get(field)
        if info is not None:
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            return "--" + str(extra.get("flag") or field.replace("_", "-"))
    return "--" + field.replace("_", "-")


def _check_device(device: str) -> None:
    """The devices collect, behaviour and control accept (whether one exists is checked when loading)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ValueError(f"unknown device '{device}'; use auto, cpu, cuda, cuda:N or mps")


class CollectConfig(Frozen):
    """What `autointerp collect` does. Defaults follow Delphi and OpenAI's neuron explainer (docs/guide/collect.md)."""

    model: str = Field("smollm2-135m", description="TransformerLens model name, local HF model directory, or 'smollm2-135m' (offline)")
    hook: str | None = Field(None, description="TransformerLens hook point whose activations (or SAE input) are the features; "
                             "default: the SAE's hook, else blocks.6.mlp.hook_post")
    sae: str | None = Field(None, description="SAELens SAE: a local directory saved by SAELens, or 'release:sae_id'; None for neurons")
    dataset: str = Field("default", description="'default', a .txt/.jsonl/.parquet file or directory, or an HF dataset name")
    text_field: str = Field("text", description="field holding the text in .jsonl/.parquet/HF datasets")
    n_tokens: int = Field(200_000, gt=0, description="tokens to collect over (text tokens, BOS not counted)", json_schema_extra={"flag": "tokens"})
    ctx_len: int = Field(64, gt=1, le=4096, description="text tokens per context")
    seed: int = Field(0, ge=0, le=BIGINT_MAX, description="seeds the split assignment, the random and quantile samples, and random init")
    batch_size: int = Field(16, gt=0, le=65536, description="contexts per forward pass")
    top_k: int = Field(20, gt=0, le=100_000, description="top-activating contexts kept per feature and split")
    n_quantiles: int = Field(10, gt=0, le=1000, description="rank-quantile bins of active contexts (Delphi's 10)", json_schema_extra={"flag": "quantiles"})
    per_quantile: int = Field(5, gt=0, le=100_000, description="contexts sampled from each quantile bin per split")
    n_random: int = Field(20, gt=0, le=100_000, description="random contexts per split (the same contexts for every feature)", json_schema_extra={"flag": "random"})
    holdout_frac: float = Field(0.2, gt=0.0, lt=1.0, description="share of contexts assigned to the holdout split", json_schema_extra={"flag": "holdout"})
    threshold: float = Field(0.0, description="a token is 'active' when its activation exceeds this")
    features: tuple[int, int] | None = Field(None, description="collect only features [start, stop) of the hook or SAE")
    random_init: bool = Field(False, description="collect on a freshly initialised copy of the model (seeded by `seed`)")
    init_scheme: str = Field("init", description="how random_init makes the copy: "
                             + "; ".join(f"{k}: {v}" for k, v in RANDOM_INIT_SCHEMES.items()))
    device: str = Field("auto", description="where the model runs and activations are reduced: auto (cuda when "
                        "available, else cpu), cpu, cuda, cuda:N or mps")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="precision the model and SAE are loaded in (bfloat16/float16 change the activations "
        "slightly: docs/guide/scale.md)")

    @model_validator(mode="after")
    def _check(self) -> CollectConfig:
        if self.n_tokens < self.ctx_len:
            raise ValueError(
                f"--tokens {self.n_tokens} is smaller than one context (--ctx-len {self.ctx_len}); "
                "ask for at least ctx_len tokens"
            )
        if self.features is not None and not (0 <= self.features[0] < self.features[1]):
            raise ValueError(f"features range {self.features} is empty or negative; use START:STOP with START < STOP")
        if self.init_scheme not in RANDOM_INIT_SCHEMES:
            raise ValueError(f"unknown init_scheme '{self.init_scheme}'; use one of: {', '.join(RANDOM_INIT_SCHEMES)}")
        _check_device(self.device)
        if self.init_scheme != "init" and not self.random_init:
            raise ValueError(f"init_scheme '{self.init_scheme}' needs random_init: it says how to randomise the model")
        return self

    @property
    def reservoir_size(self) -> int:
        """Active contexts sampled uniformly per feature and split, from which quantile samples are drawn."""
        return 2 * self.n_quantiles * self.per_quantile

    def identity(self) -> dict[str, Any]:
        """The fields that decide the result (batch size and device do not). The default init_scheme and dtype
        are left out, so configs written before those fields existed keep their hash."""
        exclude = {"batch_size", "device"} | ({"init_scheme"} if self.init_scheme == "init" else set()) \
            | ({"dtype"} if self.dtype == "float32" else set())
        return self.model_dump(exclude=exclude)

    def config_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Worked examples before each echo simulation, as OpenAI's simulator shows them. Measured on SmolLM2-135M
# (docs/methodology.md, The reference gain): without them the labels "nothing" and "fruit" gained over the reference
# label on held-out contexts; with two, no placebo's gain excluded 0 on 24 features.
DEFAULT_FEWSHOT = 2


class LabelConfig(Frozen):
    """What `autointerp explain`, `score` and `run` do after collection."""

    simulator_mode: Literal["echo", "chat"] = Field(
        "echo", description="echo: completions with prompt logprobs, one request per context; chat: JSON answers, "
        "for endpoints without echo")
    n_explain_top: int = Field(10, ge=0, description="explain-split top contexts shown to the explainer", json_schema_extra={"flag": "explain-top"})
    n_explain_quantile: int = Field(10, ge=0, description="explain-split quantile contexts shown to the explainer", json_schema_extra={"flag": "explain-quantile"})
    max_reasks: int = Field(2, ge=0, le=10, description="re-asks after an unusable explainer reply")
    n_sim_top: int = Field(10, ge=1, description="holdout top contexts simulated (odd ranks calibrate, even ranks score)", json_schema_extra={"flag": "sim-top"})
    n_sim_random: int = Field(10, ge=1, description="holdout random contexts simulated (same split rule)", json_schema_extra={"flag": "sim-random"})
    n_sim_fewshot: int | None = Field(None, ge=0, le=4, description="echo simulator: worked examples before each "
                                      "context (another feature's top context, cut to a window around its peak, with its real "
                                      "0-9 values and its token-lookup label; never the scored feature's own); default: "
                                      f"{DEFAULT_FEWSHOT} with echo, 0 with chat", json_schema_extra={"flag": "sim-fewshot"})
    n_boot: int = Field(1000, ge=10, le=1_000_000, description="bootstrap resamples for the 95% CIs")
    judge: bool = Field(True, description="also score detection and fuzzing (Delphi), one chat request each")
    n_judge: int = Field(5, ge=1, description="positive and negative examples each for detection and fuzzing")
    judge_quiet: float = Field(0.0, ge=0.0, lt=1.0, description="for the judges, a token is inactive at or below "
                               "this fraction of the feature's max (and the collect threshold); 0 is Delphi's rule. "
                               "MLP neurons are rarely exactly 0: e.g. 0.1 lets detection find quiet contexts")
    baseline: bool = Field(True, description="also label and score every feature with the token-lookup baseline")
    null_samples: int = Field(50, ge=0, description="features whose null labels (another feature's label, shuffled; "
                              "and a constant label) are scored like real ones, so every score has a visible zero")
    reference: bool = Field(True, description="simulate the constant label on every scored feature too (one more "
                            "simulation run per feature) so each label gets correlation_gain: its correlation "
                            "minus the constant label's on the same contexts, which is 0 for a label that says "
                            "nothing")
    retry_failed: bool = Field(False, description="make failed explanations and score runs pending again "
                               "(the failures stay as history)")
    explainers: tuple[str, ...] = Field((), description="score the labels of these explainers (repeat the option; "
                                        "e.g. the NAME of imported labels); default: the explainer model's")
    strategy: Literal["one-shot", "best-of-k", "agent"] = Field(
        "one-shot", description="how a label is made: one-shot (one request), best-of-k (k candidates from varied "
        "evidence, each simulated on the calibration contexts only, the best kept) or agent (best-of-k, then "
        "rounds of probe texts run on the subject and revisions); see docs/agent.md")
    k: int = Field(4, ge=1, le=32, description="best-of-k and agent: candidate labels per feature")
    agent_rounds: int = Field(2, ge=0, le=10, description="agent: probe-and-revise rounds per feature")
    agent_probes: int = Field(4, ge=1, le=16, description="agent: probe texts per round (half should activate "
                              "the feature, half should not)")

    @model_validator(mode="after")
    def _fewshot_needs_echo(self) -> LabelConfig:
        if self.n_sim_fewshot and self.simulator_mode != "echo":
            raise ValueError("--sim-fewshot needs --simulator-mode echo (the chat simulator shows no examples)")
        return self

    def strategy_settings(self) -> dict[str, Any]:
        """What decides a best-of-k or agent run's steps: other settings are another run."""
        fields = {"k"} | ({"agent_rounds", "agent_probes"} if self.strategy == "agent" else set())
        return {"strategy": self.strategy, **self.model_dump(include=fields | {"n_explain_top", "n_explain_quantile"})}

    @property
    def fewshot(self) -> int:
        """Worked examples per simulation prompt: as given, else DEFAULT_FEWSHOT for echo and 0 for chat."""
        if self.n_sim_fewshot is not None:
            return self.n_sim_fewshot
        return DEFAULT_FEWSHOT if self.simulator_mode == "echo" else 0

    def simulation_settings(self, prompt_hash: str) -> dict[str, Any]:
        """What decides a simulation run's result: a run with other settings is other, pending work."""
        fewshot = {"n_sim_fewshot": self.fewshot} if self.fewshot else {}  # 0 keeps older runs' keys
        return {"prompt_hash": prompt_hash, **fewshot, **self.model_dump(include={
            "simulator_mode", "n_sim_top", "n_sim_random", "n_boot", "judge", "n_judge", "judge_quiet"})}


class LLMConfig(Frozen):
    """Where LLM requests go and how they are paced and paid for."""

    base_urls: tuple[str, ...] = Field((), description="OpenAI-compatible endpoint; repeat to spread requests. "
                                       "Default: $OPENAI_BASE_URL, else a local llama.cpp server with "
                                       "SmolLM2-135M-Instruct", json_schema_extra={"flag": "base-url"})
    explainer_model: str | None = Field(None, description="explainer model name at the endpoint "
                                        "(default: the local model, or gpt-4o-mini for an endpoint)")
    simulator_model: str | None = Field(None, description="simulator and judge model name at the endpoint")
    concurrency: int = Field(8, gt=0, le=1024, description="requests in flight at once")
    processes: int = Field(1, gt=0, le=256, description="client processes sharing the features, the requests in "
                           "flight and the budget: one Python process labels about a dozen features a second at most "
                           "(bench/llm_stage.py), so more when a fleet of endpoints waits on it. The embedded model "
                           "takes one")
    timeout_s: float = Field(120.0, gt=0, description="per-request timeout, seconds", json_schema_extra={"flag": "timeout"})
    max_attempts: int = Field(6, gt=0, le=50, description="tries per request (429, 5xx, timeouts, dropped connections)")
    max_wait_s: float = Field(60.0, gt=0, description="longest wait between two tries of a request, seconds")
    max_cost_usd: float | None = Field(None, gt=0, description="stop cleanly at this spend (USD); with --batch-api, "
                                       "batches are submitted only while their estimated cost fits",
                                       json_schema_extra={"flag": "max-cost"})
    max_tokens: int | None = Field(None, gt=0, description="stop the batch cleanly after this many tokens")
    retry_stopped_roles: bool = Field(False, description="ask again the roles (judge, chat simulator) that an "
                                      "earlier label run on this database stopped because none of their first "
                                      "replies was usable (same endpoint and model)")
    prices: str | None = Field(None, description='JSON price table {"model": [usd_per_M_input, usd_per_M_output, '
                               'batch_input, batch_output, cached_input, batch_cached_input]} (2, 4 or 6 numbers: '
                               'batch prices default to half the live ones, cached to the input price)')
    batch_api: bool = Field(False, description="send the work as Batch API batches (half price, results within 24 h): "
                            "explain, then simulate and judge; the same command resumes a killed run's batches")
    batch_retry: Literal["live", "next-batch"] = Field(
        "next-batch", description="requests that fail or expire inside a batch: redo them live at once, or in the "
        "next batch (up to --batch-attempts batches, then a failure with its code)")
    batch_attempts: int = Field(2, ge=1, le=20, description="batches a request may fail in before it is a failure")
    batch_max_requests: int = Field(50_000, gt=0, description="requests per batch (the provider's limit)")
    batch_max_bytes: int = Field(200_000_000, gt=0, description="bytes per batch input file (the provider's limit)")
    batch_poll_s: float = Field(30.0, gt=0, description="seconds between two polls of the running batches",
                                json_schema_extra={"flag": "batch-poll"})

    @model_validator(mode="after")
    def _check(self) -> LLMConfig:
        from autointerp.redact import refuse_url_credentials

        for url in self.base_urls:
            refuse_url_credentials(url, "--base-url")
        self.price_table()
        return self

    def price_table(self) -> dict[str, tuple[float, ...]] | None:
        """The --prices file as {model: prices}: each 2, 4 or 6 finite, non-negative numbers (a negative
        or NaN price would turn --max-cost off)."""
        if not self.prices:
            return None
        shape = ('expected JSON {"model": [input, output(, batch_input, batch_output(, cached_input, '
                 'batch_cached_input))]} with finite prices >= 0')
        try:
            raw = json.loads(Path(self.prices).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise BadInput(f"--prices {self.prices}: {shape} ({exc})") from None
        if not isinstance(raw, dict):
            raise BadInput(f"--prices {self.prices}: {shape}; this holds a JSON {type(raw).__name__}")
        table = {}
        for model, values in raw.items():
            ok = isinstance(values, list) and len(values) in (2, 4, 6) and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values)
            if not ok:
                raise BadInput(f"--prices {self.prices}: model '{model}' has {json.dumps(values)[:80]}; {shape}")
            table[str(model)] = tuple(float(v) for v in values)
        return table


class BehaviourConfig(Frozen):
    """What `autointerp behaviour` does: the model re-run with each feature ablated or simulated."""

    ablate: Literal["calibrated", "mean", "zero"] = Field(
        "calibrated", description="what the ablated feature is replaced by: calibrated (its mean on the run's "
        "calibration contexts: a constant label then scores 0), mean (over the corpus) or zero")
    n_boot: int = Field(1000, ge=10, le=1_000_000, description="bootstrap resamples for the 95% CIs")
    feature_batch: int = Field(8, gt=0, description="features whose contexts go through the model in one batch "
                               "(1: one feature at a time; the scores are the same)")
    device: str = Field("auto", description="where the model runs: auto (cuda when available, else cpu), cpu, "
                        "cuda, cuda:N or mps")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="precision the model and SAE are loaded in for behaviour scores (another dtype is "
        "another behaviour run)")

    @model_validator(mode="after")
    def _check(self) -> BehaviourConfig:
        _check_device(self.device)
        return self

    def settings(self) -> dict[str, Any]:
        """The fields that decide the scores: batching and device do not; float32, the dtype before the field
        existed, is left out so earlier behaviour runs keep their key."""
        exclude = {"feature_batch", "device"} | ({"dtype"} if self.dtype == "float32" else set())
        return self.model_dump(exclude=exclude)

    def settings_hash(self) -> str:
        return settings_hash(self.settings())


def settings_hash(settings: dict[str, Any]) -> str:
    """The key of a run's settings: the same settings, the same hash."""
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
