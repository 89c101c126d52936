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
import bisect
import functools
import itertools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from string import Template
from typing import Any

from autointerp.llm import prompts
from autointerp.llm.bodies import EchoLogprobs
from autointerp.llm.client import LLMClient, LLMFailure, LLMReply, ask_parsed
from autointerp.records import CallRow, Context, FailureCode

SIM_TEMPLATES: tuple[str, ...] = ("simulate", "simulate.block")
CHAT_TEMPLATES: tuple[str, ...] = ("simulate_chat.system", "simulate_chat.user", "reask_json")
DIGITS = {str(d): d for d in range(10)}
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


def _digit_of(tok: Any, fragment: str) -> int:
    """The digit an entry stands for after `fragment` (see `expected_digit`), or -1."""
    if not isinstance(tok, str):
        return -1
    if fragment:
        if tok.startswith(fragment):
            tok = tok[len(fragment):]
        elif fragment.strip():
            return -1
    d = DIGITS.get(tok)
    if d is None:
        d = DIGITS.get(tok.strip(), -1)
    return d


# fragment -> entry -> its digit (-1: none). Entries repeat across every placeholder of every reply, so
# each is worked out once; cleared when it grows past a vocabulary's worth.
_DIGIT_MEMO: dict[str, dict[Any, int]] = {}
_MEMO_MAX = 1 << 17


def _digit_sums(top: dict[str, float] | None, fragment: str = "") -> tuple[float, float]:
    """(total probability of the digit entries, probability-weighted sum of their values)."""
    total = weighted = 0.0
    if not top:
        return total, weighted
    memo = _DIGIT_MEMO.get(fragment)
    if memo is None or len(memo) > _MEMO_MAX:
        if len(_DIGIT_MEMO) > 1024:
            _DIGIT_MEMO.clear()
        memo = _DIGIT_MEMO[fragment] = {}
    exp, inf = math.exp, math.inf
    for tok, lp in top.items():  # this runs for every placeholder of every reply: one lookup per entry
        d = memo.get(tok)
        if d is None:
            d = memo[tok] = _digit_of(tok, fragment)
        if d < 0:
            continue
        try:
            p = exp(lp)
        except (TypeError, OverflowError):  # None, a string, a huge logprob: no probability
            continue
        if p < inf:  # nan and inf are none either; -inf gives 0, which adds nothing
            total += p
            weighted += p * d
    return total, weighted


def expected_digit(top: dict[str, float] | None, fragment: str = "") -> float:
    """Expected value over the digit entries of a top_logprobs dict (nan if it has none).

    `fragment` is the prompt text from the start of the token these logprobs are for up to the
    placeholder, when the tokenizer merged the tab (or more) into that token: an entry then counts
    as digit d if it is the fragment followed by d (a whitespace-only fragment also admits a bare d).
    Entries differing from a digit only by surrounding whitespace count as that digit."""
    total, weighted = _digit_sums(top, fragment)
    return weighted / total if total > 0 else math.nan


def _top_dict(t: Any) -> dict[str, float] | None:
    if isinstance(t, dict):
        return t
    if isinstance(t, list):  # some servers: [{"token": ..., "logprob": ...}, ...]
        return {e["token"]: e["logprob"] for e in t if isinstance(e, dict) and "token" in e}
    return None


# A placeholder's digit entries are distinct tokens of one distribution: their probabilities sum to at most 1
# (rounding aside), which bounds what the rest of a reading can still add.
_MAX_TOTAL = 1.0 + 1e-6

Entries = Callable[[list[int]], list[Any]]  # token indices -> their top_logprobs entries, decoded


def _places(prompt: str, starts: list[int], offsets: list[int]) -> tuple[list[int], list[str]]:
    """For each placeholder, the token whose distribution gives its value in OpenAI's convention (-1: none)
    and that token's text before the placeholder (its fragment: "" where the token starts there)."""
    n, tokens, fragments = len(starts), [], []
    for off in offsets:
        i = bisect.bisect_left(starts, off)
        if i < n and starts[i] == off:
            tokens.append(i)
            fragments.append("")
        elif i > 0:  # the placeholder's first character is inside token i - 1
            tokens.append(i - 1)
            fragments.append(prompt[starts[i - 1]:off])
        else:
            tokens.append(-1)
            fragments.append("")
    return tokens, fragments


def _tops_at(entries: Entries, where: list[int], all_at_once: bool) -> Iterator[Any]:
    """The entries of the tokens at `where` (None at -1): decoded in one call, or, for a reading that may
    stop after a few, in chunks of 1, 2, 4, ... placeholders."""
    done, size = 0, (len(where) if all_at_once else 1)
    while done < len(where):
        chunk = where[done:done + size]
        got = iter(entries([j for j in chunk if j >= 0]))
        yield from (next(got) if j >= 0 else None for j in chunk)
        done += size
        size *= 2


def _read(entries: Entries, tokens: list[int], fragments: list[str], shift: int, beat: float = -math.inf,
          strict: bool = True) -> tuple[list[float] | None, float]:
    """Expected values at the placeholders (nan where no digit is listed), and the digit probability
    found over all of them. `tokens`, `fragments`: `_places`; `shift` 1 reads token i's distribution from
    top_logprobs[i - 1] (a server that gives each token the next one's).
    With `beat`, the values are None unless the reading ends with more digit probability than `beat`
    (`strict`) or as much (not `strict`); it stops as soon as it cannot, counting each placeholder left at
    the most a distribution allows (a placeholder over that, which no distribution gives, drops the bound)."""
    values, mass = [], 0.0
    left, bounded = len(tokens), beat > -math.inf
    where = [j - shift if j >= shift else -1 for j in tokens]
    for t, fragment in zip(_tops_at(entries, where, not bounded), fragments, strict=True):
        total, weighted = _digit_sums(t if type(t) is dict else _top_dict(t), fragment)
        values.append(weighted / total if total > 0 else math.nan)
        mass += total
        left -= 1
        bounded = bounded and total <= _MAX_TOTAL
        if bounded and _short(mass + left * _MAX_TOTAL, beat, strict):
            return None, mass
    return (None if _short(mass, beat, strict) else values), mass


def _short(reach: float, beat: float, strict: bool) -> bool:
    return reach < beat or (strict and reach == beat)


# Which reading won the last reply: an endpoint keeps its convention, so it is read first and the other
# reading usually stops after a few placeholders. Only the order of work depends on it, never the result.
_LAST_SHIFT = 0


def _echo_arrays(logprobs: Any) -> tuple[list[int], Entries, bool]:
    """(text_offset, the top_logprobs entries of given tokens, aligned) of an echo reply's logprobs, the
    dict a parser gives or an `EchoLogprobs`; ValueError for a reply that is not an echo with logprobs."""
    if isinstance(logprobs, EchoLogprobs):
        tokens, starts, tops, aligned = logprobs.tokens, logprobs.text_offset, logprobs.top_logprobs, logprobs.aligned
        if not tokens:
            raise ValueError("the endpoint returned no prompt logprobs (echo unsupported?)")
        entries, any_entry = logprobs.entries, logprobs.any_entry
    else:
        if not logprobs or not logprobs.get("tokens") or logprobs.get("text_offset") is None:
            raise ValueError("the endpoint returned no prompt logprobs (echo unsupported?)")
        tokens, starts, tops = logprobs["tokens"], logprobs["text_offset"], logprobs.get("top_logprobs") or []
        aligned = logprobs.get("aligned")

        def entries(indices: list[int]) -> list[Any]:
            return [tops[i] for i in indices]

        def any_entry() -> bool:
            return any(isinstance(t, dict | list) for t in tops)
    if not (len(tokens) == len(starts) == len(tops)):
        raise ValueError("logprobs arrays differ in length")
    if not all(map(isinstance, starts, itertools.repeat(int))) or list(starts) != sorted(starts):
        raise ValueError("text_offset is not a non-decreasing list of character offsets")
    if not any_entry():
        raise ValueError("the endpoint returned no top_logprobs (echo unsupported?)")
    return starts, entries, bool(aligned)


def read_echo(logprobs: dict[str, Any] | EchoLogprobs | None, prompt: str, offsets: list[int]
              ) -> tuple[list[float], int]:
    """Predictions at the placeholder offsets of an echoed prompt, and how many placeholders had no
    digit among their top logprobs (those predict 0, as OpenAI's simulator does).

    top_logprobs[i] should be the distribution of token i given the tokens before it (OpenAI's
    convention), but some servers give each token the distribution of the next one (llama-cpp-python
    does for models without a BOS token, SmolLM2 among them). So both readings are made and the one
    that gives the digits more probability at the placeholders is kept: after the tab a digit (or the
    placeholder) is expected, where a tab is expected the digits are unlikely. An object marked
    {"aligned": true} (the in-process path) is read as OpenAI's convention without the check.
    `logprobs` is a completions choice's logprobs: a dict, or an `EchoLogprobs` (`loads_completions`)
    whose entries are decoded only where a reading looks. Raises ValueError only for a reply that is
    not an echo with logprobs, never for its content."""
    global _LAST_SHIFT
    starts, entries, aligned = _echo_arrays(logprobs)
    tokens, fragments = _places(prompt, starts, offsets)
    if aligned:
        values, _ = _read(entries, tokens, fragments, 0)
    else:
        # The shifted reading is kept only if it finds strictly more digit probability (ties: as sent).
        first = _LAST_SHIFT
        values, mass = _read(entries, tokens, fragments, first)
        other, _ = _read(entries, tokens, fragments, 1 - first, beat=mass, strict=first == 0)
        if other is not None:
            values, _LAST_SHIFT = other, 1 - first
    assert values is not None
    missing = sum(math.isnan(v) for v in values)
    return [0.0 if math.isnan(v) else v for v in values], missing


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
