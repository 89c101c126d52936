"""Prices, what a request costs, and the budget (--max-cost / --max-tokens) calls are checked against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from autointerp.records import CallRow

# USD per million tokens: (input, output[, batch input, batch output[, cached input, batch cached input]]).
# Unknown models cost 0 and say so in the summary; pass --prices FILE (JSON {"model": [...]}, 2, 4 or 6
# numbers) for others. Batch prices default to half the live ones, as OpenAI's Batch API; cached prompt
# tokens (usage.prompt_tokens_details.cached_tokens) cost the input price where no cached price is given.
DEFAULT_PRICES: dict[str, tuple[float, ...]] = {
    "gpt-4o-mini": (0.15, 0.60, 0.075, 0.30, 0.075, 0.0375),
    "gpt-4o": (2.50, 10.00, 1.25, 5.00, 1.25, 0.625),
    "gpt-4.1-mini": (0.40, 1.60, 0.20, 0.80, 0.10, 0.05),
    "gpt-4.1-nano": (0.10, 0.40, 0.05, 0.20, 0.025, 0.0125),
    "gpt-3.5-turbo-instruct": (1.50, 2.00),
    "davinci-002": (2.00, 2.00),
    "babbage-002": (0.40, 0.40),
}


class BudgetExhausted(Exception):
    """--max-cost or --max-tokens reached: the batch stops cleanly, no new request is sent."""


@dataclass
class Budget:
    """--max-cost / --max-tokens for one invocation. Live calls are checked before each request; batches
    reserve their estimated cost before they are submitted (`fits`, `reserve`), and their results'
    real costs are added as they are ingested."""

    max_cost_usd: float | None = None
    max_tokens: int | None = None
    spent_usd: float = 0.0
    tokens: int = 0
    reserved_usd: float = 0.0  # submitted batches not ingested yet: their estimates
    reserved_tokens: int = 0

    def check(self) -> None:
        if self.max_cost_usd is not None and self.spent_usd >= self.max_cost_usd:
            raise BudgetExhausted(f"--max-cost {self.max_cost_usd} reached (${self.spent_usd:.4f} spent)")
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetExhausted(f"--max-tokens {self.max_tokens} reached ({self.tokens} used)")

    def add(self, call: CallRow) -> None:
        self.spent_usd += call.cost_usd
        self.tokens += call.prompt_tokens + call.completion_tokens

    def fits(self, usd: float, tokens: int) -> bool:
        """Whether work estimated at `usd` and `tokens` fits beside what is spent and reserved."""
        return ((self.max_cost_usd is None or self.spent_usd + self.reserved_usd + usd <= self.max_cost_usd)
                and (self.max_tokens is None or self.tokens + self.reserved_tokens + tokens <= self.max_tokens))

    def reserve(self, usd: float, tokens: int) -> None:
        self.reserved_usd += usd
        self.reserved_tokens += tokens

    def release(self) -> None:
        """The reserved batches are ingested: their real costs are in `spent_usd` now."""
        self.reserved_usd, self.reserved_tokens = 0.0, 0

    def left(self) -> str:
        """What is left, for messages."""
        parts = []
        if self.max_cost_usd is not None:
            parts.append(f"${max(0.0, self.max_cost_usd - self.spent_usd - self.reserved_usd):.4f} of --max-cost "
                         f"{self.max_cost_usd}")
        if self.max_tokens is not None:
            parts.append(f"{max(0, self.max_tokens - self.tokens - self.reserved_tokens):,} of --max-tokens "
                         f"{self.max_tokens}")
        return " and ".join(parts) or "no limit"


def cost(prices: dict[str, tuple[float, ...]], model: str, prompt_tokens: int, completion_tokens: int,
         batch: bool = False, cached_tokens: int = 0) -> float:
    """USD for one request at live or batch prices (batch: the table's 3rd and 4th columns, else half).
    `cached_tokens` (part of `prompt_tokens`) cost the cached price (5th column live, 6th batch, else half
    the 5th) where the table has one, else the input price."""
    p = prices.get(model, (0.0, 0.0))
    p_in, p_out = (p[2], p[3]) if batch and len(p) >= 4 else ((p[0] / 2, p[1] / 2) if batch else (p[0], p[1]))
    p_cached = p_in
    if len(p) >= 5:
        p_cached = (p[5] if len(p) >= 6 else p[4] / 2) if batch else p[4]
    cached = min(max(cached_tokens, 0), prompt_tokens)
    return ((prompt_tokens - cached) * p_in + cached * p_cached + completion_tokens * p_out) / 1e6


def estimate_tokens(body: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens a request may cost, before it is sent: the prompt at one token per 3
    bytes of its text (BPE tokenizers average ~4 on English; our token-per-line and marked excerpts are
    denser, so 3 errs high), the completion at its max_tokens."""
    if "messages" in body:  # and ~4 tokens of chat framing per message
        text = "".join(str(m.get("content", "")) for m in body["messages"])
        framing = 4 * len(body["messages"])
    else:
        text, framing = str(body.get("prompt", "")), 0
    return -(-len(text.encode()) // 3) + framing, int(body.get("max_tokens") or 0)


def estimate_cost(prices: dict[str, tuple[float, ...]], body: dict[str, Any], batch: bool = True
                  ) -> tuple[float, int]:
    """(USD, tokens) a request may cost (`estimate_tokens` at the model's live or batch prices, no cache)."""
    p_tok, c_tok = estimate_tokens(body)
    return cost(prices, str(body.get("model", "")), p_tok, c_tok, batch), p_tok + c_tok
