"""The planted stage: a dictionary of kind 'planted' over a real corpus, each feature a rule with a known
description (collect/planted.py), collected by the same collector as a model's features, with each
feature's truth in `planted_truth`. Every check runs before the database is touched: bad rules, or a
user's rule that never fires on the corpus, leave it as it was."""

from __future__ import annotations

from pathlib import Path

from autointerp import store
from autointerp.collect import corpus, planted
from autointerp.collect.collector import run_collection
from autointerp.collect.stage import CollectOutcome, id_column, token_progress, token_strings
from autointerp.config import CollectConfig, settings_hash
from autointerp.errors import BadInput
from autointerp.records import ProgressFn

HOOK = "planted"


def planted_stage(db: str | Path, cfg: CollectConfig, rules_file: str | Path | None = None,
                  builtin: bool = True, on_progress: ProgressFn | None = None) -> CollectOutcome:
    """Build (or find, when the same rules and collection exist) a planted dictionary in `db`. `cfg.model`
    names the tokenizer; the model itself is never run."""
    from autointerp import models

    user = planted.read_rules(rules_file) if rules_file is not None else []
    rules = planted.rule_set(user, builtin)
    if not rules:
        raise BadInput("no rules: give --rules FILE or keep the built-in rules")
    sources = ["builtin"] * (len(rules) - len(user)) + [str(Path(rules_file).resolve())] * len(user) \
        if rules_file is not None else ["builtin"] * len(rules)
    config = {**cfg.identity(), "hook": HOOK, "planted": [planted.spec_hash(r) for r in rules]}
    config_hash = settings_hash(config)
    with store.open_store(db) as con:
        done = store.find_dictionary(con, config_hash)
    if done is not None and done.status == "complete":
        return CollectOutcome(done.dictionary_id, done.n_tokens or 0, done.n_contexts or 0, done.n_features, True)
    corpus.corpus_files(cfg.dataset)
    tokenizer = models.load_tokenizer(cfg.model)
    strings = token_strings(tokenizer)
    fn = planted.PlantedFeatures(rules, strings)
    ctxs = corpus.contexts(corpus.pieces(cfg.dataset, cfg.text_field), tokenizer, cfg.ctx_len,
                           cfg.n_tokens // cfg.ctx_len)
    result = run_collection(cfg, fn, fn.n_features, ctxs, strings, None,
                            progress=token_progress(on_progress, "planted", cfg.n_tokens))
    if result.n_contexts == 0:
        raise BadInput(f"the corpus '{cfg.dataset}' has fewer than ctx_len={cfg.ctx_len} tokens")
    max_act = dict(zip(result.features.column("feature").to_pylist(), result.features.column("max_act").to_pylist(),
                       strict=True))
    for i, (rule, source) in enumerate(zip(rules, sources, strict=True)):
        if source != "builtin" and not max_act.get(i, 0.0) > 0:
            raise BadInput(f"rule '{rule['name']}': field 'params': the rule never fires on the corpus "
                           f"'{cfg.dataset}' ({result.n_tokens:,} tokens)")
    truth = [store.TruthRow(0, i, r["name"], r["description"], r["kind"], r, planted.spec_hash(r), r["noise"], s)
             for i, (r, s) in enumerate(zip(rules, sources, strict=True))]
    with store.open_store(db) as con:
        did = store.begin_dictionary(
            con, model=cfg.model, hook=HOOK, kind="planted", sae=None, random_init=False, seed=cfg.seed,
            dataset=cfg.dataset, ctx_len=cfg.ctx_len, n_features=len(rules), config_hash=config_hash,
            config={**config, "prepend_bos": False, "feature_offset": 0})
        with store.transaction(con):
            store.add_planted_truth(con, [t.__class__(**{**t.__dict__, "dictionary_id": did}) for t in truth])
        store.complete_dictionary(
            con, did, n_tokens=result.n_tokens, n_contexts=result.n_contexts,
            sequences=result.sequences.append_column("dictionary_id", id_column(result.sequences, did)),
            features=result.features.append_column("dictionary_id", id_column(result.features, did)),
            examples=result.examples.append_column("dictionary_id", id_column(result.examples, did)))
    return CollectOutcome(did, result.n_tokens, result.n_contexts, len(rules), False)
