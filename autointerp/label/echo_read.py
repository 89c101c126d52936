"""Reading an echo reply: the expected digit 0-9 at each placeholder of a simulation prompt, from the top logprobs
the endpoint returned for the prompt's tokens (label.simulate builds the prompts and sends the requests)."""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

from autointerp.llm.bodies import EchoLogprobs

DIGITS = {str(d): d for d in range(10)}


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
