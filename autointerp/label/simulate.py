"""Simulation prompts and readers: a label + held-out contexts -> predicted activations per token (0-9
scale). label.simulators puts them behind one interface; `simulate_echo` / `simulate_chat` run them alone.

Echo (completions with echo and logprobs, as OpenAI's all-at-once simulator): one request per
context. The prompt lists the context's tokens one per line as `token<TAB>unknown`; the prediction at
a token is the expected value over the digits 0-9 of the simulator's distribution for the text right
after its tab, read from the echoed prompt's top_logprobs. The placeholder is a word, not a digit, so
there is no run of values to copy, and each context sits at the same place in its own prompt, so a
prediction cannot depend on where a context was put. Optional few-shot examples (another feature's
tokens with their real 0-9 values) go before the scored block. The scale is 0-9 so each value is one
character ("10" can be two tokens).

Chat fallback for endpoints without echo: JSON {"activations": [...]} per context; where the
endpoint returns top_logprobs, each generated digit is replaced by its expected value.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from string import Template
from typing import Any

from autointerp.label.echo_read import DIGITS, expected_digit, read_echo
from autointerp.llm import prompts
from autointerp.llm.client import LLMClient, LLMFailure, LLMReply, ask_parsed
from autointerp.records import CallRow, Context, FailureCode

SIM_TEMPLATES: tuple[str, ...] = ("simulate", "simulate.block")
CHAT_TEMPLATES: tuple[str, ...] = ("simulate_chat.system", "simulate_chat.user", "reask_json")
PLACEHOLDER = "unknown"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class FewShot:
    """A worked example shown before the scored context: another feature's tokens with their real 0-9
    values (and its label, if known). The caller picks it from a different feature, so it cannot leak
    the scored one."""

    tokens: list[str]
    values: list[int]
    label: str | None = None

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.values):
            raise ValueError(f"few-shot example: {len(self.tokens)} tokens, {len(self.values)} values")
        if any(not isinstance(v, int) or not 0 <= v <= 9 for v in self.values):
            raise ValueError("few-shot values must be integers 0-9")


FEWSHOT_NO_LABEL = "another feature (its explanation is not shown)"


@functools.lru_cache(maxsize=1 << 16)  # token texts repeat across contexts and labels: escaped once each
def show(text: str) -> str:
    """Text as it appears in a simulation prompt: escaped like every prompt's data, other control
    characters as \\xNN, and unpaired surrogates (not encodable as UTF-8) as '?'."""
    text = prompts.escape_data(text)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)
    return text.encode("utf-8", "replace").decode("utf-8")


def _block(label: str) -> tuple[str, str]:
    head, _, tail = prompts.template("simulate.block").partition("$rows")
    return Template(head).substitute(label=show(label)), Template(tail.rstrip("\n")).substitute(label=show(label))


def _few_shot_text(fewshot: Sequence[FewShot | tuple[list[str], list[int]]] | None) -> str:
    parts = []
    for ex in fewshot or ():
        ex = ex if isinstance(ex, FewShot) else FewShot(list(ex[0]), list(ex[1]))
        head, tail = _block(ex.label if ex.label is not None else FEWSHOT_NO_LABEL)
        rows = "\n".join(f"{show(t)}\t{v}" for t, v in zip(ex.tokens, ex.values, strict=True))
        parts.append(f"{head}{rows}{tail}\n\n")
    return "".join(parts)


def echo_prompt(label: str, tokens: list[str],
                fewshot: Sequence[FewShot | tuple[list[str], list[int]]] | None = None) -> tuple[str, list[int]]:
    """The prompt for one context, and for each token the character offset of its placeholder (the
    first character after its tab)."""
    return echo_prompts(label, [tokens], fewshot)[0]


def echo_prompts(label: str, contexts: Sequence[list[str]],
                 fewshot: Sequence[FewShot | tuple[list[str], list[int]]] | None = None
                 ) -> list[tuple[str, list[int]]]:
    """`echo_prompt` of each context's tokens: the text they share (instructions, examples, label) is
    rendered once."""
    head_t, _, tail_t = prompts.template("simulate").partition("$block")
    head = Template(head_t).substitute(examples=_few_shot_text(fewshot))
    block_head, block_tail = _block(label)
    start, end = head + block_head, block_tail + tail_t.rstrip("\n")
    out = []
    for tokens in contexts:
        parts = [start]
        pos = len(start)
        offsets = []
        for i, t in enumerate(tokens):
            row = ("\n" if i else "") + show(t) + "\t"
            offsets.append(pos + len(row))
            row += PLACEHOLDER
            parts.append(row)
            pos += len(row)
        parts.append(end)
        out.append(("".join(parts), offsets))
    return out


ECHO_TOP_LOGPROBS = 10
CHAT_TOP_LOGPROBS = 5


async def simulate_echo(client: LLMClient, model: str, label: str, contexts: list[Context],
                        top_logprobs: int = ECHO_TOP_LOGPROBS,
                        fewshot: Sequence[FewShot | tuple[list[str], list[int]]] | None = None,
                        parallel: int = 4) -> tuple[list[list[float]], list[CallRow]]:
    """One request per context (at most `parallel` in flight), predictions in the given order.

    Fails only when the endpoint does not answer or returns no usable logprobs, or when not one
    placeholder of the feature had a digit among its top logprobs (an endpoint that cannot echo)."""
    gate = asyncio.Semaphore(max(1, parallel))
    built = echo_prompts(label, [c.tokens for c in contexts], fewshot)

    async def one(prompt: str) -> LLMReply | LLMFailure:
        async with gate:
            try:
                return await client.complete(role="simulator", model=model, prompt=prompt, max_tokens=1, echo=True,
                                             logprobs=top_logprobs)
            except LLMFailure as exc:
                return exc

    replies = await asyncio.gather(*(one(p) for p, offs in built if offs))
    calls = [c for r in replies for c in r.calls]
    failure = next((r for r in replies if isinstance(r, LLMFailure)), None)
    if failure is not None:
        raise LLMFailure(str(failure), calls, failure.code)
    return echo_values(built, [r.logprobs for r in replies if isinstance(r, LLMReply)], calls), calls


def echo_values(built: list[tuple[str, list[int]]], logprobs: list[Any], calls: list[CallRow]) -> list[list[float]]:
    """Predictions of every context from its echo reply's logprobs (`built`: echo_prompt of each context;
    `logprobs`: one per context with placeholders, in order). LLMFailure (with `calls`) when unusable."""
    out: list[list[float]] = []
    missing = total = 0
    it = iter(logprobs)
    for prompt, offsets in built:
        if not offsets:
            out.append([])
            continue
        try:
            values, n_missing = read_echo(next(it), prompt, offsets)
        except ValueError as exc:
            raise LLMFailure(f"unusable simulation: {exc}", calls, FailureCode.UNUSABLE_SIMULATION) from None
        out.append(values)
        missing += n_missing
        total += len(offsets)
    if total and missing == total:
        raise LLMFailure("unusable simulation: no digit among the top logprobs at any placeholder "
                              "(echo unsupported?)", calls, FailureCode.UNUSABLE_SIMULATION)
    return out


def parse_chat_activations(text: str, n: int) -> list[int]:
    acts = prompts.reply_json_field(text, "activations")
    if not isinstance(acts, list) or not all(isinstance(a, int | float) for a in acts):
        raise ValueError("no 'activations' list of numbers")
    if len(acts) != n:
        raise ValueError(f"{len(acts)} activations for {n} tokens")
    return [min(9, max(0, round(a))) for a in acts]


def chat_messages(label: str, context: Context) -> list[dict[str, str]]:
    rows = "\n".join(prompts.escape_data(t) for t in context.tokens)
    return [{"role": "system", "content": prompts.render("simulate_chat.system")},
            {"role": "user", "content": prompts.render("simulate_chat.user", label=prompts.escape_data(label),
                                                       n=len(context.tokens), rows=rows)}]


def chat_max_tokens(n: int) -> int:
    return 4 * n + 32


def chat_parser(n: int) -> Callable[[LLMReply], list[float]]:
    """A chat simulation reply -> predictions for `n` tokens (ValueError says why a reply is unusable)."""
    def parse(reply: LLMReply) -> list[float]:
        ints = parse_chat_activations(reply.text, n)
        return _chat_expected(reply.logprobs, n) or [float(v) for v in ints]
    return parse


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
                        max_reasks: int = 1, top_logprobs: int | None = CHAT_TOP_LOGPROBS
                        ) -> tuple[list[list[float]], list[CallRow]]:
    """One request per context; JSON answers, re-asked a bounded number of times (LLMFailure otherwise)."""
    calls: list[CallRow] = []
    out: list[list[float]] = []
    for c in contexts:
        messages = chat_messages(label, c)
        parse = chat_parser(len(c.tokens))
        n = len(c.tokens)
        try:
            values, more = await ask_parsed(client, parse, role="simulator", model=model, messages=messages,
                                            max_tokens=chat_max_tokens(n), reask="reask_json", max_reasks=max_reasks,
                                            top_logprobs=top_logprobs)
        except LLMFailure as exc:
            raise LLMFailure(str(exc), calls + exc.calls, exc.code) from None
        calls += more
        out.append(values)
    return out, calls
