"""Planted features: each feature's activation on every token is a rule with a known one-line description
(a token set, a bigram, text inside brackets, numbers, positions, OR / AND / exception of rules, graded and
noisy variants), so an explainer's labels and a simulator's label-following can be checked against the truth.

A rule reads token strings only. The same code computes activations over a batch of token ids (the
collector's feature-function interface: ids [B, L] -> activations [B, L, F]) and over one list of strings
(`apply_to_strings`, what a scripted oracle simulator uses): each token predicate is evaluated once per
vocabulary string, and the sequence logic runs on the resulting masks.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autointerp.collect.planted_rules import BUILTIN_RULES
from autointerp.errors import BadInput

Spec = dict[str, Any]
_FIELDS = ("name", "description", "kind", "params")


class _Tokens:
    """A batch of token ids [B, L] and the vocabulary strings they index; predicates are cached per vocabulary."""

    def __init__(self, ids: torch.Tensor, strings: list[str], cache: dict[str, torch.Tensor]):
        self.ids, self.strings, self.cache = ids, strings, cache
        # Per batch: a sub-rule shared by several rules (numbers, 'the') and the digit runs are computed once.
        self.memo: dict[str, Any] = {}

    def vocab(self, key: str, fn: Callable[[str], float]) -> torch.Tensor:
        if key not in self.cache:
            self.cache[key] = torch.tensor([float(fn(s)) for s in self.strings], dtype=torch.float32)
        return self.cache[key][self.ids]


def _norm(s: str) -> str:
    return s.strip().lower()


def _shift(x: torch.Tensor, n: int = 1) -> torch.Tensor:
    """x moved n positions later along the context (the first n positions get 0)."""
    out = torch.zeros_like(x)
    out[:, n:] = x[:, :-n] if n < x.shape[1] else out[:, n:]
    return out


def _words(p: Spec) -> Callable[[str], bool]:
    words = {_norm(w) for w in p["words"]}
    return lambda s: _norm(s) in words


def _token(p: Spec, t: _Tokens) -> torch.Tensor:
    return t.vocab(f"words:{sorted(p['words'])}", _words(p))


def _regex(p: Spec, t: _Tokens) -> torch.Tensor:
    pattern = re.compile(p["pattern"])
    return t.vocab(f"re:{p['pattern']}", lambda s: pattern.fullmatch(s.strip()) is not None)


def _bigram(p: Spec, t: _Tokens) -> torch.Tensor:
    after = t.vocab(f"words:{sorted(p['after'])}", _words({"words": p["after"]}))
    return _token(p, t) * _shift(after)


def _inside(p: Spec, t: _Tokens) -> torch.Tensor:
    """Tokens after an opening delimiter and before its close (the delimiter tokens themselves excluded)."""
    o, c = p["open"], p["close"]
    opens = t.vocab(f"count:{o}", lambda s: s.count(o))
    if o == c:  # quotes: inside after an odd number of them
        before = _shift(torch.cumsum(opens, dim=1))
        return ((before % 2 == 1) & (opens == 0)).float()
    closes = t.vocab(f"count:{c}", lambda s: s.count(c))
    depth = _shift(torch.cumsum(opens - closes, dim=1))
    return ((depth > 0) & (opens == 0) & (closes == 0)).float()


def _digit_runs(t: _Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    """(is a digit token, the value of the whole run of digit tokens it belongs to), each [B, L]."""
    if "digit_runs" not in t.memo:
        t.memo["digit_runs"] = _compute_digit_runs(t)
    return t.memo["digit_runs"]


def _compute_digit_runs(t: _Tokens) -> tuple[torch.Tensor, torch.Tensor]:
    digit = t.vocab("digit", lambda s: s.strip().isdigit() and s.strip().isascii() and len(s.strip()) < 15)
    dval = t.vocab("digit_value", lambda s: float(s.strip()) if s.strip().isdigit() and s.strip().isascii()
                   and len(s.strip()) < 15 else 0.0).double()
    scale = 10.0 ** t.vocab("digit_len", lambda s: len(s.strip())).double()
    value = torch.zeros_like(dval)
    length = dval.shape[1]
    value[:, 0] = dval[:, 0]
    for i in range(1, length):  # left to right: the run's value so far
        cont = (digit[:, i] > 0) & (digit[:, i - 1] > 0)
        value[:, i] = torch.where(cont, value[:, i - 1] * scale[:, i] + dval[:, i], dval[:, i])
    for i in range(length - 2, -1, -1):  # right to left: every digit gets its run's final value
        same = (digit[:, i] > 0) & (digit[:, i + 1] > 0)
        value[:, i] = torch.where(same, value[:, i + 1], value[:, i])
    return digit, value


def _number(p: Spec, t: _Tokens) -> torch.Tensor:
    digit, value = _digit_runs(t)
    return (digit * ((value >= p["min"]) & (value <= p["max"]))).float()


def _number_size(p: Spec, t: _Tokens) -> torch.Tensor:
    """Graded: rising with the number's size, log10(1 + value) / log10(1 + cap), at most 1."""
    digit, value = _digit_runs(t)
    return (digit * torch.clamp(torch.log10(1 + value) / math.log10(1 + p["cap"]), max=1.0)).float()


def _ends_sentence(s: str) -> bool:
    return "\n" in s or s.strip()[-1:] in (".", "!", "?")


def _sentence_start(p: Spec, t: _Tokens) -> torch.Tensor:
    cap = t.vocab("capitalised", lambda s: re.fullmatch(r"\s?[A-Z][a-z]+", s) is not None)
    return cap * _shift(t.vocab("ends_sentence", _ends_sentence))


def _line_start(p: Spec, t: _Tokens) -> torch.Tensor:
    text = t.vocab("not_blank", lambda s: bool(s.strip()))
    return text * _shift(t.vocab("newline", lambda s: "\n" in s))


def _position(p: Spec, t: _Tokens) -> torch.Tensor:
    pos = torch.arange(t.ids.shape[1]).expand(t.ids.shape)
    return ((pos >= p["start"]) & (pos < p["end"])).float()


def _position_graded(p: Spec, t: _Tokens) -> torch.Tensor:
    length = t.ids.shape[1]
    return (torch.arange(length, dtype=torch.float32) / max(length - 1, 1)).expand(t.ids.shape).clone()


def _or(p: Spec, t: _Tokens) -> torch.Tensor:
    return torch.stack([fire(r, t) for r in p["rules"]]).amax(dim=0)


def _recent(x: torch.Tensor, within: int) -> torch.Tensor:
    """1 where x fired in one of the `within` positions before."""
    return torch.stack([_shift(x, n) for n in range(1, within + 1)]).amax(dim=0)


def _and(p: Spec, t: _Tokens) -> torch.Tensor:
    return fire(p["then"], t) * (_recent(fire(p["first"], t), p["within"]) > 0)


def _except(p: Spec, t: _Tokens) -> torch.Tensor:
    return fire(p["rule"], t) * (_recent(fire(p["after"], t), p.get("within", 1)) == 0)


# kind -> (activation function, its required parameters and their types)
KINDS: dict[str, tuple[Callable[[Spec, _Tokens], torch.Tensor], dict[str, type | tuple[type, ...]]]] = {
    "token": (_token, {"words": list}),
    "regex": (_regex, {"pattern": str}),
    "bigram": (_bigram, {"words": list, "after": list}),
    "inside": (_inside, {"open": str, "close": str}),
    "number": (_number, {"min": (int, float), "max": (int, float)}),
    "number_size": (_number_size, {"cap": (int, float)}),
    "sentence_start": (_sentence_start, {}),
    "line_start": (_line_start, {}),
    "position": (_position, {"start": int, "end": int}),
    "position_graded": (_position_graded, {}),
    "or": (_or, {"rules": list}),
    "and": (_and, {"first": dict, "then": dict, "within": int}),
    "except": (_except, {"rule": dict, "after": dict}),
}
_NESTED = {"or": ("rules",), "and": ("first", "then"), "except": ("rule", "after")}


def fire(spec: Spec, t: _Tokens) -> torch.Tensor:
    """A (sub-)rule's activation [B, L], before noise."""
    key = json.dumps([spec["kind"], spec.get("params", {})], sort_keys=True)
    if key not in t.memo:
        t.memo[key] = KINDS[spec["kind"]][0](spec.get("params", {}), t)
    return t.memo[key]


# ---------------------------------------------------------------- checking specs


def _check_params(kind: Any, params: Any, where: str) -> None:
    if kind not in KINDS:
        raise BadInput(f"{where}: field 'kind': unknown kind {kind!r}; known kinds: {', '.join(KINDS)}")
    if not isinstance(params, dict):
        raise BadInput(f"{where}: field 'params': expected an object")
    for name, typ in KINDS[kind][1].items():
        if name not in params:
            raise BadInput(f"{where}: field 'params.{name}' is missing (kind {kind!r} needs it)")
        if not isinstance(params[name], typ) or isinstance(params[name], bool):
            raise BadInput(f"{where}: field 'params.{name}': wrong type {type(params[name]).__name__}")
    for name in _NESTED.get(kind, ()):
        subs = params[name] if kind == "or" else [params[name]]
        if kind == "or" and len(subs) < 2:
            raise BadInput(f"{where}: field 'params.rules': an OR needs at least two rules")
        for i, sub in enumerate(subs):
            field = f"params.{name}" + (f"[{i}]" if kind == "or" else "")
            if not isinstance(sub, dict):
                raise BadInput(f"{where}: field '{field}': expected a rule object")
            _check_params(sub.get("kind"), sub.get("params", {}), f"{where}, {field}")
    if kind == "except" and "within" in params and not isinstance(params["within"], int):
        raise BadInput(f"{where}: field 'params.within': expected an integer")


def check_spec(spec: Any, index: int) -> Spec:
    """The spec, checked: BadInput names the rule and the field that is wrong."""
    where = f"rule {index}" + (f" '{spec['name']}'" if isinstance(spec, dict) and spec.get("name") else "")
    if not isinstance(spec, dict):
        raise BadInput(f"{where}: expected an object with fields {', '.join(_FIELDS)}")
    for field in _FIELDS:
        if field not in spec:
            raise BadInput(f"{where}: field '{field}' is missing")
    unknown = set(spec) - {*_FIELDS, "noise"}
    if unknown:
        raise BadInput(f"{where}: field '{sorted(unknown)[0]}' is not a rule field ({', '.join(_FIELDS)}, noise)")
    for field in ("name", "description"):
        if not isinstance(spec[field], str) or not spec[field].strip():
            raise BadInput(f"{where}: field '{field}': expected a non-empty string")
    noise = spec.get("noise", 0.0)
    if not isinstance(noise, int | float) or isinstance(noise, bool) or not 0 <= noise <= 1:
        raise BadInput(f"{where}: field 'noise': expected a number from 0 to 1")
    _check_params(spec["kind"], spec["params"], where)
    return {**spec, "noise": float(noise)}


def read_rules(path: str | Path) -> list[Spec]:
    """A user's rules file: JSON or YAML, a list of rules (or {"rules": [...]})."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise BadInput(f"--rules {path}: cannot read it ({exc.strerror})") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # the parser's own message says where
        raise BadInput(f"--rules {path}: not valid {'YAML' if p.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: "
                       f"{str(exc).splitlines()[0]}") from None
    rules = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(rules, list) or not rules:
        raise BadInput(f"--rules {path}: expected a non-empty list of rules")
    return [check_spec(r, i) for i, r in enumerate(rules)]


def rule_set(user: list[Spec] | None = None, builtin: bool = True) -> list[Spec]:
    """The built-in rules (checked) then the user's; names must be unique."""
    rules = [check_spec(r, i) for i, r in enumerate(BUILTIN_RULES)] if builtin else []
    rules += user or []
    seen: set[str] = set()
    for r in rules:
        if r["name"] in seen:
            raise BadInput(f"rule '{r['name']}': field 'name': another rule has this name")
        seen.add(r["name"])
    return rules


def spec_hash(spec: Spec) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- activations


def _noise(spec: Spec, index: int, t: _Tokens, act: torch.Tensor) -> torch.Tensor:
    """Multiplicative jitter on the firing tokens and rare spurious firings, both of size `noise`, drawn from a
    hash of (token, previous token, position, rule): the same tokens always get the same noise."""
    from autointerp.collect.collector import hash_uniform

    pos = torch.arange(t.ids.shape[1]).expand(t.ids.shape)
    key = (t.ids * 50_021 + _shift(t.ids) * 7 + pos) * 97 + index
    u1 = hash_uniform(index, 0x91A7, key).float()
    u2 = hash_uniform(index, 0x91A8, key).float()
    jitter = act * (1 + spec["noise"] * (2 * u1 - 1))
    spurious = (u2 < 0.02 * spec["noise"]).float() * spec["noise"] * u1
    return torch.where(act > 0, jitter, spurious)


@dataclass
class PlantedFeatures:
    """The collector's feature function for `rules` over a tokenizer's vocabulary strings."""

    rules: list[Spec]
    strings: list[str]

    def __post_init__(self) -> None:
        self._cache: dict[str, torch.Tensor] = {}

    @property
    def n_features(self) -> int:
        return len(self.rules)

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        t = _Tokens(ids.long(), self.strings, self._cache)
        acts = []
        for i, spec in enumerate(self.rules):
            act = fire(spec, t)
            acts.append(_noise(spec, i, t, act) if spec.get("noise") else act)
        return torch.stack(acts, dim=-1).float()


def apply_to_strings(spec: Spec, tokens: list[str]) -> list[float]:
    """A rule's activations, without its noise, on one context given as token strings (what the description
    says: a scripted oracle simulator's prediction)."""
    vocab = sorted(set(tokens))
    ids = torch.tensor([[vocab.index(s) for s in tokens]])
    t = _Tokens(ids, vocab, {})
    return [float(v) for v in fire(spec, t)[0]]


@dataclass
class PlantedProbe:
    """One planted feature (rule `index` of `rules`, with its noise, as collected) on probe texts, tokenized
    like the corpus and cut to `ctx_len`."""

    rules: list[Spec]
    index: int
    tokenizer: Any
    strings: list[str]
    ctx_len: int

    def __post_init__(self) -> None:
        self._features = PlantedFeatures(self.rules, self.strings)

    def __call__(self, text: str) -> tuple[list[int], list[float], int]:
        from autointerp.models.probe import tokenize_probe

        ids, cut = tokenize_probe(self.tokenizer, text, self.ctx_len)
        if not ids:
            return [], [], cut
        acts = self._features(torch.tensor([ids], dtype=torch.long))[0, :, self.index]
        return ids, [float(a) for a in acts], cut
