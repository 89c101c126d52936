"""Worked examples for the echo simulator (`--sim-fewshot N`), as OpenAI's simulator shows them: another
feature's top context (explain split), cut to the explainer's compact window around its peak, with its
real activations on the 0-9 scale and that feature's token-lookup label. The donors are a fixed seeded
sample of the dictionary's active features, so a feature's examples do not depend on which features are
labelled together, and a feature is never its own donor: its examples cannot show its activations."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from autointerp import store
from autointerp.label import explain
from autointerp.label.simulate import FewShot
from autointerp.records import FeatureContexts


def _order(feature: int) -> str:
    return hashlib.sha256(f"fewshot:{feature}".encode()).hexdigest()


def _example(fc: FeatureContexts) -> FewShot | None:
    top = sorted(fc.select("explain", "top"), key=lambda c: c.rank)
    if not top or top[0].max_act <= 0:
        return None
    c = top[0]
    shown = explain.window(c.acts)  # the explainer's compact window around the peak: a third of the tokens at 64
    values = explain.scale([c.acts[i] for i in shown], c.max_act)
    return FewShot([c.tokens[i] for i in shown], values, explain.explain_baseline(fc).label)


@functools.lru_cache(maxsize=32)
def _pool(db: str, dictionary_id: int, size: int) -> tuple[tuple[int, FewShot], ...]:
    """The first `size` donors (seeded order over features that fire) with their examples."""
    with store.open_store(db, wait_s=600) as con:
        candidates = sorted(store.select_features(con, dictionary_id), key=_order)[: size * 4]
        contexts = store.read_feature_contexts(con, dictionary_id, candidates)
    out = []
    for f in candidates:  # a feature that never fired has no example
        ex = _example(contexts[f]) if f in contexts else None
        if ex is not None:
            out.append((f, ex))
    return tuple(out[:size])


def fewshot_for(db: str | Path, dictionary_id: int, feature: int, n: int) -> list[FewShot]:
    """`n` worked examples for `feature`, none of them its own (fewer if the dictionary has too few
    active features)."""
    if n <= 0:
        return []
    return [ex for f, ex in _pool(str(db), dictionary_id, n + 1) if f != feature][:n]
