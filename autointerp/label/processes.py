"""A label pass dealt out to client processes (--processes N).

One Python process reads, decodes and scores about a dozen features a second against an endpoint that answers at
once (bench/llm_stage.py): a fleet of servers would wait on it. With N processes the features are dealt round-robin
to N spawned interpreters, each with its own event loop, client and connections, and its share of the features in
flight and of the budget (so together they never spend more than the whole). Each one writes its own rows as any
label batch does (holding the database only while it writes), so a run killed at any moment resumes the same way:
the work left is read from the store. The parent adds up their progress and stops them all when one fails; a child
dies with its parent (a kill -9 of the parent leaves nothing writing)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from autointerp.config import LabelConfig, LLMConfig
from autointerp.errors import InternalError
from autointerp.label.roles import RoleGate
from autointerp.label.units import Progress
from autointerp.records import ProgressFn

_PR_SET_PDEATHSIG = 1
_JOIN_S = 60.0  # how long a stopped child may take to write what it finished


@dataclass(frozen=True)
class PassSpec:
    """What a child's LabelBatch is: the same for every child but its features."""

    db: str
    dictionary_id: int
    cfg: LabelConfig
    explain_stage: bool
    score_stage: bool
    concurrency: int  # features in flight in this child


def share(llm_cfg: LLMConfig, n: int) -> LLMConfig:
    """One of `n` children's configuration: a part of the budget (together never more than the whole) and one
    process."""
    update: dict[str, Any] = {"processes": 1}
    if llm_cfg.max_cost_usd is not None:
        update["max_cost_usd"] = llm_cfg.max_cost_usd / n
    if llm_cfg.max_tokens is not None:
        update["max_tokens"] = max(1, llm_cfg.max_tokens // n)
    return llm_cfg.model_copy(update=update)


def merge(parts: list[Progress]) -> Progress:
    """The children's progress as one pass's."""
    out = Progress()
    for p in parts:
        out.features_total += p.features_total
        out.features_done += p.features_done
        out.explained += p.explained
        out.scored += p.scored
        out.failed.update(p.failed)
        out.tokens += p.tokens
        out.cost_usd += p.cost_usd
        out.stopped = out.stopped or p.stopped
        out.notes += [n for n in p.notes if n not in out.notes]
        for method, values in p.score_values.items():
            out.score_values.setdefault(method, []).extend(values)
    return out


def run_pass(spec: PassSpec, features: list[int], llm_cfg: LLMConfig, n: int, gate: RoleGate,
             report: ProgressFn | None, event: Any) -> Progress:
    """Run the pass over `features` in `n` child processes; `gate` (what earlier runs stopped) is each child's to
    start with, and takes in what they found. `event(done, total, tokens, cost, failed)` makes the progress event
    `report` gets, from the children's sums."""
    shards = [s for s in (features[i::n] for i in range(n)) if s]
    child_spec = dataclasses.replace(spec, concurrency=max(1, spec.concurrency // len(shards)))
    child_cfg = share(llm_cfg, len(shards))
    ctx = mp.get_context("spawn")  # a fresh interpreter: no forked DuckDB, torch or event-loop state
    out = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(i, child_spec, shard, child_cfg, gate, out), name=f"autointerp-label-{i}")
             for i, shard in enumerate(shards)]
    # Children start with Ctrl-C ignored: the parent decides when they stop (a child interrupted while importing
    # could hang at exit), and tells them with SIGTERM, which a working child turns into a clean interrupt.
    main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for p in procs:
            p.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    numbers: dict[int, tuple[int, int, int, float, int]] = {}
    done: dict[int, tuple[Progress, RoleGate]] = {}
    error: BaseException | None = None
    try:
        while len(done) < len(procs) and error is None:
            try:
                kind, i, *rest = out.get(timeout=0.5)
            except queue.Empty:
                error = _silent_death(procs, done, out)
                continue
            if kind == "progress":
                numbers[i] = rest[0]
                if report is not None and len(numbers) == len(procs):  # a total of some children's is not the total
                    report(event(*(sum(x) for x in zip(*numbers.values(), strict=True))))
            elif kind == "done":
                done[i] = rest[0], rest[1]
            else:
                error = pickle.loads(rest[0])
    finally:
        _stop([p for i, p in enumerate(procs) if i not in done], out)
        for p in procs:
            p.join()
    if error is not None:
        raise error
    for _, child_gate in done.values():
        gate.absorb(child_gate)
    return merge([done[i][0] for i in sorted(done)])


def _stop(procs: Sequence[BaseProcess], out: Any) -> None:
    """Stop the children still running (each writes what it finished, as a label batch does on Ctrl-C), reading
    their messages meanwhile so none blocks on a full pipe; kill one that takes longer than _JOIN_S."""
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid or 0, signal.SIGTERM)
    deadline = time.monotonic() + _JOIN_S
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            out.get(timeout=0.2)
    for p in procs:
        if p.is_alive():
            p.kill()


def _silent_death(procs: Sequence[BaseProcess], done: dict, out: Any) -> BaseException | None:
    """An error for a child that ended without a word (killed, out of memory), or None while all are well."""
    for i, p in enumerate(procs):
        if i not in done and not p.is_alive():
            with contextlib.suppress(queue.Empty):  # its last word may still be on the way
                kind, j, *rest = out.get(timeout=2.0)
                if kind == "done":
                    done[j] = rest[0], rest[1]
                    return None
                if kind == "error":
                    return pickle.loads(rest[0])  # type: ignore[no-any-return]
                return None
            return InternalError(f"label process {i} ended (exit code {p.exitcode}) without finishing; what it "
                                 "finished is written: the same command resumes the rest")
    return None


def _die_with_parent() -> None:
    """SIGKILL when the parent dies (Linux): a kill -9 of the run must not leave children writing."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() == 1:  # the parent died before the call
            os._exit(1)


def _portable(exc: BaseException) -> bytes:
    """The exception, pickled for the parent to raise; one that does not pickle, as an InternalError naming it."""
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:
        return pickle.dumps(InternalError(f"a label process failed: {type(exc).__name__}: {exc}"))


def _interrupt(_signum: int, _frame: object) -> None:
    os.kill(os.getpid(), signal.SIGINT)  # asyncio.run cancels the batch, which writes what it finished


def _child(index: int, spec: PassSpec, features: list[int], llm_cfg: LLMConfig, gate: RoleGate, out: Any) -> None:
    _die_with_parent()
    from autointerp.label.stage import LabelBatch, open_llm

    signal.signal(signal.SIGINT, signal.default_int_handler)  # what asyncio.run takes over
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with open_llm(llm_cfg) as session:
            batch = LabelBatch(Path(spec.db), spec.dictionary_id, spec.cfg, session, features,
                               explain_stage=spec.explain_stage, score_stage=spec.score_stage,
                               concurrency=spec.concurrency, gate=gate)

            def send(_event: object) -> None:  # the figures, for the parent to add up (the event carries text)
                p = batch.progress
                out.put(("progress", index, (p.features_done, p.features_total, p.tokens, p.cost_usd,
                                             sum(p.failed.values()))))

            batch.on_progress = send
            progress = asyncio.run(batch.run())
            notes = getattr(session.client, "endpoint_notes", None)
            progress.notes += notes() if notes is not None else []
        out.put(("done", index, progress, batch.gate))
    except BaseException as exc:  # KeyboardInterrupt too: the parent says why the pass stopped
        out.put(("error", index, _portable(exc)))
        out.close()
        out.join_thread()
        sys.exit(1)
