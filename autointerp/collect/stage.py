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

from autointerp import store
from autointerp.collect import corpus
from autointerp.collect.collector import run_collection
from autointerp.collect.memory import collect_memory
from autointerp.collect.result import CollectResult
from autointerp.config import CollectConfig
from autointerp.errors import AutointerpError, BadInput, LockTimeout, is_bad_input
from autointerp.records import ProgressEvent, ProgressFn

DEFAULT_HOOK = "blocks.6.mlp.hook_post"
# A finished collection may hold hours of work: wait long for a reader elsewhere to let go of the lock.
FINAL_WRITE_WAIT_S = 6 * 3600.0


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


def token_progress(on_progress: ProgressFn | None, stage: str, total: int) -> Callable[[int], None] | None:
    """The collector's progress callback (tokens added) as ProgressEvents of `stage` (None: no reporting)."""
    if on_progress is None:
        return None
    tokens_done = 0

    def progress(n: int) -> None:
        nonlocal tokens_done
        tokens_done += n
        on_progress(ProgressEvent(stage, tokens_done, total, "tok"))

    return progress


@dataclass
class Prepared:
    """What a collection needs before its first context: the feature reader (model, hook, SAE) and tokenizer."""

    reader: Any
    hook: str
    tokenizer: Any
    bos: int | None
    strings: list[str]
    start: int
    device: Any

    def dictionary_config(self, cfg: CollectConfig) -> dict[str, Any]:
        return {**cfg.model_dump(mode="json"), "hook": self.hook, "prepend_bos": self.bos is not None,
                "feature_offset": self.start}


def prepare(cfg: CollectConfig, model: Any = None) -> Prepared:
    """Check the corpus, resolve the device, load the SAE and the model (on the device, in the dtype) and the
    hook. Everything that can be checked before the long run is checked here."""
    from autointerp import models

    corpus.corpus_files(cfg.dataset)
    device = models.resolve_device(cfg.device)
    sae = models.load_sae(cfg.sae, device=device, dtype=cfg.dtype) if cfg.sae else None
    hook = cfg.hook
    if sae is not None:
        sae_hook = models.sae_hook_name(sae)
        if hook is None:
            hook = sae_hook
        elif hook != sae_hook:
            raise BadInput(f"the SAE was trained on hook '{sae_hook}', not '{hook}': pass --hook {sae_hook}")
    if hook is None:
        hook = DEFAULT_HOOK
    if model is None:
        model = models.load_model(
            cfg.model, random_init=cfg.random_init, seed=cfg.seed, init_scheme=cfg.init_scheme,
            from_pretrained_kwargs=models.sae_model_kwargs(sae) if sae is not None else None,
            device=device, dtype=cfg.dtype,
        )
    start, stop = cfg.features if cfg.features else (0, None)
    # Sparse TopK latents on CPU and CUDA, where the sparse path is tested (CUDA by construction); MPS stays dense.
    reader = models.FeatureReader(model, hook, sae=sae, start=start, stop=stop, sparse=device.type in ("cpu", "cuda"))
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise BadInput(f"model {cfg.model} has no tokenizer")
    bos = tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
    _check_memory(cfg, reader.n_features)
    return Prepared(reader, hook, tokenizer, bos, token_strings(tokenizer), start, device)


def _check_memory(cfg: CollectConfig, n_features: int) -> None:
    """Refuse settings whose buffers cannot fit in this machine's memory, before the dictionary is
    registered (an allocation failing mid-run would leave it incomplete)."""
    import psutil

    estimate = collect_memory(cfg, n_features)
    need = max(estimate.collect, estimate.result)
    have = psutil.virtual_memory().total
    if need > have:
        raise BadInput(f"these settings need about {need / 2**30:,.1f} GiB for {n_features:,} features "
                       f"(--top-k {cfg.top_k}, --random {cfg.n_random}, --quantiles {cfg.n_quantiles} x --per-quantile "
                       f"{cfg.per_quantile}, --ctx-len {cfg.ctx_len}) and this machine has {have / 2**30:,.1f} GiB; "
                       "lower them or collect fewer --features")


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


def _write_result(db: str | Path, dictionary_id: int, result: CollectResult, checkpoint: Path, wait_s: float
                  ) -> None:
    """Write a finished collection and mark its dictionary complete, waiting up to `wait_s` for the lock."""
    try:
        with store.open_store(db, wait_s=wait_s) as con:
            store.complete_dictionary(
                con, dictionary_id, n_tokens=result.n_tokens, n_contexts=result.n_contexts,
                sequences=result.sequences.append_column("dictionary_id", id_column(result.sequences, dictionary_id)),
                features=result.features.append_column("dictionary_id", id_column(result.features, dictionary_id)),
                examples=result.examples.append_column("dictionary_id", id_column(result.examples, dictionary_id)),
            )
    except LockTimeout as exc:
        raise LockTimeout(f"the collection finished but could not be written: {exc}. Nothing is lost: run "
                          f"the same command again to write it from the checkpoint {checkpoint.name} "
                          "without running the model", exc.holder) from exc


def collect_stage(
    db: str | Path,
    cfg: CollectConfig,
    on_progress: ProgressFn | None = None,
    model: Any = None,
    checkpoint_every_s: float = 300.0,
    final_write_wait_s: float = FINAL_WRITE_WAIT_S,
) -> CollectOutcome:
    """Collect one dictionary into `db`. Re-running the same config finishes an incomplete
    dictionary and does nothing to a complete one. Bad input leaves the database as it was; a
    finished collection is never deleted: its write waits up to `final_write_wait_s` for the lock."""
    config_hash = cfg.config_hash()
    with store.open_store(db) as con:
        done = store.find_dictionary(con, config_hash)
    if done is not None and done.status == "complete":
        return CollectOutcome(done.dictionary_id, done.n_tokens or 0, done.n_contexts or 0, done.n_features, True)

    # Everything that can be checked before the long run is checked before the database is touched.
    p = prepare(cfg, model)
    reader, hook, tokenizer, bos, strings, start = p.reader, p.hook, p.tokenizer, p.bos, p.strings, p.start

    with store.open_store(db) as con:
        dictionary_id = store.begin_dictionary(
            con, model=cfg.model, hook=hook, kind=reader.kind, sae=cfg.sae, random_init=cfg.random_init,
            seed=cfg.seed, dataset=cfg.dataset, ctx_len=cfg.ctx_len, n_features=reader.n_features,
            config_hash=config_hash, config=p.dictionary_config(cfg),
        )
    progress = token_progress(on_progress, "collect", cfg.n_tokens)

    # Beside the database: a killed run resumes from here instead of the first token.
    checkpoint = Path(f"{db}.collect-{config_hash}.ckpt")
    with sigterm_as_interrupt():
        try:
            ctxs = corpus.contexts(corpus.pieces(cfg.dataset, cfg.text_field), tokenizer, cfg.ctx_len,
                                   cfg.n_tokens // cfg.ctx_len)
            result = run_collection(cfg, reader, reader.n_features, ctxs, strings, bos, start, progress,
                                    checkpoint=checkpoint, checkpoint_every_s=checkpoint_every_s, device=p.device)
            if result.n_contexts == 0:
                raise BadInput(f"the corpus '{cfg.dataset}' has fewer than ctx_len={cfg.ctx_len} tokens")
        except AutointerpError as exc:
            if not is_bad_input(exc):
                raise
            # Bad input found in the corpus stream: undo the registration so the database is as it was.
            with store.open_store(db) as con:
                store.delete_dictionary(con, dictionary_id)
            checkpoint.unlink(missing_ok=True)
            raise
        # The collection is finished (and checkpointed): from here nothing deletes it. The write waits
        # a long time for a lock held elsewhere; if even that runs out, the dictionary stays incomplete
        # and the checkpoint stays, so the same command writes it without running the model again.
        _write_result(db, dictionary_id, result, checkpoint, final_write_wait_s)
    checkpoint.unlink(missing_ok=True)
    if on_progress is not None:  # the stage's end, also when the corpus ran out before n_tokens
        on_progress(ProgressEvent("collect", result.n_tokens, result.n_tokens, "tok"))
    return CollectOutcome(dictionary_id, result.n_tokens, result.n_contexts, reader.n_features, False,
                          result.resumed_contexts * cfg.ctx_len)


def id_column(table: Any, dictionary_id: int) -> Any:
    import pyarrow as pa

    return pa.array([dictionary_id] * table.num_rows, pa.int32())
