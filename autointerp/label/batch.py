"""Batch mode of the label stage: the same work as live calls, sent as JSONL batch files, either to a
provider's Batch API (`--batch-api`: upload, create, poll, download) or written for an offline runner
(`batch export`, then `batch import` of its results).

Every piece of work is a *unit*: a feature to explain, or an explanation to score. A *group* is units
whose requests are ingested together (one provider batch per endpoint: echo simulation is
/v1/completions, judges /v1/chat/completions). The group's `batches` rows are written before anything
is sent and carry the units and settings, so a killed run, or an import, rebuilds the exact requests. A
score unit's requests are its `units.ScoreUnit` asks, the ones the live path sends, and its results are
read back (label.batch_results) through the same `ScoreUnit.finish`; this module knows no simulator or
judge. A group's results are written in one transaction with its batches marked ingested: nothing
finished is asked again, nothing half-written.

custom_id: `GROUP:dDICT:fFEATURE:eEXPLANATION:PART:aATTEMPT` (PART: explain, s<i> for the i-th simulated
context, detection, fuzzing; EXPLANATION '-' when explaining)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from autointerp import store
from autointerp.config import LabelConfig, LLMConfig
from autointerp.errors import BadInput
from autointerp.label import explain
from autointerp.label.batch_results import BatchResults
from autointerp.label.batchio import Request, Result, custom_id, read_results
from autointerp.label.nulls import CONSTANT, SHUFFLED, null_features, reference_gains
from autointerp.label.stage import LabelBatch, LLMSession
from autointerp.label.units import ExplainUnit, Progress
from autointerp.llm import costs
from autointerp.llm.batch_api import BatchAPI
from autointerp.records import BATCH_DONE, FeatureContexts, ProgressEvent, ProgressFn

CHUNK = 128


class BatchRun(BatchResults):
    """Batch work over one dictionary. `session` (with a live client) is needed for the Batch API and for
    live retries and re-asks; `api` for the Batch API; import needs neither."""

    def __init__(self, db: str | Path, dictionary_id: int, cfg: LabelConfig, llm_cfg: LLMConfig,
                 session: LLMSession | None, explainer_model: str, simulator_model: str,
                 api: BatchAPI | None = None, prices: dict[str, tuple[float, ...]] | None = None,
                 on_progress: ProgressFn | None = None, budget: costs.Budget | None = None):
        self.db = db
        self.dictionary_id = dictionary_id
        self.cfg = cfg
        self.llm_cfg = llm_cfg
        self.session = session
        self.models = (explainer_model, simulator_model)
        self.api = api
        self.prices = {**costs.DEFAULT_PRICES, **(prices or {})}
        self.on_progress = on_progress
        self.progress = Progress()
        # --max-cost / --max-tokens: a unit is submitted only if its estimated cost fits (reserved until its
        # batch is ingested); results' real costs, and live retries and re-asks, are spent from it.
        self.budget = budget or costs.Budget()

    # ------------------------------------------------------------ settings and units

    def _config_json(self) -> str:
        return json.dumps({"label": self.cfg.model_dump(), "explainer": self.models[0], "simulator": self.models[1]},
                          sort_keys=True)

    def _labeler(self, config: str, score_explainers: list[str] | None = None) -> LabelBatch:
        """The live pass with a group's settings: its hashes, run records and live fallbacks."""
        c = json.loads(config)
        cfg = LabelConfig(**c["label"])
        client = self.session.client if self.session is not None else None
        session = LLMSession(client, c["explainer"], c["simulator"])  # type: ignore[arg-type]
        return LabelBatch(self.db, self.dictionary_id, cfg, session, [], explain_stage=False, score_stage=True,
                          score_explainers=score_explainers)

    def pending_units(self, stage: str, features: list[int], score_explainers: list[str] | None = None
                      ) -> list[dict[str, Any]]:
        """The stage's work that no row records yet, each with its attempt number."""
        lb = self._labeler(self._config_json(), score_explainers)
        lb.features, lb.explain_stage, lb.score_stage = features, stage == "explain", stage == "score"
        lb.cfg = lb.cfg.model_copy(update={"baseline": False})
        with store.open_store(self.db, wait_s=600) as con:
            model = self.models[0] if stage == "explain" else self.models[1]
            tries = store.batch_failures(con, self.dictionary_id, stage, model)
        units: list[dict[str, Any]] = []
        for job in lb.jobs():
            if stage == "explain" and job.explain_llm:
                units.append({"f": job.feature, "a": tries.get(job.feature, 0) + 1})
            elif stage == "score":
                units += [{"f": p.feature, "e": p.explanation_id, "l": p.label, "a": tries.get(p.explanation_id, 0) + 1}
                          for p in job.to_score if p.explainer != explain.BASELINE]
        return units

    def _requests(self, stage: str, group: str, unit: dict[str, Any], fc: FeatureContexts, lb: LabelBatch
                  ) -> list[Request]:
        """A unit's requests: the asks the live path sends, each under its custom_id."""
        did, f, a = self.dictionary_id, unit["f"], unit["a"]
        assert lb.session is not None
        if stage == "explain":
            eid, asks = None, ExplainUnit(lb.settings, fc, lb.session.explainer_model).asks()
        else:
            score = lb.score_unit(fc, unit["e"], unit["l"], list_prompts=False)
            eid, asks = unit["e"], [*score.simulation_asks(), *score.judge_asks()]
        return [Request(custom_id(group, did, f, eid, ask.part, a), ask.url, ask.role, ask.body) for ask in asks]

    def _load(self, features: Iterable[int]) -> dict[int, FeatureContexts]:
        with store.open_store(self.db, wait_s=600) as con:
            return store.read_feature_contexts(con, self.dictionary_id, sorted(set(features)))

    def group_requests(self, row: store.BatchRow) -> list[Request]:
        """Rebuild a group's requests (all endpoints) from its recorded units and settings."""
        units = json.loads(row.units)
        lb = self._labeler(row.config)
        out: list[Request] = []
        for i in range(0, len(units), CHUNK):
            chunk = units[i : i + CHUNK]
            fcs = self._load(u["f"] for u in chunk)
            for u in chunk:
                out += self._requests(row.stage, row.group_key, u, fcs[u["f"]], lb)
        return out

    # ------------------------------------------------------------ groups

    def _groups(self, stage: str, units: list[dict[str, Any]]) -> Iterable[tuple[str, list[dict[str, Any]],
                                                                                 list[Request]]]:
        """Units cut into groups whose batch per endpoint stays under the request and byte limits. Units stop
        at the first whose estimated cost does not fit in the budget (reserved as they are taken): it and
        the rest stay pending, and `progress.stopped` says why."""
        lim_n, lim_b = self.llm_cfg.batch_max_requests, self.llm_cfg.batch_max_bytes
        group, members, reqs = uuid.uuid4().hex[:12], [], []  # type: ignore[var-annotated]
        counts: dict[str, list[int]] = {}
        lb = self._labeler(self._config_json())
        for i in range(0, len(units), CHUNK):
            chunk = units[i : i + CHUNK]
            fcs = self._load(u["f"] for u in chunk)
            for k, u in enumerate(chunk):
                mine = self._requests(stage, group, u, fcs[u["f"]], lb)
                est = [costs.estimate_cost(self.prices, r.body, batch=True) for r in mine]
                usd, tok = sum(e[0] for e in est), sum(e[1] for e in est)
                if not self.budget.fits(usd, tok):
                    left = len(units) - i - k
                    self.progress.stopped = (
                        f"budget reached: {left:,} {stage} unit(s) not submitted (the next one is estimated at "
                        f"${usd:.4f}, {tok:,} tokens at batch prices; {self.budget.left()} left after what is "
                        "spent and submitted)")
                    if members:
                        yield group, members, reqs
                    return
                self.budget.reserve(usd, tok)
                add: dict[str, list[int]] = {}
                for r in mine:
                    n_b = add.setdefault(r.url, [0, 0])
                    n_b[0] += 1
                    n_b[1] += len(r.line())
                if members and any(counts.get(url, [0, 0])[0] + n > lim_n or counts.get(url, [0, 0])[1] + b > lim_b
                                   for url, (n, b) in add.items()):
                    yield group, members, reqs
                    group, members, reqs, counts = uuid.uuid4().hex[:12], [], [], {}
                    mine = self._requests(stage, group, u, fcs[u["f"]], lb)
                members.append(u)
                reqs += mine
                for url, (n, b) in add.items():
                    counts.setdefault(url, [0, 0])
                    counts[url][0] += n
                    counts[url][1] += b
        if members:
            yield group, members, reqs

    def _rows(self, stage: str, group: str, units: list[dict[str, Any]], reqs: list[Request], provider: str
              ) -> list[store.BatchRow]:
        urls = sorted({r.url for r in reqs}) if provider != "file" else ["mixed"]
        units_json, config = json.dumps(units), self._config_json()
        return [store.BatchRow(batch_key=f"{group}-{k}", group_key=group, provider=provider, url=url, stage=stage,
                               dictionary_id=self.dictionary_id, status="exported" if provider == "file" else "preparing",
                               n_requests=sum(1 for r in reqs if provider == "file" or r.url == url),
                               units=units_json, config=config)
                for k, url in enumerate(urls or ["none"])]

    # ------------------------------------------------------------ the Batch API

    def _advance(self, row: store.BatchRow, resumed: bool) -> None:
        """Upload and create what is recorded but not yet created; each step recorded as soon as it is done.
        A resumed row first looks for the file or batch whose answer the killed run never heard."""
        assert self.api is not None
        if row.url == "none":
            return
        file_id = row.input_file_id
        if row.status == "preparing":
            name = f"autointerp-{row.batch_key}.jsonl"
            file_id = self.api.find_file(name) if resumed else None
            if file_id is None:
                content = b"".join(r.line() for r in self.group_requests(row) if r.url == row.url)
                file_id = self.api.upload(name, content)
            with store.open_store(self.db, wait_s=600) as con:
                store.update_batch(con, row.batch_key, status="uploaded", input_file_id=file_id)
        if row.status in ("preparing", "uploaded"):
            assert file_id is not None
            info = self.api.find_batch(file_id) if resumed else None
            if info is None:
                info = self.api.create(file_id, row.url, {"autointerp_batch": row.batch_key})
            with store.open_store(self.db, wait_s=600) as con:
                store.update_batch(con, row.batch_key, batch_id=info.batch_id, status=info.status)

    def _poll(self, groups: list[str]) -> None:
        """Poll the groups' batches until each group is done, ingesting each as soon as it is."""
        assert self.api is not None
        waiting = list(groups)
        while waiting:
            done_req = total = failed = 0
            for group in list(waiting):
                with store.open_store(self.db, wait_s=600) as con:
                    rows = store.group_batches(con, group)
                finished = True
                for row in rows:
                    if row.batch_id is None or row.status in BATCH_DONE:
                        total += row.n_requests
                        done_req += row.n_completed + row.n_failed
                        continue
                    info = self.api.retrieve(row.batch_id)
                    with store.open_store(self.db, wait_s=600) as con:
                        store.update_batch(con, row.batch_key, status=info.status, n_completed=info.completed,
                                           n_failed=info.failed, output_file_id=info.output_file_id,
                                           error_file_id=info.error_file_id, error=info.errors)
                    total += row.n_requests
                    done_req += info.completed + info.failed
                    failed += info.failed
                    finished = finished and info.status in BATCH_DONE
                if finished:
                    self._ingest_downloaded(group)
                    waiting.remove(group)
            if self.on_progress is not None:
                self.on_progress(ProgressEvent(stage="batch", done=done_req, total=total, unit="req",
                                               detail=f"{len(waiting)} group(s) waiting, failed {failed}"))
            if waiting:
                time.sleep(self.llm_cfg.batch_poll_s)

    def _ingest_downloaded(self, group: str) -> None:
        assert self.api is not None
        with store.open_store(self.db, wait_s=600) as con:
            rows = store.group_batches(con, group)
        results: dict[str, Result] = {}
        for row in rows:
            for fid in (row.output_file_id, row.error_file_id):
                if fid:
                    results.update(read_results(self.api.content(fid))[0])
        self.ingest(rows, results)

    def submit(self, stage: str, units: list[dict[str, Any]]) -> list[str]:
        """Record, upload and create the batches of `units`; returns their group keys."""
        groups = []
        provider = self.api.endpoint if self.api is not None else "file"
        for group, members, reqs in self._groups(stage, units):
            rows = self._rows(stage, group, members, reqs, provider)
            with store.open_store(self.db, wait_s=600) as con:
                store.add_batches(con, rows)
            for row in rows:
                self._advance(row, resumed=False)
            groups.append(group)
        return groups

    def resume(self) -> None:
        """Finish every recorded batch of this dictionary: create what was not created, poll, ingest."""
        with store.open_store(self.db, wait_s=600) as con:
            rows = store.open_batches(con, self.dictionary_id)
        for row in rows:
            self._advance(row, resumed=True)
        if rows:
            self._poll(sorted({r.group_key for r in rows}, key=[r.group_key for r in rows].index))

    # ------------------------------------------------------------ rounds

    def run_stage(self, stage: str, features: list[int], score_explainers: list[str] | None = None) -> None:
        """Rounds of batches until the stage has no pending unit (failed requests retried per the flag)."""
        while self.progress.stopped is None:
            units = self.pending_units(stage, features, score_explainers)
            if not units:
                return
            self.progress.features_total += len({u["f"] for u in units})
            groups = self.submit(stage, units)
            self._poll(groups)
            self.budget.release()
            self.progress.tokens, self.progress.cost_usd = self.budget.tokens, self.budget.spent_usd


def require_endpoint(llm_cfg: LLMConfig) -> str:
    """The endpoint whose Batch API --batch-api uses (the first --base-url, else $OPENAI_BASE_URL): checked
    before any work starts, since the embedded local server has no Batch API."""
    base_url = (list(llm_cfg.base_urls) or [os.environ.get("OPENAI_BASE_URL", "")])[0]
    if not base_url:
        raise BadInput("--batch-api needs an endpoint with a Batch API: pass --base-url or set OPENAI_BASE_URL")
    return base_url


def batch_stage(db: str | Path, dictionary_id: int, features: list[int], cfg: LabelConfig, llm_cfg: LLMConfig,
                session: LLMSession, *, explain_stage: bool = True, score_stage: bool = True,
                on_progress: ProgressFn | None = None) -> Progress:
    """`label_stage` through the Batch API: finish the recorded batches, then explain, then score (then the
    null labels), each a round of batches. Baselines need no LLM and are done first, as live."""
    from autointerp.label.agent import refuse_batch_api
    from autointerp.label.stage import label_stage

    if explain_stage:
        refuse_batch_api(cfg, llm_cfg)
    if cfg.baseline:
        label_stage(db, dictionary_id, features, cfg.model_copy(update={"null_samples": 0}), None,
                    explain_stage=explain_stage, score_stage=score_stage)
    base_url = require_endpoint(llm_cfg)
    api = BatchAPI(base_url, os.environ.get("OPENAI_API_KEY"), timeout_s=llm_cfg.timeout_s)
    prices = getattr(session.client, "prices", None)
    run = BatchRun(db, dictionary_id, cfg, llm_cfg, session, session.explainer_model, session.simulator_model,
                   api=api, prices=prices, on_progress=on_progress, budget=getattr(session.client, "budget", None))
    try:
        run.resume()
        if explain_stage:
            run.run_stage("explain", features)
        if score_stage:
            run.run_stage("score", features)
            explainer = session.explainer_model
            nulls = (null_features(db, dictionary_id, [explainer], features, cfg.null_samples, cfg.reference)
                     if run.progress.stopped is None else [])
            if nulls:
                run.run_stage("score", nulls, [SHUFFLED + explainer, CONSTANT])
            reference_gains(db, dictionary_id, cfg.n_boot)
    finally:
        api.close()
    run.progress.tokens, run.progress.cost_usd = run.budget.tokens, run.budget.spent_usd
    return run.progress
