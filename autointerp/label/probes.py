"""Probe texts for the labelling agent: parsing the explainer's texts, running them on the subject (the
feature as collected: a model's neuron or SAE latent at its hook, or a planted dictionary's rule), and
showing the real activations back as hits, misses and false alarms."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp import store
from autointerp.label.explain import scale
from autointerp.llm import prompts
from autointerp.llm.client import LLMReply

MAX_PROBE_CHARS = 400  # a probe is a short text; a longer line is cut here before tokenizing
_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?([+-])\s*(.+?)\s*$")


@dataclass(frozen=True)
class Probe:
    text: str
    expect: bool  # the explainer says the feature should fire on it


def probe_parser(n: int) -> Callable[[LLMReply], list[Probe]]:
    """Parse at most `n` '+ text' / '- text' lines; ValueError (re-asked) when there is none."""

    def parse(reply: LLMReply) -> list[Probe]:
        probes = []
        for line in reply.text.splitlines():
            m = _LINE.match(line)
            if m and m.group(2).strip("\"' "):
                probes.append(Probe(m.group(2).strip("\"' ")[:MAX_PROBE_CHARS], m.group(1) == "+"))
        if not probes:
            raise ValueError("no line starts with + or -")
        return probes[:n]

    return parse


Reader = Callable[[str], tuple[list[int], list[float], int]]  # text -> token ids, activations, tokens cut


@dataclass
class Subject:
    """A feature's real activations on any text, as its dictionary was collected."""

    read: Reader
    decode: Callable[[int], str]
    lock: threading.Lock

    def run(self, probes: list[Probe]) -> list[dict[str, Any]]:
        """Each probe with its tokens, activations and the number of tokens cut at the context length."""
        out = []
        with self.lock:  # one forward pass at a time on the shared model
            for p in probes:
                ids, acts, cut = self.read(p.text)
                out.append({"text": p.text, "expect": p.expect, "tokens": [self.decode(i) for i in ids],
                            "acts": acts, "cut": cut})
        return out


@dataclass
class Loaded:
    """A dictionary's subject, loaded once: its tokenizer and either its rules (planted) or its model and SAE."""

    dictionary: store.DictionaryRow
    tokenizer: Any
    rules: list[dict[str, Any]]
    model: Any = None
    sae: Any = None
    strings: list[str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # one forward pass at a time

    @property
    def bos(self) -> int | None:
        """The token put in front of every text read through the model, as at collection (None: none)."""
        return self.tokenizer.bos_token_id if self.dictionary.config.get("prepend_bos", True) else None


def load(db: str | Path, dictionary_id: int) -> Loaded:
    """Load what the dictionary's features are read from (the model, on the CPU, as collected)."""
    from autointerp import models

    # Read-write like the label pass's own connections: DuckDB refuses two configurations of one file in one process.
    with store.open_store(db, wait_s=600) as con:
        d = store.get_dictionary(con, dictionary_id)
        truth = store.planted_truth(con, dictionary_id) if d.kind == "planted" else []
    tokenizer = models.load_tokenizer(d.model)
    if d.kind == "planted":
        from autointerp.collect.stage import token_strings

        return Loaded(d, tokenizer, [t.spec for t in truth], strings=token_strings(tokenizer))
    sae = models.load_sae(d.sae) if d.sae else None
    model = models.load_model(d.model, random_init=d.random_init, seed=d.seed,
                              init_scheme=d.config.get("init_scheme", "init"),
                              from_pretrained_kwargs=models.sae_model_kwargs(sae) if sae is not None else None)
    return Loaded(d, tokenizer, [], model, sae)


def subject(loaded: Loaded, feature: int) -> Subject:
    """The subject of `feature`: its planted rule, or its model (and SAE) read at the dictionary's hook."""
    d, tokenizer = loaded.dictionary, loaded.tokenizer
    if d.kind == "planted":
        from autointerp.collect.planted import PlantedProbe

        assert loaded.strings is not None
        rule: Reader = PlantedProbe(loaded.rules, feature, tokenizer, loaded.strings, d.ctx_len)
        return Subject(rule, loaded.strings.__getitem__, loaded.lock)
    from autointerp import models
    from autointerp.models.probe import ModelProbe

    with loaded.lock:  # the reader runs the model once when made; hooks are the model's, shared by all threads
        reader = models.FeatureReader(loaded.model, d.hook, sae=loaded.sae, start=feature, stop=feature + 1)
    probe = ModelProbe(reader, tokenizer, d.ctx_len, loaded.bos)
    return Subject(probe, lambda i: tokenizer.decode([i]), loaded.lock)


class Subjects:
    """Dictionaries loaded once per pass; a feature's subject is built on demand."""

    def __init__(self, db: str | Path):
        self.db = db
        self._lock = asyncio.Lock()
        self._loaded: dict[int, Loaded] = {}

    async def loaded(self, dictionary_id: int) -> Loaded:
        async with self._lock:
            if dictionary_id not in self._loaded:
                self._loaded[dictionary_id] = await asyncio.to_thread(load, self.db, dictionary_id)
            return self._loaded[dictionary_id]

    async def get(self, dictionary_id: int, feature: int) -> Subject:
        return await asyncio.to_thread(subject, await self.loaded(dictionary_id), feature)


def _marked(tokens: list[str], levels: list[int]) -> str:
    text = ""
    for k, (t, s) in enumerate(zip(tokens, levels, strict=True)):
        opens = s > 0 and (k == 0 or levels[k - 1] == 0)
        closes = s > 0 and (k == len(levels) - 1 or levels[k + 1] == 0)
        text += ("<<" if opens else "") + prompts.escape_data(t) + (">>" if closes else "")
    return text


def outcome(result: dict[str, Any], max_act: float) -> str:
    """hit, miss, false alarm or quiet (as expected): did the feature fire (level >= 1 on the 0-9 scale)?"""
    fired = any(s > 0 for s in scale(result["acts"], max_act))
    if result["expect"]:
        return "hit" if fired else "miss"
    return "false alarm" if fired else "quiet"


def format_results(results: list[dict[str, Any]], max_act: float) -> tuple[str, str]:
    """The probe results as the explainer sees them, and the one-line tally."""
    blocks = []
    for i, r in enumerate(results, 1):
        levels = scale(r["acts"], max_act)
        order = sorted((k for k, s in enumerate(levels) if s > 0), key=lambda k: (-r["acts"][k], k))[:4]
        strongest = ", ".join(f'"{prompts.escape_data(r["tokens"][k]).strip()}" {levels[k]}' for k in order)
        expected = "you expected it to fire" if r["expect"] else "you expected it not to fire"
        cut = f" (cut: {r['cut']} tokens past the context length were not run)" if r["cut"] else ""
        blocks.append(f"<probe {i}>{_marked(r['tokens'], levels)}</probe>{cut}\n{outcome(r, max_act).upper()}: "
                      f"{expected}. Strongest: {strongest or 'none'}")
    tally = [outcome(r, max_act) for r in results]
    summary = (f"{tally.count('hit')} hits, {tally.count('miss')} misses, {tally.count('false alarm')} false alarms, "
               f"{tally.count('quiet')} quiet as expected.")
    return "\n".join(blocks), summary
