"""Records handed between stages. Stages make new records; none mutates one it was given."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


@dataclass(frozen=True)
class ProgressEvent:
    """How far a stage is: the one shape every stage reports progress in."""

    stage: str  # 'collect' | 'label' | 'behaviour'
    done: int
    total: int
    unit: str  # 'tok' | 'feat'
    detail: str = ""


ProgressFn = Callable[[ProgressEvent], None]

# A provider batch in one of these states will not change again.
BATCH_DONE = ("completed", "failed", "expired", "cancelled")


class FailureCode(StrEnum):
    """Why a piece of work failed, stored in its own `code` column (the full reason is in `error`)."""

    RATE_LIMITED = "rate_limited"  # HTTP 429 after every retry
    HTTP_ERROR = "http_error"  # another HTTP status after its retries (401, 5xx, ...)
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    MALFORMED_RESPONSE = "malformed_response"  # 200 with a body that is not a completion
    UNUSABLE_REPLY = "unusable_reply"  # parsed badly after every re-ask
    UNUSABLE_SIMULATION = "unusable_simulation"  # echo logprobs without the predictions
    NO_CONTEXTS = "no_contexts"  # nothing to show or score: the feature never activated
    ONE_CLASS = "one_class"  # a judge cannot be shown both classes (dense features)
    BATCH_EXPIRED = "batch_expired"  # the batch's 24 h window ended before the request ran
    BATCH_CANCELLED = "batch_cancelled"  # the batch was cancelled before the request ran
    NO_PROBES = "no_probes"  # the agent's explainer wrote no usable probe text
    LIST_REFUSED = "list_refused"  # the endpoint takes one prompt per completions request (then sent so)
    ROLE_STOPPED = "role_stopped"  # not asked: the role's first replies in this run were all unusable


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)


class AgentStep(Record):
    """A row of `agent_steps`: one step of a feature's best-of-k or agent run (migration 007)."""

    dictionary_id: int
    feature: int
    explainer: str
    strategy: str
    settings_hash: str
    step: int
    round: int
    kind: str  # candidate / probe / revision / choice
    status: str = "ok"
    text: str | None = None
    prompt: str | None = None
    activations: list[dict[str, Any]] | None = None  # probes: text, expect, tokens, acts, cut
    calibration_score: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    code: str | None = None
    error: str | None = None
    explanation_id: str | None = None
    temperature: float | None = None  # a candidate: the temperature it was asked at


class Context(Record):
    """One context of one feature, as stored by collect."""

    seq: int
    split: str
    kind: str
    rank: int
    tokens: list[str]
    acts: list[float]
    quantile: int | None = None  # the quantile bin (0 = lowest) of a 'quantile' context, else None

    @property
    def max_act(self) -> float:
        return max(self.acts) if self.acts else 0.0


class FeatureContexts(Record):
    dictionary_id: int
    feature: int
    max_act: float
    contexts: list[Context]
    threshold: float = 0.0  # the dictionary's activation threshold: a token is active when above it

    def select(self, split: str, *kinds: str) -> list[Context]:
        return [c for c in self.contexts if c.split == split and c.kind in kinds]


class Label(Record):
    """What an explainer must produce: a short one-line phrase."""

    label: str = Field(min_length=2, max_length=200)

    @field_validator("label")
    @classmethod
    def _one_short_line(cls, v: str) -> str:
        if "\n" in v:
            raise ValueError("more than one line")
        if not any(ch.isalnum() for ch in v):
            raise ValueError("no words")
        if "‹‹" in v or "<<" in v or "<start>" in v:
            raise ValueError("it repeats the excerpt markup")
        if v.rstrip().endswith((":", ",", " by", " the", " a", " of")):
            raise ValueError("the phrase is unfinished")
        if len(v.split()) > 30:
            raise ValueError(f"{len(v.split())} words, not a short phrase")
        return v


class Explanation(Record):
    """A row of `explanations`: a label, or a failure with its reason and code."""

    explanation_id: str
    dictionary_id: int
    feature: int
    label: str | None
    explainer: str
    prompt_hash: str
    status: str  # 'ok' | 'failed'
    error: str | None = None
    code: str | None = None
    null_kind: str | None = None  # 'shuffled' | 'constant' for null labels
    null_of: str | None = None  # the explainer whose labels a shuffled null borrows
    label_feature: int | None = None  # the feature a shuffled label was written for
    config: str | None = None  # JSON of the settings that made it


class ScoreRun(Record):
    """A row of `score_runs`: one simulation (or behaviour) pass over one explanation."""

    run_id: str
    explanation_id: str
    dictionary_id: int
    feature: int
    stage: str  # 'simulation' | 'behaviour'
    simulator: str
    prompt_hash: str
    settings_hash: str
    config: str | None = None
    source_run_id: str | None = None
    status: str = "ok"
    error: str | None = None
    code: str | None = None


class Simulation(Record):
    """A row of `simulations`: predicted activations for one held-out context."""

    run_id: str
    explanation_id: str
    simulator: str
    dictionary_id: int
    feature: int
    seq: int
    split: str
    kind: str
    rank: int
    purpose: str  # 'calibration' | 'scoring'
    predicted: list[float]


class ScoreRow(Record):
    """A row of `scores`: one method's value with its bootstrap 95% CI, NULL (None) where undefined."""

    run_id: str
    explanation_id: str
    dictionary_id: int
    feature: int
    simulator: str
    method: str
    value: float | None
    n_examples: int
    ci_low: float | None
    ci_high: float | None
    note: str | None = None


class CallRow(Record):
    """A row of `llm_calls`: one attempt at one request, with the work it was for."""

    call_id: str
    role: str
    model: str
    endpoint: str
    prompt_hash: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_usd: float
    status: str
    error: str | None
    created_at: datetime
    dictionary_id: int | None = None
    feature: int | None = None
    explanation_id: str | None = None
    run_id: str | None = None
    batch_id: str | None = None  # the provider batch (or batch file) the result came from
    cached_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache

    @field_validator("created_at")
    @classmethod
    def _naive_utc(cls, v: datetime) -> datetime:
        return v.astimezone(UTC).replace(tzinfo=None) if v.tzinfo is not None else v


class SimulatedContext(Record):
    """A scored context's true and predicted activations with its purpose (behaviour's input)."""

    seq: int
    kind: str
    purpose: str
    token_ids: list[int]
    acts: list[float]
    predicted: list[float]
