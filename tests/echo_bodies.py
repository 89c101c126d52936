"""Echo completion bodies, ordinary and odd, built from seeds: what a model's server sends (both logprob
conventions, two tokenizers, 1 to 20 entries per token) and what broken servers send (missing or unequal
arrays, offsets out of order, no top logprobs, the list-of-{token, logprob} form, None, strings, huge and
non-finite logprobs, NaN and Infinity literals, duplicate keys, lone surrogates, bad choices and usage).

`outcomes(cases(), decode)` reads every body as the live client does (`decode`, then
`parse_completions_json` or `parse_completion_json`, then `simulate.echo_values`), once from each
starting logprob convention, and reduces what comes out (values as float.hex, the text's hash, the usage,
or the exception) to JSON. tests/data/echo_read.json holds what the reader gave before the lean echo path
(issue 20); tests/unit/test_echo_read.py requires every decoder to give exactly that. Regenerate only
after a deliberate change of results, and review the diff:
    PYTHONPATH=$PWD .venv/bin/python -m tests.echo_bodies tests/data/echo_read.json
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

PLACE = "unknown"
WORDS = ["the", " 7", "é", "日本", "🙂", "x y", "\\t", "10", "", " ", "a" * 30, "0", "<end>", "e\u0301", "9 ", "\\n"]
FILLERS = ["\n", " the", ",", " of", ".", " and", " a", "\t", " to", " in", " x", "unknown", " unknown", "tab",
           "\tunknown", " is", " 10", "-", ":", " it"]


@dataclass(frozen=True)
class Case:
    name: str
    built: list[tuple[str, list[int]]]  # (prompt, placeholder offsets) of each context, as echo_prompts gives
    body: bytes
    single: bool = False  # one prompt per request: parse_completion_json


def prompt_of(rows: list[str]) -> tuple[str, list[int]]:
    """A simulation prompt's shape without its template: rows `text<TAB>unknown`, the offsets after the tabs."""
    head = "Predict each row's activation 0-9.\n<start>\n"
    parts, offsets, pos = [head], [], len(head)
    for i, r in enumerate(rows):
        row = ("\n" if i else "") + r + "\t"
        offsets.append(pos + len(row))
        row += PLACE
        parts.append(row)
        pos += len(row)
    parts.append("\n<end>")
    return "".join(parts), offsets


def word_spans(prompt: str) -> list[tuple[int, int]]:
    """The loopback server's tokenizer: the tab joins the placeholder's token."""
    return [m.span() for m in re.finditer(r"\n|[^\S\n]*[^\s]+|[^\S\n]+", prompt)]


def cut_spans(prompt: str, offsets: list[int], rng: random.Random) -> list[tuple[int, int]]:
    """Random cuts; at a placeholder a token starts there, or the tab (and text before it) and part of
    the placeholder are one token; a few empty tokens."""
    cuts = {0, len(prompt)}
    pos = 0
    while pos < len(prompt):
        pos += rng.choice([1, 1, 2, 3, 5, 9])
        cuts.add(min(pos, len(prompt)))
    for p in offsets:
        if rng.random() < 0.5:
            cuts.add(p)
        else:
            cuts -= set(range(p - rng.choice([1, 1, 2, 4]), p + rng.choice([1, 3, 7])))
        cuts.add(p + len(PLACE))
    spans, ordered = [], sorted(cuts)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if rng.random() < 0.04:
            spans.append((a, a))
        spans.append((a, b))
    return spans


def digit_entries(rng: random.Random, fragment: str, k: int, high: bool = True) -> dict[str, float]:
    """A placeholder's top `k` entries: some digits (after `fragment`) and other text, as a model ranks them."""
    n_digits = rng.randint(1, min(k, 10))
    raw = [rng.random() + 0.01 for _ in range(n_digits)]
    scale = rng.uniform(0.8, 0.99) if high else rng.uniform(0.001, 0.05)
    entries = {fragment + str(d): math.log(r / sum(raw) * scale) for d, r in
               zip(rng.sample(range(10), n_digits), raw, strict=True)}
    for w in rng.sample(FILLERS, k - n_digits):
        entries.setdefault(w, math.log(rng.uniform(1e-4, 0.01)))
    return dict(sorted(entries.items(), key=lambda kv: -kv[1]))


def filler_entries(rng: random.Random, k: int) -> dict[str, float]:
    ps = sorted((rng.random() for _ in range(k)), reverse=True)
    return {w: math.log(p / sum(ps) * 0.9) for w, p in zip(rng.sample(FILLERS, k), ps, strict=True)}


def echo_logprobs(prompt: str, offsets: list[int], rng: random.Random, tokenizer: str = "cuts",
                  shifted: bool = False, k: int = 10) -> dict[str, Any]:
    """A server's logprobs object for an echoed prompt: the digits at the token holding each placeholder's
    first character (OpenAI's convention) or at the token before it (`shifted`, llama-cpp-python's for
    models without BOS); the first token has none."""
    spans = word_spans(prompt) if tokenizer == "words" else cut_spans(prompt, offsets, rng)
    starts = [a for a, _ in spans]
    tops: list[Any] = [filler_entries(rng, k) for _ in spans]
    for p in offsets:
        i = next(j for j, (a, b) in enumerate(spans) if a == p or a < p < b)
        tops[i] = digit_entries(rng, prompt[starts[i]:p], k)
    if shifted:
        tops = tops[1:] + [filler_entries(rng, k)]
    tops[0] = None
    return {"tokens": [prompt[a:b] for a, b in spans], "text_offset": starts,
            "token_logprobs": [None] + [-1.0] * (len(spans) - 1), "top_logprobs": tops}


def contexts(rng: random.Random, n: int, rows: tuple[int, int] = (1, 12)) -> list[tuple[str, list[int]]]:
    return [prompt_of([rng.choice(WORDS) + rng.choice(["", "x", " 5"]) for _ in range(rng.randint(*rows))])
            for _ in range(n)]


def completions(built: list[tuple[str, list[int]]], lps: list[Any], usage: Any = None) -> dict[str, Any]:
    """A completions body answering the contexts with placeholders, in order."""
    prompts = [p for p, offs in built if offs]
    n_tok = sum(len(lp["tokens"]) if isinstance(lp, dict) and isinstance(lp.get("tokens"), list) else 0
                for lp in lps)
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m",
            "choices": [{"index": i, "text": p + "0", "finish_reason": "length", "logprobs": lp}
                        for i, (p, lp) in enumerate(zip(prompts, lps, strict=True))],
            "usage": {"prompt_tokens": n_tok, "completion_tokens": 1, "total_tokens": n_tok + 1}
            if usage is None else usage}


def encode(body: Any, how: str = "orjson") -> bytes:
    if how == "orjson":
        return orjson.dumps(body)
    if how == "pretty":
        return json.dumps(body, indent=1).encode()
    return json.dumps(body).encode()  # the stdlib's: NaN, Infinity, big ints, \\uXXXX escapes


def _ordinary(seed: int, n: int, tokenizer: str, shifted: bool, k: int, rows: tuple[int, int] = (1, 12)
              ) -> tuple[list[tuple[str, list[int]]], dict[str, Any]]:
    rng = random.Random(seed)
    built = contexts(rng, n, rows)
    lps = [echo_logprobs(p, offs, rng, tokenizer, shifted, k) for p, offs in built]
    return built, completions(built, lps)


def _mutated(name: str, change: Callable[[dict[str, Any], random.Random], Any], how: str = "orjson",
             edit: Callable[[bytes], bytes] | None = None, seed: int = 11, shifted: bool = False) -> Case:
    """The ordinary 3-context body (cuts, 10 entries) with `change(body, rng)` applied to the decoded body
    (or replaced by the Whole it returns), then encoded and `edit`ed as bytes."""
    built, body = _ordinary(seed, 3, "cuts", shifted, 10)
    rng = random.Random(seed + 1000)
    body = copy.deepcopy(body)
    got = change(body, rng)
    body = got.value if isinstance(got, Whole) else body
    data = encode(body, how)
    return Case(name, built, edit(data) if edit else data)


def _digit_key(k: str) -> bool:
    """A digit entry's key as `digit_entries` writes it (a filler such as " 10" is not one)."""
    return k[-1:].isdigit() and (len(k) == 1 or k[-2] == "\t")


def _lp0(body: dict[str, Any]) -> dict[str, Any]:
    return body["choices"][0]["logprobs"]


def _placeholder_entries(body: dict[str, Any]) -> list[dict[str, Any]]:
    """Every digit-bearing entry of every choice."""
    return [t for c in body["choices"] for t in c["logprobs"]["top_logprobs"]
            if isinstance(t, dict) and any(map(_digit_key, t))]


def _set(lp_key: str, value: Any) -> Callable[[dict[str, Any], random.Random], None]:
    def change(body: dict[str, Any], rng: random.Random) -> None:
        _lp0(body)[lp_key] = value
    return change


def _drop(lp_key: str) -> Callable[[dict[str, Any], random.Random], None]:
    def change(body: dict[str, Any], rng: random.Random) -> None:
        del _lp0(body)[lp_key]
    return change


def _as_list_form(t: Any) -> Any:
    return [{"token": k, "logprob": v} for k, v in t.items()] if isinstance(t, dict) else t


def _odd_logprobs(body: dict[str, Any], rng: random.Random) -> None:
    odd = [None, "x", 1e308, 800, True, 0, -1e308, 1, -0.5, "-1", [], {}, 709.7, 710]
    for t in _placeholder_entries(body):
        key = rng.choice([k for k in t if _digit_key(k)])
        t[key] = rng.choice(odd)


def _non_finite(body: dict[str, Any], rng: random.Random) -> None:
    for t in _placeholder_entries(body)[::2]:
        key = rng.choice([k for k in t if _digit_key(k)])
        t[key] = rng.choice([math.nan, math.inf, -math.inf])


def _sentinel(values: list[bytes]) -> tuple[Callable[[dict[str, Any], random.Random], None], Callable[[bytes], bytes]]:
    """A logprob literal no encoder writes (1e999, a 20-digit integer): placed by a sentinel, then edited in."""
    def change(body: dict[str, Any], rng: random.Random) -> None:
        for i, t in enumerate(_placeholder_entries(body)[1::3]):
            key = next(k for k in t if _digit_key(k))
            t[key] = -1.2345678 - i * 1e-6

    def edit(data: bytes) -> bytes:
        for i in range(100):
            data = data.replace(repr(-1.2345678 - i * 1e-6).encode(), values[i % len(values)])
        return data
    return change, edit


def _ties(body: dict[str, Any], rng: random.Random) -> None:
    """Both conventions find the same digit probabilities, in the same order, with other digits."""
    for c in body["choices"]:
        tops = c["logprobs"]["top_logprobs"]
        for i, t in enumerate(tops):
            if i > 0 and isinstance(t, dict) and any(map(_digit_key, t)):
                probs = [v for k, v in t.items() if _digit_key(k)]
                tops[i - 1] = {str(d): v for d, v in zip(rng.sample(range(10), len(probs)), probs, strict=True)}


def _late_lead(body: dict[str, Any], rng: random.Random) -> None:
    """The shifted reading is behind for the first third of the placeholders and ahead after them."""
    for c in body["choices"]:
        tops = c["logprobs"]["top_logprobs"]
        marked = [i for i, t in enumerate(tops) if i > 0 and isinstance(t, dict) and any(map(_digit_key, t))]
        for n, i in enumerate(marked):
            digits = {k: v for k, v in tops[i].items() if _digit_key(k)}
            strong = {k[-1]: v for k, v in digits.items()}
            weak = {k[-1]: v + math.log(0.1) for k, v in digits.items()}
            if n < len(marked) // 3:
                tops[i - 1] = weak
            else:
                tops[i - 1] = strong
                tops[i] = {k: v + math.log(0.1) if k in digits else v for k, v in tops[i].items()}


def _over_one(body: dict[str, Any], rng: random.Random) -> None:
    for t in _placeholder_entries(body)[2::4]:
        for k in t:
            if _digit_key(k):
                t[k] = 0.5


def _bad_list_late(body: dict[str, Any], rng: random.Random) -> None:
    """List-form entries missing their logprob where only the shifted reading looks, from the 3rd
    placeholder on: whether they are reached depends on how far the losing reading goes."""
    for c in body["choices"]:
        tops = c["logprobs"]["top_logprobs"]
        marked = [i for i, t in enumerate(tops) if i > 0 and isinstance(t, dict) and any(map(_digit_key, t))]
        for i in marked[2:]:
            tops[i - 1] = [{"token": "5"}]


def _bad_list_everywhere(body: dict[str, Any], rng: random.Random) -> None:
    for c in body["choices"]:
        c["logprobs"]["top_logprobs"] = [[{"token": "5"}] if t else t for t in c["logprobs"]["top_logprobs"]]


def _scalars(body: dict[str, Any], rng: random.Random) -> None:
    tops = _lp0(body)["top_logprobs"]
    for i, t in enumerate(tops):
        if isinstance(t, dict) and any(map(_digit_key, t)) and rng.random() < 0.6:
            tops[i] = rng.choice([5, "x", True, [], 0.5, "7"])


def _list_form_mixed(body: dict[str, Any], rng: random.Random) -> None:
    for c in body["choices"]:
        tops = c["logprobs"]["top_logprobs"]
        for i, t in enumerate(tops):
            if isinstance(t, dict) and rng.random() < 0.5:
                entries = _as_list_form(t) + [{"tok": "3", "logprob": -0.1}, "junk", 7, {"token": 5, "logprob": -1.0}]
                rng.shuffle(entries)
                tops[i] = entries


def _list_form(body: dict[str, Any], rng: random.Random) -> None:
    for c in body["choices"]:
        c["logprobs"]["top_logprobs"] = [_as_list_form(t) for t in c["logprobs"]["top_logprobs"]]


def _no_digits(body: dict[str, Any], rng: random.Random) -> None:
    for c in body["choices"]:
        c["logprobs"]["top_logprobs"] = [{"unknown": -0.01, " the": -3.0} if t else t
                                         for t in c["logprobs"]["top_logprobs"]]


def _spaced_digits(body: dict[str, Any], rng: random.Random) -> None:
    """Digit entries with surrounding whitespace, or with another fragment than the prompt's."""
    for t in _placeholder_entries(body):
        for k in [k for k in t if _digit_key(k)]:
            t[rng.choice([" ", "\t", "\n", "x", "é\t", ""]) + k.strip() + rng.choice(["", " ", "\n"])] = t.pop(k)


def _shuffled_choices(body: dict[str, Any], rng: random.Random) -> None:
    body["choices"].reverse()


def _choice_key(key: str, value: Any, which: int = 1) -> Callable[[dict[str, Any], random.Random], None]:
    def change(body: dict[str, Any], rng: random.Random) -> None:
        if value is _DROP:
            del body["choices"][which][key]
        else:
            body["choices"][which][key] = value
    return change


_DROP = object()


def _usage(value: Any) -> Callable[[dict[str, Any], random.Random], None]:
    def change(body: dict[str, Any], rng: random.Random) -> None:
        if value is _DROP:
            del body["usage"]
        else:
            body["usage"] = value
    return change


def _replace(old: bytes, new: bytes, count: int = 1) -> Callable[[bytes], bytes]:
    return lambda data: data.replace(old, new, count)


def _first_entry(body: dict[str, Any], rng: random.Random) -> None:
    for c in body["choices"]:
        c["logprobs"]["top_logprobs"][0] = {"5": -0.1}


def _surrogate_key(body: dict[str, Any], rng: random.Random) -> None:
    for t in _placeholder_entries(body)[:4]:
        t["\ud800" + next(k for k in t if _digit_key(k))] = -0.3


def _offsets_huge(body: dict[str, Any], rng: random.Random) -> None:
    _lp0(body)["text_offset"][-1] = 10 ** 23


def _swap_offsets(body: dict[str, Any], rng: random.Random) -> None:
    offs = _lp0(body)["text_offset"]
    offs[3], offs[4] = offs[4], offs[3]


def _float_offset(body: dict[str, Any], rng: random.Random) -> None:
    _lp0(body)["text_offset"][2] = float(_lp0(body)["text_offset"][2])


def _bool_offset(body: dict[str, Any], rng: random.Random) -> None:
    _lp0(body)["text_offset"][0] = False


def _negative_offsets(body: dict[str, Any], rng: random.Random) -> None:
    _lp0(body)["text_offset"] = [s - 5 for s in _lp0(body)["text_offset"]]


def _lengths(key: str, delta: int) -> Callable[[dict[str, Any], random.Random], None]:
    def change(body: dict[str, Any], rng: random.Random) -> None:
        seq = _lp0(body)[key]
        _lp0(body)[key] = seq[:delta] if delta < 0 else seq + ["x"] * delta
    return change


def _all_tops(value: Any) -> Callable[[dict[str, Any], random.Random], None]:
    def change(body: dict[str, Any], rng: random.Random) -> None:
        _lp0(body)["top_logprobs"] = [copy.deepcopy(value) for _ in _lp0(body)["top_logprobs"]]
    return change


def _tokens_not_strings(body: dict[str, Any], rng: random.Random) -> None:
    _lp0(body)["tokens"] = list(range(len(_lp0(body)["tokens"])))


@dataclass(frozen=True)
class Whole:
    """What a change returns to replace the whole body."""

    value: Any


def _whole(value: Any) -> Callable[[dict[str, Any], random.Random], Any]:
    return lambda body, rng: Whole(value)


def cases() -> list[Case]:
    out: list[Case] = []
    # As servers answer: both conventions, both tokenizers, a full list request, few and many entries.
    for seed, n, tokenizer, shifted, k in [(0, 5, "cuts", False, 10), (1, 5, "cuts", True, 10),
                                           (2, 5, "words", False, 10), (3, 5, "words", True, 10),
                                           (4, 20, "words", False, 10), (5, 4, "cuts", False, 1),
                                           (6, 4, "cuts", True, 2), (7, 4, "cuts", False, 20),
                                           (8, 6, "cuts", False, 5), (9, 6, "cuts", True, 5)]:
        built, body = _ordinary(seed, n, tokenizer, shifted, k)
        out.append(Case(f"ordinary/{tokenizer}/{'shifted' if shifted else 'openai'}/n{n}/k{k}/s{seed}", built,
                        encode(body)))
    built, body = _ordinary(12, 4, "cuts", False, 10)
    empty = prompt_of([])
    out.append(Case("ordinary/an-empty-context", [built[0], empty, *built[1:]], encode(body)))
    out.append(Case("ordinary/pretty-printed", built, encode(body, "pretty")))
    out.append(Case("ordinary/stdlib-escapes", built, encode(body, "stdlib")))
    for seed, shifted in [(13, False), (14, True)]:
        built, body = _ordinary(seed, 1, "cuts", shifted, 10)
        out.append(Case(f"single/{'shifted' if shifted else 'openai'}", built, encode(body), single=True))
    built, body = _ordinary(15, 1, "cuts", False, 10)
    body["choices"][0]["logprobs"] = None
    out.append(Case("single/logprobs-null", built, encode(body), single=True))
    out.append(Case("single/no-choices", built, b'{"choices": []}', single=True))

    inf_change, inf_edit = _sentinel([b"1e999", b"-1e999"])
    big_change, big_edit = _sentinel([b"18446744073709551616", b"-18446744073709551616", b"-99999999999999999999"])
    out += [
        _mutated("logprobs/null", _choice_key("logprobs", None, 0)),
        _mutated("logprobs/absent", _choice_key("logprobs", _DROP, 0)),
        _mutated("logprobs/not-an-object", _choice_key("logprobs", [1, 2], 0)),
        _mutated("tokens/empty", _set("tokens", [])),
        _mutated("tokens/absent", _drop("tokens")),
        _mutated("tokens/null", _set("tokens", None)),
        _mutated("tokens/not-strings", _tokens_not_strings),
        _mutated("tokens/a-string", _set("tokens", "abc")),
        _mutated("tokens/longer", _lengths("tokens", 1)),
        _mutated("text_offset/null", _set("text_offset", None)),
        _mutated("text_offset/absent", _drop("text_offset")),
        _mutated("text_offset/decreasing", _swap_offsets),
        _mutated("text_offset/a-float", _float_offset),
        _mutated("text_offset/a-bool", _bool_offset),
        _mutated("text_offset/huge", _offsets_huge, how="stdlib"),
        _mutated("text_offset/negative", _negative_offsets),
        _mutated("text_offset/shorter", _lengths("text_offset", -1)),
        _mutated("top_logprobs/shorter", _lengths("top_logprobs", -1)),
        _mutated("top_logprobs/all-null", _all_tops(None)),
        _mutated("top_logprobs/absent", _drop("top_logprobs")),
        _mutated("top_logprobs/empty", _set("top_logprobs", [])),
        _mutated("top_logprobs/all-empty-dicts", _all_tops({})),
        _mutated("top_logprobs/all-empty-lists", _all_tops([])),
        _mutated("top_logprobs/scalars-at-placeholders", _scalars),
        _mutated("top_logprobs/first-not-null", _first_entry),
        _mutated("list-form/everywhere", _list_form),
        _mutated("list-form/mixed-and-junk", _list_form_mixed),
        _mutated("list-form/no-logprob-everywhere", _bad_list_everywhere),
        _mutated("list-form/no-logprob-where-the-losing-reading-looks-late", _bad_list_late),
        _mutated("list-form/unhashable-token", _all_tops([{"token": ["5"], "logprob": -0.1}])),
        _mutated("values/odd-logprobs", _odd_logprobs),
        _mutated("values/nan-and-infinity-literals", _non_finite, how="stdlib"),
        _mutated("values/1e999-literals", inf_change, edit=inf_edit),
        _mutated("values/20-digit-integers", big_change, edit=big_edit),
        _mutated("values/over-one", _over_one),
        _mutated("values/spaced-and-prefixed-digits", _spaced_digits),
        _mutated("values/no-digits-anywhere", _no_digits),
        _mutated("conventions/ties", _ties),
        _mutated("conventions/ties-shifted-base", _ties, shifted=True),
        _mutated("conventions/the-lead-changes-late", _late_lead),
        _mutated("aligned/true", _set("aligned", True)),
        _mutated("aligned/false", _set("aligned", False)),
        _mutated("aligned/null", _set("aligned", None)),
        _mutated("aligned/a-string", _set("aligned", "yes")),
        _mutated("aligned/true-shifted", _set("aligned", True), shifted=True),
        _mutated("keys/duplicate-digit", _set("zz", 0), edit=_replace(b'"0":', b'"0":-0.01,"0":', 3)),
        _mutated("keys/duplicate-tokens", lambda b, r: None, edit=_replace(b'"token_logprobs"', b'"tokens"')),
        _mutated("keys/duplicate-top_logprobs", _set("zz", [None]), edit=_replace(b'"zz"', b'"top_logprobs"')),
        _mutated("keys/lone-surrogate", _surrogate_key, how="stdlib"),
        _mutated("choices/reversed", _shuffled_choices),
        _mutated("choices/index-absent", _choice_key("index", _DROP)),
        _mutated("choices/index-a-string", _choice_key("index", "1")),
        _mutated("choices/index-a-bool", _choice_key("index", True)),
        _mutated("choices/index-huge", _choice_key("index", 10 ** 22), how="stdlib"),
        _mutated("choices/text-null", _choice_key("text", None)),
        _mutated("choices/one-missing", lambda b, r: b["choices"].pop() and None),
        _mutated("choices/not-a-list", _whole({"choices": {"0": 1}})),
        _mutated("usage/absent", _usage(_DROP)),
        _mutated("usage/null", _usage(None)),
        _mutated("usage/a-string", _usage("lots")),
        _mutated("usage/cached", _usage({"prompt_tokens": 100, "completion_tokens": 3,
                                         "prompt_tokens_details": {"cached_tokens": 40}})),
        _mutated("usage/huge", _usage({"prompt_tokens": 10 ** 30, "completion_tokens": 1}), how="stdlib"),
        _mutated("usage/nan", _usage({"prompt_tokens": math.nan, "completion_tokens": 1}), how="stdlib"),
        _mutated("body/a-list", _whole([1, 2])),
        _mutated("body/null", _whole(None)),
        _mutated("body/trailing-text", lambda b, r: None, edit=lambda d: d + b" x"),
        _mutated("body/byte-order-mark", lambda b, r: None, edit=lambda d: b"\xef\xbb\xbf" + d),
        _mutated("body/not-json", lambda b, r: None, edit=lambda d: d[: len(d) // 2]),
        _mutated("body/invalid-utf-8", lambda b, r: None, edit=_replace(b'"tokens":["', b'"tokens":["\xff')),
    ]
    return out


def outcome(case: Case, decode: Callable[[bytes], Any]) -> dict[str, Any]:
    """What the client and the echo reader make of a case's body, from each starting convention."""
    from autointerp.label import echo_read, simulate
    from autointerp.llm import bodies

    out: dict[str, Any] = {}
    for first in (0, 1):
        echo_read._LAST_SHIFT = first
        try:
            if case.single:
                text, lp, usage = bodies.parse_completion_json(decode(case.body))
                lps = [lp]
            else:
                texts, lps, usage = bodies.parse_completions_json(decode(case.body), sum(1 for _, o in case.built if o))
                text = "".join(texts)
            values = simulate.echo_values(case.built, lps, [])
            got: dict[str, Any] = {"text_sha": hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16],
                                   "usage": list(usage), "values": [[v.hex() for v in vs] for vs in values]}
        except Exception as exc:
            got = {"error": f"{type(exc).__name__}: {exc}"}
        got["last_shift"] = echo_read._LAST_SHIFT
        out[str(first)] = got
    return out


def outcomes(all_cases: list[Case], decode: Callable[[bytes], Any]) -> dict[str, Any]:
    return {c.name: outcome(c, decode) for c in all_cases}


if __name__ == "__main__":
    from autointerp.llm import bodies

    found = cases()
    assert len({c.name for c in found}) == len(found), "case names repeat"
    Path(sys.argv[1]).write_text(json.dumps(outcomes(found, bodies.loads), indent=1, sort_keys=True) + "\n")
