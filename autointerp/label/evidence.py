"""What the best-of-k and agent explainers are shown: varied subsets of the explain-split evidence (one
candidate per subset), and the prompts of the probe-and-revise conversation. Only explain-split contexts
and probe results reach these prompts; holdout contexts never do."""

from __future__ import annotations

import json
import random
from typing import Any

from autointerp.config import LabelConfig
from autointerp.label import explain, negatives
from autointerp.llm import prompts
from autointerp.records import Context, FeatureContexts
from autointerp.store import HardNegative

AGENT_TEMPLATES = ("agent.probe", "agent.probe_reask", "agent.revise", "agent.outputs", "agent.negatives")
N_OUTPUT_TOKENS = 10  # promoted and suppressed tokens each, per feature
# Candidate i's temperature: 0 for the first (the one-shot evidence, asked as one-shot asks it), then rising
# so later candidates differ in wording as well as in evidence; capped at 1. Probes and revisions use 0.
TEMPERATURES = (0.0, 0.5, 0.7, 0.9, 1.0)


def strategy_hash(cfg: LabelConfig) -> str:
    """The prompt hash of a best-of-k or agent explanation: the templates, the excerpt format and the
    strategy's settings (another k is another explanation)."""
    version = (explain.FORMAT_VERSIONS[explain.EXCERPT_FORMAT] + json.dumps(cfg.strategy_settings(), sort_keys=True)
               + negatives.VERSION + json.dumps(negatives.SETTINGS, sort_keys=True)
               + "temperatures" + json.dumps([candidate_temperature(i) for i in range(cfg.k)]))
    return prompts.templates_hash(*explain.EXPLAIN_TEMPLATES, *AGENT_TEMPLATES, version=version)


def candidate_temperature(i: int) -> float:
    """The temperature candidate `i` is asked at (TEMPERATURES, the last repeated)."""
    return TEMPERATURES[min(i, len(TEMPERATURES) - 1)]


def candidate_contexts(fc: FeatureContexts, cfg: LabelConfig, i: int) -> list[Context]:
    """The evidence of candidate `i`: all the one-shot evidence for the first; for the others a seeded half
    of it (at least one context), in its order, so candidates see different examples."""
    contexts = explain.explain_contexts(fc, cfg.n_explain_top, cfg.n_explain_quantile)
    if i == 0 or len(contexts) < 2:
        return contexts
    keep = set(random.Random(f"{fc.dictionary_id}:{fc.feature}:{i}").sample(range(len(contexts)),
                                                                              max(1, len(contexts) // 2)))
    return [c for j, c in enumerate(contexts) if j in keep]


def outputs_block(outputs: dict[str, list[tuple[str, float]]] | None) -> str:
    """The output-side evidence as the explainer sees it ('' when the dictionary has none)."""
    if not outputs or not outputs.get("promotes"):
        return ""

    def listed(d: str) -> str:
        return ", ".join(f'"{prompts.escape_data(t)}"' for t, _ in outputs.get(d, []))

    return prompts.render("agent.outputs", promotes=listed("promotes"), suppresses=listed("suppresses"))


def explain_messages(fc: FeatureContexts, contexts: list[Context],
                     outputs: dict[str, list[tuple[str, float]]] | None = None,
                     hard_negatives: list[HardNegative] | None = None) -> list[dict[str, str]]:
    """The candidate request: the excerpts, with the output-side evidence and the hard negatives where the
    feature has them."""
    user = prompts.render("explain.user", excerpts=explain.format_excerpts(contexts, fc.max_act))
    blocks = [b for b in (outputs_block(outputs), negatives.negatives_block(hard_negatives or [])) if b]
    return [{"role": "system", "content": prompts.render("explain.system")},
            {"role": "user", "content": "\n\n".join([*blocks, user])}]


def output_rows(loaded: Any) -> list[tuple[int, str, int, int, str, float]]:
    """Every feature's promoted and suppressed tokens (feature, direction, rank, token_id, token, value), for
    the store; none for planted dictionaries or hooks with no linear path to the unembedding."""
    from autointerp.models.output import output_tokens

    d = loaded.dictionary
    if d.kind == "planted":
        return []
    offset = int(d.config.get("feature_offset", 0))
    found = output_tokens(loaded.model, d.hook, loaded.sae, list(range(offset, offset + d.n_features)),
                          N_OUTPUT_TOKENS)
    return [(f, direction, rank, t, loaded.tokenizer.decode([t]), v)
            for f, (up, down) in found.items()
            for direction, values in (("promotes", up), ("suppresses", down))
            for rank, (t, v) in enumerate(values)]


def probe_messages(base: list[dict[str, str]], label: str, n: int) -> list[dict[str, str]]:
    """The request for `n` probe texts under `label`, continuing the explainer's conversation."""
    return [*base, {"role": "assistant", "content": label},
            {"role": "user", "content": prompts.render("agent.probe", label=prompts.escape_data(label), n=n,
                                                       half=max(1, n // 2))}]


def revise_messages(probe_request: list[dict[str, str]], probe_reply: str, results: str,
                    summary: str) -> list[dict[str, str]]:
    """The request for a revised label, given the probe texts and their real activations."""
    return [*probe_request, {"role": "assistant", "content": probe_reply},
            {"role": "user", "content": prompts.render("agent.revise", results=results, summary=summary)}]
