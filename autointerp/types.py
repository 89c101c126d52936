"""Records handed between stages. Stages make new records; none mutates one it was given."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)


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
    explanation_id: str
    dictionary_id: int
    feature: int
    label: str | None
    explainer: str
    prompt_hash: str
    status: str  # 'ok' | 'failed'
    error: str | None = None
