"""The label stage: explain and score a dictionary's features with LLMs, as async workers over a queue
derived from the store. A feature is pending until its explanation (and score run) rows exist, so a
killed batch resumes where it stopped and finished work is never redone; failed work is redone only
with `retry_failed` (the failure stays as history).

The batch holds the database only while it writes (once a second, in one transaction per flush),
so `autointerp sql` from another terminal reads what has been written so far. Any task's failure (a
loader or a writer error) stops the batch with that error, after what finished has been written."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from autointerp import store
from autointerp.config import LabelConfig, LLMConfig
from autointerp.errors import InternalError, LockTimeout, cause
from autointerp.label import explain, probes, processes
from autointerp.label.agent import Agent
from autointerp.label.fewshot import fewshot_for
from autointerp.label.nulls import CONSTANT, SHUFFLED, null_features, reference_gains
from autointerp.label.roles import RoleGate
from autointerp.label.units import (
    ExplainUnit,
    Progress,
    ScoreUnit,
    Settings,
    call_rows,
    explain_live,
    score_live,
    score_records,
    scoring_contexts,
)
from autointerp.llm import client as llm
from autointerp.llm import local
from autointerp.llm.client import BudgetExhausted, LLMClient
from autointerp.records import FeatureContexts, ProgressEvent, ProgressFn

FLUSH_S = 1.0
CHUNK = 128


@dataclass(frozen=True)
class LLMSession:
    """A client and the model names it serves."""

    client: LLMClient
    explainer_model: str
    simulator_model: str
    # The embedded model answers one request at a time: features are worked one at a time, so each
    # finishes (and shows) as soon as it can instead of all at the end.
    one_at_a_time: bool = False
    endpoint: str = ""  # what stopped roles are remembered by (with the model): the endpoints, or the embedded one
    retry_stopped_roles: bool = False
    cfg: LLMConfig | None = None  # what it was opened from, its endpoints resolved: a client process opens its own


@contextmanager
def open_llm(cfg: LLMConfig) -> Iterator[LLMSession]:
    """The endpoints of `cfg` (else $OPENAI_BASE_URL, else the embedded llama.cpp default, stopped on exit)."""
    urls = list(cfg.base_urls) or [u for u in [os.environ.get("OPENAI_BASE_URL")] if u]
    embedded = None
    if not urls:
        embedded = local.EmbeddedLLM.start()
        urls = [embedded.base_url]
    try:
        default_model = local.MODEL_NAME if embedded else "gpt-4o-mini"
        prices = cfg.price_table()
        budget = llm.Budget(cfg.max_cost_usd, cfg.max_tokens)
        client: LLMClient = llm.OpenAICompatibleClient(
            urls, os.environ.get("OPENAI_API_KEY"), timeout_s=cfg.timeout_s, max_attempts=cfg.max_attempts,
            max_wait_s=cfg.max_wait_s, prices=prices, budget=budget)
        if embedded is not None:
            client = embedded.client(client)
        endpoint = local.EMBEDDED_ENDPOINT if embedded else ",".join(sorted(llm.public_url(u) for u in urls))
        yield LLMSession(client, cfg.explainer_model or default_model, cfg.simulator_model or default_model,
                         one_at_a_time=embedded is not None, endpoint=endpoint,
                         retry_stopped_roles=cfg.retry_stopped_roles,
                         cfg=None if embedded else cfg.model_copy(update={"base_urls": tuple(urls)}))
    finally:
        if embedded is not None:
            embedded.stop()


def llm_explainers(cfg: LabelConfig, session: LLMSession | None) -> list[str]:
    """Whose labels the simulator scores: `cfg.explainers` (imported labels, say), else the explainer model's."""
    if cfg.explainers:
        return list(cfg.explainers)
    return [session.explainer_model] if session is not None else []


@dataclass
class Job:
    feature: int
    baseline: bool
    explain_llm: bool
    to_score: list[store.PendingScore]


class LabelBatch:
    """One explain and/or score pass over a selection of features."""

    def __init__(self, db: str | Path, dictionary_id: int, cfg: LabelConfig, session: LLMSession | None,
                 features: list[int], *, explain_stage: bool, score_stage: bool, concurrency: int = 8,
                 score_explainers: list[str] | None = None, on_progress: ProgressFn | None = None,
                 gate: RoleGate | None = None):
        self.db = db
        self.gate = gate or RoleGate()  # shared with the nulls pass: a role stopped stays stopped
        self.dictionary_id = dictionary_id
        self.cfg = cfg
        self.session = session
        self.features = features
        self.explain_stage = explain_stage
        self.score_stage = score_stage
        self.concurrency = concurrency
        self.on_progress = on_progress
        self.progress = Progress()
        self._pending: list[store.Bundle] = []
        # Cancelling the writer task does not stop a flush already running in its thread: the final
        # flush waits for it, else both write the same bundles (a duplicate explanation_id).
        self._flush_lock = threading.Lock()
        self.settings = Settings(cfg)
        self.score_explainers = llm_explainers(cfg, session) if score_explainers is None else score_explainers
        self.agent = (Agent(db, self.settings, session.client, session.explainer_model, session.simulator_model,
                            probes.Subjects(db)) if cfg.strategy != "one-shot" and session is not None else None)

    # ------------------------------------------------------------ the queue

    def jobs(self) -> list[Job]:
        cfg, s = self.cfg, self.session
        retry = cfg.retry_failed
        # Read-write like the flushes: DuckDB refuses two configurations of one file in one process.
        with store.open_store(self.db, wait_s=600) as con:
            have_llm = (store.explained_features(con, self.dictionary_id, s.explainer_model, self.settings.explain_hash, retry)
                        if s is not None else set())
            have_base = store.explained_features(con, self.dictionary_id, explain.BASELINE, explain.BASELINE_HASH,
                                                 retry)
            unscored: dict[int, list[store.PendingScore]] = {}
            if self.score_stage:
                queues = [(explain.BASELINE, self.settings.base_settings_hash, [explain.BASELINE] if cfg.baseline else [])]
                if s is not None:
                    queues.append((s.simulator_model, self.settings.sim_settings_hash, self.score_explainers))
                for simulator, key, explainers in queues:
                    for p in store.unscored_explanations(con, self.dictionary_id, simulator, key, explainers, retry):
                        unscored.setdefault(p.feature, []).append(p)
        jobs = []
        for f in self.features:
            job = Job(f, baseline=self.explain_stage and cfg.baseline and f not in have_base,
                       explain_llm=self.explain_stage and s is not None and f not in have_llm,
                       to_score=unscored.get(f, []))
            if job.baseline or job.explain_llm or job.to_score:
                jobs.append(job)
        return jobs

    # ------------------------------------------------------------ work

    def score_unit(self, fc: FeatureContexts, eid: str, label: str, list_prompts: bool = True) -> ScoreUnit:
        """The unit that scores `label` with this pass's simulator and judges."""
        assert self.session is not None
        fewshot = fewshot_for(self.db, fc.dictionary_id, fc.feature, self.cfg.fewshot) if self.cfg.fewshot else []
        return ScoreUnit(self.settings, fc, eid, label, self.session.simulator_model, fewshot, list_prompts)

    async def _score_llm(self, fc: FeatureContexts, eid: str, label: str) -> store.Bundle:
        assert self.session is not None
        return await score_live(self.score_unit(fc, eid, label), self.session.client, self.progress, self.gate)

    def _score_baseline(self, fc: FeatureContexts, eid: str) -> store.Bundle:
        run = self.settings.new_run(eid, fc, explain.BASELINE, baseline=True)
        contexts = scoring_contexts(fc, self.cfg)
        predicted = explain.simulate_baseline(fc, [c for c, _ in contexts])
        sims, scores = score_records(fc, run, contexts, predicted, self.cfg.n_boot)
        return store.Bundle(runs=[run], simulations=sims, scores=scores)

    async def _do(self, job: Job, fc: FeatureContexts) -> None:
        if job.baseline:
            e = self.settings.with_config(explain.explain_baseline(fc))
            bundle = store.Bundle(explanations=[e])
            if self.score_stage and e.status == "ok":
                bundle.extend(self._score_baseline(fc, e.explanation_id))
            self._pending.append(bundle)
        if job.explain_llm:
            assert self.session is not None
            e, calls = await (self.agent.explain(fc) if self.agent is not None else
                              explain_live(ExplainUnit(self.settings, fc, self.session.explainer_model),
                                           self.session.client))
            bundle = store.Bundle(explanations=[e],
                                  calls=call_rows(calls, fc.dictionary_id, fc.feature, e.explanation_id))
            if e.status == "ok":
                self.progress.explained += 1
                if self.score_stage:
                    try:
                        bundle.extend(await self._score_llm(fc, e.explanation_id, e.label or ""))
                    except BudgetExhausted:
                        # The explanation is paid for: keep it; its score stays pending for the next run.
                        self._pending.append(bundle)
                        raise
            else:
                self.progress.failed[f"explanation: {e.code}"] += 1
            self._pending.append(bundle)
        for p in job.to_score:
            if p.explainer == explain.BASELINE:
                self._pending.append(self._score_baseline(fc, p.explanation_id))
            elif self.session is not None:
                self._pending.append(await self._score_llm(fc, p.explanation_id, p.label))
        self.progress.features_done += 1

    # ------------------------------------------------------------ driving

    def _flush(self) -> None:
        # Bundles leave the pending list only once written: a failed write loses nothing.
        with self._flush_lock:
            n = len(self._pending)
            stops = self.gate.unsaved()
            if n == 0 and not stops:
                return
            with store.open_store(self.db, wait_s=600) as con, store.transaction(con):
                store.insert_bundles(con, self._pending[:n])
                store.add_role_stops(con, stops)
            del self._pending[:n]
            self.gate.mark_saved(stops)

    async def run(self) -> Progress:
        jobs = await asyncio.to_thread(self.jobs)
        self.progress.features_total = len(jobs)
        if not jobs:
            return self.progress
        queue: asyncio.Queue[tuple[Job, FeatureContexts] | None] = asyncio.Queue(maxsize=2 * CHUNK)
        stop = asyncio.Event()

        async def loader() -> None:
            for i in range(0, len(jobs), CHUNK):
                chunk = jobs[i : i + CHUNK]
                records = await asyncio.to_thread(self._load, [j.feature for j in chunk])
                for j in chunk:
                    if stop.is_set():
                        return
                    await queue.put((j, records[j.feature]))
            for _ in range(self.concurrency):
                await queue.put(None)

        async def worker() -> None:
            while not stop.is_set():
                item = await queue.get()
                if item is None:
                    return
                try:
                    await self._do(*item)
                except BudgetExhausted as exc:
                    self.progress.stopped = str(exc)
                    stop.set()
                    return

        async def writer() -> None:
            while True:
                await asyncio.sleep(FLUSH_S)
                await asyncio.to_thread(self._flush)
                self._report()

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        helpers = [asyncio.create_task(loader()), asyncio.create_task(writer())]
        error: BaseException | None = None
        try:
            waiting = {*workers, *helpers}
            while not all(w.done() for w in workers) and error is None:
                done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                error = next((t.exception() for t in done if not t.cancelled() and t.exception()), None)
        finally:
            stop.set()
            for t in (*workers, *helpers):
                t.cancel()
            await asyncio.gather(*workers, *helpers, return_exceptions=True)
            # What finished is written even when the batch stops on a budget, an error or Ctrl-C.
            self._final_flush()
        if error is not None:
            raise error
        return self.progress

    def _final_flush(self) -> None:
        try:
            self._flush()
        except LockTimeout:
            raise
        except Exception as exc:
            raise InternalError(f"could not write {len(self._pending)} finished feature(s) to {self.db}: "
                                f"{cause(exc)}") from exc
        self._report()

    def _load(self, features: list[int]) -> dict[int, FeatureContexts]:
        with store.open_store(self.db, wait_s=600) as con:
            try:
                return store.read_feature_contexts(con, self.dictionary_id, features)
            except LockTimeout:
                raise
            except Exception as exc:
                raise InternalError(f"could not read the contexts of features {features[0]}..{features[-1]} "
                                    f"of dictionary {self.dictionary_id} from {self.db}: {cause(exc)}") from exc

    def _report(self) -> None:
        budget = getattr(self.session.client, "budget", None) if self.session else None
        if budget is not None:
            self.progress.tokens, self.progress.cost_usd = budget.tokens, budget.spent_usd
        if self.on_progress is not None:
            p = self.progress
            self.on_progress(label_event(p.features_done, p.features_total, p.tokens, p.cost_usd,
                                         sum(p.failed.values())))


def label_event(done: int, total: int, tokens: int, cost_usd: float, failed: int) -> ProgressEvent:
    """The label stage's progress event, from one batch's figures or the sums of its client processes'."""
    return ProgressEvent(stage="label", done=done, total=total, unit="feat",
                         detail=f"tok {tokens:,} ${cost_usd:.4f} failed {failed}")


# ---------------------------------------------------------------- null labels


# ---------------------------------------------------------------- the entry point


def _as_stage(stage: str, on_progress: ProgressFn | None) -> ProgressFn | None:
    """`on_progress` with the events renamed to `stage` (the null labels' pass has its own bar)."""
    if on_progress is None:
        return None
    return lambda e: on_progress(dataclasses.replace(e, stage=stage))


def remembered_gate(db: str | Path, session: LLMSession | None) -> RoleGate:
    """The gate of a label run: with the roles an earlier run on `db` stopped for this endpoint and model."""
    if session is None:
        return RoleGate()
    with store.open_store(db, wait_s=600) as con:
        stops = store.role_stops(con, session.endpoint, session.simulator_model)
    return RoleGate.remembering(session.endpoint, stops, session.retry_stopped_roles)


def label_stage(db: str | Path, dictionary_id: int, features: list[int], cfg: LabelConfig,
                session: LLMSession | None, *, explain_stage: bool = True, score_stage: bool = True,
                concurrency: int = 8, on_progress: ProgressFn | None = None) -> Progress:
    """Explain and/or score `features`; then, when scoring with an LLM, make and score the null labels
    (`cfg.null_samples` features). Resumable: re-running does only what is missing."""
    gate = remembered_gate(db, session)
    if session is not None and session.one_at_a_time:
        concurrency = 1
    n = session.cfg.processes if session is not None and session.cfg is not None else 1
    first: Progress | None = None
    if n > 1 and len(features) > 1:
        assert session is not None and session.cfg is not None
        spec = processes.PassSpec(str(db), dictionary_id, cfg, explain_stage, score_stage, concurrency)
        first = processes.run_pass(spec, features, session.cfg, n, gate, on_progress, label_event)
        batch = None
    else:
        batch = LabelBatch(db, dictionary_id, cfg, session, features, explain_stage=explain_stage,
                           score_stage=score_stage, concurrency=concurrency, on_progress=on_progress, gate=gate)

    async def both() -> Progress:
        # One event loop for the labels and their nulls: the client's pooled connections belong to it.
        progress = await batch.run() if batch is not None else first
        assert progress is not None
        if score_stage and session is not None and progress.stopped is None:
            explainers = llm_explainers(cfg, session)
            extra = null_features(db, dictionary_id, explainers, features, cfg.null_samples, cfg.reference)
            if extra:
                nulls = LabelBatch(db, dictionary_id, cfg.model_copy(update={"baseline": False}), session, extra,
                                   explain_stage=False, score_stage=True, concurrency=concurrency,
                                   score_explainers=[*(SHUFFLED + e for e in explainers), CONSTANT],
                                   on_progress=_as_stage("nulls", on_progress), gate=gate)
                progress.nulls = await nulls.run()
                progress.stopped = progress.nulls.stopped
        return progress

    progress = asyncio.run(both())
    notes = getattr(session.client, "endpoint_notes", None) if session is not None else None
    progress.notes += [n for n in gate.lines() + (notes() if notes is not None else []) if n not in progress.notes]
    if score_stage and session is not None:
        reference_gains(db, dictionary_id, cfg.n_boot)
    return progress
