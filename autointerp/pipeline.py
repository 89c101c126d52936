"""Stages over the store: each reads its inputs, does its work outside any transaction, then writes
its rows in one transaction. The store connection is held only while writing, so readers
(`autointerp sql`) can open the database between writes."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autointerp import corpus, store
from autointerp.collect import run_collection
from autointerp.config import CollectConfig
from autointerp.errors import AutointerpError

DEFAULT_HOOK = "blocks.6.mlp.hook_post"


@dataclass(frozen=True)
class CollectOutcome:
    dictionary_id: int
    n_tokens: int
    n_contexts: int
    n_features: int
    already_complete: bool
    resumed_tokens: int = 0


def token_strings(tokenizer: Any) -> list[str]:
    """Each vocabulary id decoded on its own, as `show` and the contexts view present it."""
    size = max(len(tokenizer), int(getattr(tokenizer, "vocab_size", 0) or 0))
    return list(tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False))


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    # `kill` (SIGTERM) then unwinds like Ctrl-C, leaving the dictionary marked incomplete.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def collect_stage(
    db: str | Path,
    cfg: CollectConfig,
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
    model: Any = None,
    checkpoint_every_s: float = 300.0,
) -> CollectOutcome:
    """Collect one dictionary into `db`. Re-running the same config finishes an incomplete
    dictionary and does nothing to a complete one. Bad input leaves the database as it was."""
    from autointerp import models

    config_hash = cfg.config_hash()
    with store.open_store(db) as con:
        done = store.find_dictionary(con, config_hash)
    if done is not None and done.status == "complete":
        return CollectOutcome(done.dictionary_id, done.n_tokens or 0, done.n_contexts or 0, done.n_features, True)

    # Everything that can be checked before the long run is checked before the database is touched.
    corpus.corpus_files(cfg.dataset)
    sae = models.load_sae(cfg.sae) if cfg.sae else None
    hook = cfg.hook
    if sae is not None:
        sae_hook = models.sae_hook_name(sae)
        if hook is None:
            hook = sae_hook
        elif hook != sae_hook:
            raise AutointerpError(f"the SAE was trained on hook '{sae_hook}', not '{hook}': pass --hook {sae_hook}")
    if hook is None:
        hook = DEFAULT_HOOK
    if model is None:
        model = models.load_model(
            cfg.model, random_init=cfg.random_init, seed=cfg.seed, init_scheme=cfg.init_scheme,
            from_pretrained_kwargs=models.sae_model_kwargs(sae) if sae is not None else None,
        )
    start, stop = cfg.features if cfg.features else (0, None)
    reader = models.FeatureReader(model, hook, sae=sae, start=start, stop=stop)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise AutointerpError(f"model {cfg.model} has no tokenizer")
    bos = tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
    strings = token_strings(tokenizer)

    with store.open_store(db) as con:
        dictionary_id = store.begin_dictionary(
            con, model=cfg.model, hook=hook, kind=reader.kind, sae=cfg.sae, random_init=cfg.random_init,
            seed=cfg.seed, dataset=cfg.dataset, ctx_len=cfg.ctx_len, n_features=reader.n_features,
            config_hash=config_hash,
            config={**cfg.model_dump(mode="json"), "hook": hook, "prepend_bos": bos is not None,
                    "feature_offset": start},
        )
    progress = progress_factory(cfg.n_tokens) if progress_factory else None
    # Beside the database: a killed run resumes from here instead of the first token.
    checkpoint = Path(f"{db}.collect-{config_hash}.ckpt")
    try:
        with sigterm_as_interrupt():
            ctxs = corpus.contexts(corpus.pieces(cfg.dataset, cfg.text_field), tokenizer, cfg.ctx_len,
                                   cfg.n_tokens // cfg.ctx_len)
            result = run_collection(cfg, reader, reader.n_features, ctxs, strings, bos, start, progress,
                                    checkpoint=checkpoint, checkpoint_every_s=checkpoint_every_s)
            if result.n_contexts == 0:
                raise AutointerpError(f"the corpus '{cfg.dataset}' has fewer than ctx_len={cfg.ctx_len} tokens")
            with store.open_store(db) as con:
                store.complete_dictionary(
                    con, dictionary_id, n_tokens=result.n_tokens, n_contexts=result.n_contexts,
                    sequences=result.sequences.append_column("dictionary_id", _ids(result.sequences, dictionary_id)),
                    features=result.features.append_column("dictionary_id", _ids(result.features, dictionary_id)),
                    examples=result.examples.append_column("dictionary_id", _ids(result.examples, dictionary_id)),
                )
    except AutointerpError:
        # Bad input found mid-stream: undo the registration so the database is as it was.
        with store.open_store(db) as con:
            store.delete_dictionary(con, dictionary_id)
        checkpoint.unlink(missing_ok=True)
        raise
    checkpoint.unlink(missing_ok=True)
    return CollectOutcome(dictionary_id, result.n_tokens, result.n_contexts, reader.n_features, False,
                          result.resumed_contexts * cfg.ctx_len)


def _ids(table: Any, dictionary_id: int) -> Any:
    import pyarrow as pa

    return pa.array([dictionary_id] * table.num_rows, pa.int32())


# ---------------------------------------------------------------- behaviour


@dataclass
class BehaviourOutcome:
    scored: int = 0
    no_effect: int = 0
    features: int = 0


def behaviour_stage(db: str | Path, dictionary_id: int, features: list[int] | None = None, ablate: str = "mean",
                    n_boot: int = 1000, model: Any = None,
                    progress: Callable[[int, int], None] | None = None) -> BehaviourOutcome:
    """Behaviour scores for every scored explanation of the dictionary that lacks one (resumable: one
    transaction per feature). The model is the dictionary's own, random-init copy included."""
    import numpy as np
    import torch

    from autointerp import behaviour, models, scoring

    with store.open_store(db) as con:
        d = store.get_dictionary(con, dictionary_id)
        pending = con.execute("""
            SELECT DISTINCT s.feature, s.explanation_id, s.simulator FROM simulations s
            JOIN explanations e USING (explanation_id)
            WHERE s.dictionary_id = ? AND e.status = 'ok' AND NOT EXISTS (
                SELECT 1 FROM scores x WHERE x.explanation_id = s.explanation_id AND x.simulator = s.simulator
                AND x.method = 'behaviour')
            ORDER BY s.feature, s.explanation_id""", [dictionary_id]).fetchall()
    if features is not None:
        wanted = set(features)
        pending = [p for p in pending if p[0] in wanted]
    outcome = BehaviourOutcome()
    if not pending:
        return outcome
    if ablate not in ("mean", "zero"):
        raise AutointerpError(f"--ablate {ablate}: use mean or zero")
    sae = models.load_sae(d.sae) if d.sae else None
    if model is None:
        model = models.load_model(d.model, random_init=d.random_init, seed=d.seed,
                                  init_scheme=d.config.get("init_scheme", "init"),
                                  from_pretrained_kwargs=models.sae_model_kwargs(sae) if sae is not None else None)
    patcher = behaviour.Patcher(model, d.hook, sae)
    if not d.config.get("prepend_bos", True):
        # Replacement starts after the BOS position; without one, nothing is kept clean in front.
        raise AutointerpError("behaviour scores need the BOS position; this dictionary was collected without it")
    bos = model.tokenizer.bos_token_id
    by_feature: dict[int, list[tuple[str, str]]] = {}
    for feature, eid, simulator in pending:
        by_feature.setdefault(feature, []).append((eid, simulator))
    outcome.features = len(by_feature)
    for i, (feature, items) in enumerate(by_feature.items()):
        with store.open_store(db, wait_s=600) as con:
            row = con.execute("SELECT mean_act FROM features WHERE dictionary_id = ? AND feature = ?",
                              [dictionary_id, feature]).fetchone()
            assert row is not None, f"feature {feature} has simulations but no statistics"
            mean_act = row[0]
            sims = {}
            for eid, simulator in items:
                sims[(eid, simulator)] = con.execute("""
                    SELECT s.purpose, s.seq, s.predicted, e.acts, q.token_ids FROM simulations s
                    JOIN examples e ON e.dictionary_id = s.dictionary_id AND e.feature = s.feature AND e.seq = s.seq
                         AND e.split = s.split AND e.kind = s.kind AND e.rank = s.rank
                    JOIN sequences q ON q.dictionary_id = s.dictionary_id AND q.seq = s.seq
                    WHERE s.explanation_id = ? AND s.simulator = ? ORDER BY s.purpose, s.kind, s.rank""",
                    [eid, simulator]).fetchall()
        first = next(iter(sims.values()))
        scoring_rows = [r for r in first if r[0] == "scoring"]
        if not scoring_rows:
            continue
        ids = torch.tensor([r[4] for r in scoring_rows], dtype=torch.long)
        tokens = torch.cat([torch.full((len(ids), 1), bos), ids], 1)
        replacements = []
        for rows in sims.values():
            cal = [(np.asarray(r[3]), np.asarray(r[2])) for r in rows if r[0] == "calibration"]
            a, b = scoring.fit_calibration(cal) if cal else (1.0, 0.0)
            pred = [np.asarray(r[2]) * a + b for r in rows if r[0] == "scoring"]
            replacements.append(torch.tensor(np.stack(pred), dtype=torch.float32))
        results = patcher.losses(tokens, feature, float(mean_act) if ablate == "mean" else 0.0, replacements)
        rows_out = []
        for (eid, simulator), losses in zip(sims, results, strict=True):
            for sc, note in behaviour.behaviour_scores(losses, n_boot):
                rows_out.append(sc.row(explanation_id=eid, dictionary_id=dictionary_id, feature=feature,
                                       simulator=simulator, note=note))
                if sc.method == "behaviour":
                    outcome.scored += note is None
                    outcome.no_effect += note is not None
        with store.open_store(db, wait_s=600) as con, store.transaction(con):
            store.insert_rows(con, "scores", rows_out)
        if progress is not None:
            progress(i + 1, len(by_feature))
    return outcome
