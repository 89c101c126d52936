"""Simulators: a label + held-out contexts + client -> predicted activations per token (0-9 scale).

All at once (completions with echo and logprobs, as OpenAI's simulator): every context of a feature
goes into one prompt with a placeholder digit after each token; the prediction at a token is the
expected value over the digit tokens' probabilities at its placeholder. The scale is 0-9, so each
value is a single character ("10" can be two tokens). Placeholders are found by character offset,
so it works whatever the tokenizer does with the tab before the digit.

Chat fallback for endpoints without echo: JSON {"activations": [...]} per context; where the
endpoint returns top_logprobs, each generated digit is replaced by its expected value.
"""

from __future__ import annotations

import math
from typing import Any

from autointerp import prompts
from autointerp.llm import LLMCall, LLMClient, LLMFailure, LLMReply, ask_parsed
from autointerp.types import Context, FailureCode

SIM_TEMPLATES = ("simulate",)
CHAT_TEMPLATES = ("simulate_chat.system", "simulate_chat.user", "reask_json")
DIGITS = {str(d): d for d in range(10)}


def echo_prompt(label: str, contexts: list[list[str]]) -> tuple[str, list[list[int]]]:
    """The prompt, and for each context the character offset of each token's placeholder digit."""
    head, _, tail = prompts.template("simulate").partition("$rows")
    head = head.replace("$label", prompts.escape_data(label)).lstrip("\n")
    parts: list[str] = [head]
    offsets: list[list[int]] = []
    pos = len(head)
    end = tail.strip("\n")
    block_sep = end + "\n" + head[head.rindex("<start>"):]
    for ci, tokens in enumerate(contexts):
        if ci:
            parts.append(block_sep)
            pos += len(block_sep)
        ctx_offsets = []
        for t in tokens:
            row = f"{prompts.escape_data(t)}\t"
            ctx_offsets.append(pos + len(row))
            row += "0\n"
            parts.append(row)
            pos += len(row)
        offsets.append(ctx_offsets)
    parts.append(end)
    return "".join(parts), offsets


def expected_digit(top: dict[str, float] | None) -> float:
    """Expected value over the digit entries of a top_logprobs dict; nan if it has none."""
    if not top:
        return math.nan
    total = weighted = 0.0
    for tok, lp in top.items():
        d = DIGITS.get(tok.strip())
        if d is not None and lp is not None:
            p = math.exp(lp)
            total += p
            weighted += p * d
    return weighted / total if total > 0 else math.nan


def _top_dicts(logprobs: dict[str, Any]) -> list[dict[str, float] | None]:
    tops = logprobs.get("top_logprobs") or []
    out: list[dict[str, float] | None] = []
    for t in tops:
        if isinstance(t, dict):
            out.append(t)
        elif isinstance(t, list):  # some servers: [{"token": ..., "logprob": ...}, ...]
            out.append({e["token"]: e["logprob"] for e in t if isinstance(e, dict) and "token" in e})
        else:
            out.append(None)
    return out


def read_echo(logprobs: dict[str, Any] | None, offsets: list[list[int]]) -> list[list[float]]:
    """Predictions at the placeholder offsets from an echoed prompt's logprobs."""
    if not logprobs or not logprobs.get("tokens") or logprobs.get("text_offset") is None:
        raise ValueError("the endpoint returned no prompt logprobs (echo unsupported?)")
    tokens, starts, tops = logprobs["tokens"], logprobs["text_offset"], _top_dicts(logprobs)
    if not (len(tokens) == len(starts) == len(tops)):
        raise ValueError("logprobs arrays differ in length")
    out: list[list[float]] = []
    i = 0
    for ctx in offsets:
        preds = []
        for off in ctx:
            while i + 1 < len(starts) and starts[i + 1] <= off:
                i += 1
            if not (starts[i] <= off < starts[i] + max(len(tokens[i]), 1)):
                raise ValueError(f"no token covers the placeholder at character {off}")
            value = expected_digit(tops[i])
            if math.isnan(value):
                raise ValueError(f"no digit among the top logprobs at character {off} (token {tokens[i]!r})")
            preds.append(value)
        out.append(preds)
    return out


async def simulate_echo(client: LLMClient, model: str, label: str, contexts: list[Context],
                        top_logprobs: int = 10) -> tuple[list[list[float]], list[LLMCall]]:
    """One request for all of a feature's contexts."""
    prompt, offsets = echo_prompt(label, [c.tokens for c in contexts])
    reply = await client.complete(role="simulator", model=model, prompt=prompt, max_tokens=1, echo=True,
                                  logprobs=top_logprobs)
    try:
        return read_echo(reply.logprobs, offsets), reply.calls
    except ValueError as exc:
        raise LLMFailure(f"unusable simulation: {exc}", reply.calls, FailureCode.UNUSABLE_SIMULATION) from None


def parse_chat_activations(text: str, n: int) -> list[int]:
    acts = prompts.reply_json_field(text, "activations")
    if not isinstance(acts, list) or not all(isinstance(a, int | float) for a in acts):
        raise ValueError("no 'activations' list of numbers")
    if len(acts) != n:
        raise ValueError(f"{len(acts)} activations for {n} tokens")
    return [min(9, max(0, round(a))) for a in acts]


def _chat_expected(logprobs: dict[str, Any] | None, n: int) -> list[float] | None:
    """Expected values from the generated digits' top_logprobs, when the endpoint returned them."""
    content = (logprobs or {}).get("content") or []
    values = []
    for entry in content:
        if entry.get("token", "").strip() in DIGITS:
            top = {t["token"]: t["logprob"] for t in entry.get("top_logprobs") or []}
            values.append(expected_digit(top or {entry["token"]: entry.get("logprob", 0.0)}))
    return values if len(values) == n and not any(math.isnan(v) for v in values) else None


async def simulate_chat(client: LLMClient, model: str, label: str, contexts: list[Context],
                        max_reasks: int = 1, top_logprobs: int | None = 5) -> tuple[list[list[float]], list[LLMCall]]:
    """One request per context; JSON answers, re-asked a bounded number of times (LLMFailure otherwise)."""
    calls: list[LLMCall] = []
    out: list[list[float]] = []
    for c in contexts:
        rows = "\n".join(prompts.escape_data(t) for t in c.tokens)
        messages = [{"role": "system", "content": prompts.render("simulate_chat.system")},
                    {"role": "user", "content": prompts.render("simulate_chat.user", label=prompts.escape_data(label),
                                                               n=len(c.tokens), rows=rows)}]
        n = len(c.tokens)

        def parse(reply: LLMReply, n: int = n) -> list[float]:
            ints = parse_chat_activations(reply.text, n)
            return _chat_expected(reply.logprobs, n) or [float(v) for v in ints]

        try:
            values, more = await ask_parsed(client, parse, role="simulator", model=model, messages=messages,
                                            max_tokens=4 * n + 32, reask="reask_json", max_reasks=max_reasks,
                                            top_logprobs=top_logprobs)
        except LLMFailure as exc:
            raise LLMFailure(str(exc), calls + exc.calls, exc.code) from None
        calls += more
        out.append(values)
    return out, calls
