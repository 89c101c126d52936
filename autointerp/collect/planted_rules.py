"""The built-in planted rules: each a rule spec (name, description, kind, params, noise) whose description is
what a person would write. They cover FIND's single, OR, AND and exception concepts (Schwettmann et al.
2023) and token sets, bigrams, delimiters, numbers, sentence and line starts, positions, graded, noisy, dense
and very sparse rules. collect/planted.py checks and runs them."""

from __future__ import annotations

from typing import Any


def _tok(*words: str) -> dict[str, Any]:
    return {"kind": "token", "params": {"words": list(words)}}


def _rule(name: str, description: str, kind: str, noise: float = 0.0, **params: Any) -> dict[str, Any]:
    return {"name": name, "description": description, "kind": kind, "params": params, "noise": noise}


BUILTIN_RULES: list[dict[str, Any]] = [
    # single tokens and token sets
    _rule("the", "the word 'the'", "token", words=["the"]),
    _rule("and", "the word 'and'", "token", words=["and"]),
    _rule("comma", "commas", "token", words=[","]),
    _rule("period", "periods at the end of a sentence", "token", words=["."]),
    _rule("pronouns", "personal pronouns such as it, they and you", "token",
          words=["it", "they", "you", "we", "he", "she", "them", "us"]),
    _rule("py-keywords", "the Python keywords def, class and return", "token", words=["def", "class", "return"]),
    _rule("booleans", "the constants True, False and None", "token", words=["True", "False", "None"]),
    _rule("equals", "equals signs", "token", words=["=", "=="]),
    _rule("all-caps", "words written in all capital letters", "regex", pattern=r"[A-Z]{2,}"),
    _rule("ing-words", "words ending in -ing", "regex", pattern=r"[a-z]+ing"),
    # bigrams
    _rule("the-after-of", "the word 'the' right after 'of'", "bigram", words=["the"], after=["of"]),
    _rule("be-after-to", "the word 'be' right after 'to'", "bigram", words=["be"], after=["to"]),
    _rule("is-after-it", "the word 'is' right after 'it'", "bigram", words=["is"], after=["it"]),
    # delimiters
    _rule("in-parens", "text inside parentheses", "inside", open="(", close=")"),
    _rule("in-brackets", "text inside square brackets", "inside", open="[", close="]"),
    _rule("in-quotes", "text inside double quotes", "inside", open='"', close='"'),
    _rule("in-code", "text inside backtick code spans", "inside", open="`", close="`"),
    # numbers
    _rule("numbers", "numbers (any digits)", "number", min=0, max=10**15),
    _rule("small-numbers", "single-digit numbers from 0 to 9", "number", min=0, max=9),
    _rule("years", "years from 1900 to 2099", "number", min=1900, max=2099),
    _rule("number-size", "numbers, more strongly the larger the number", "number_size", cap=10**6),
    # sentence, line and position
    _rule("sentence-start", "capitalised words at the start of a sentence", "sentence_start"),
    _rule("line-start", "the first word of each line", "line_start"),
    _rule("first-tokens", "the first four tokens of the text", "position", start=0, end=4),
    _rule("position", "every token, more strongly the later it comes in the text", "position_graded"),
    # OR
    _rule("numbers-or-parens", "numbers or text inside parentheses", "or",
          rules=[{"kind": "number", "params": {"min": 0, "max": 10**15}},
                 {"kind": "inside", "params": {"open": "(", "close": ")"}}]),
    _rule("the-or-comma", "the word 'the' or a comma", "or", rules=[_tok("the"), _tok(",")]),
    # AND: X within N tokens after Y
    _rule("the-after-comma", "the word 'the' within 5 tokens after a comma", "and",
          first=_tok(","), then=_tok("the"), within=5),
    _rule("number-after-paren", "numbers within 4 tokens after an opening parenthesis", "and",
          first=_tok("(", " ("), then={"kind": "number", "params": {"min": 0, "max": 10**15}}, within=4),
    # exceptions: X except after Y
    _rule("the-not-after-of", "the word 'the' except right after 'of'", "except",
          rule=_tok("the"), after=_tok("of")),
    _rule("period-not-after-digit", "periods except right after a number", "except",
          rule=_tok("."), after={"kind": "number", "params": {"min": 0, "max": 10**15}}),
    # noisy
    _rule("a-noisy", "the word 'a'", "token", noise=0.3, words=["a"]),
    _rule("to-noisy", "the word 'to'", "token", noise=0.6, words=["to"]),
    # dense and very sparse
    _rule("letters", "any word made of letters", "regex", pattern=r"[A-Za-z]+"),
    _rule("however", "the word 'however'", "token", words=["however"]),
]
