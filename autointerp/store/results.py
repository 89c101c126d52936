"""The label and behaviour stages' queues (work whose rows do not exist yet), their typed writes, and
behaviour's inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from autointerp import __version__
from autointerp.errors import BadInput
from autointerp.records import CallRow, Explanation, ScoreRow, ScoreRun, SimulatedContext, Simulation
from autointerp.store.db import Connection, insert_rows, transaction


def explained_features(con: Connection, dictionary_id: int, explainer: str, prompt_hash: str,
                       retry_failed: bool = False) -> set[int]:
    """Features whose explanation by `explainer` with these prompts is done: an ok row exists, or a failed
    one and failures are not being retried."""
    return {r[0] for r in con.execute(
        "SELECT feature FROM explanations WHERE dictionary_id = ? AND explainer = ? AND prompt_hash = ? "
        "GROUP BY feature HAVING bool_or(status = 'ok') OR NOT ?",
        [dictionary_id, explainer, prompt_hash, retry_failed]).fetchall()}


@dataclass(frozen=True)
class PendingScore:
    explanation_id: str
    feature: int
    label: str
    explainer: str


def unscored_explanations(con: Connection, dictionary_id: int, simulator: str, settings_hash: str,
                          explainers: list[str], retry_failed: bool = False) -> list[PendingScore]:
    """Ok explanations by these explainers with no simulation run of these settings (ok, or failed when
    failures are not being retried)."""
    if not explainers:
        return []
    rows = con.execute(f"""
        SELECT e.explanation_id, e.feature, e.label, e.explainer FROM explanations e
        WHERE e.dictionary_id = ? AND e.status = 'ok' AND e.explainer IN ({', '.join('?' * len(explainers))})
          AND NOT EXISTS (SELECT 1 FROM score_runs r WHERE r.explanation_id = e.explanation_id AND r.stage = 'simulation'
                          AND r.simulator = ? AND r.settings_hash = ? AND (r.status = 'ok' OR NOT ?))
        ORDER BY e.feature, e.explainer""", [dictionary_id, *explainers, simulator, settings_hash, retry_failed])
    return [PendingScore(*r) for r in rows.fetchall()]


def null_explanations(con: Connection, dictionary_id: int, explainer: str) -> list[Explanation]:
    """The null labels made for `explainer`'s labels in this dictionary (shuffled and constant)."""
    cur = con.execute(
        "SELECT * EXCLUDE (autointerp_version, created_at) FROM explanations WHERE dictionary_id = ? "
        "AND ((null_kind = 'shuffled' AND null_of = ?) OR null_kind = 'constant') ORDER BY feature",
        [dictionary_id, explainer])
    cols = [d[0] for d in cur.description]
    return [Explanation(**dict(zip(cols, r, strict=True))) for r in cur.fetchall()]


def ok_labels(con: Connection, dictionary_id: int, explainer: str) -> dict[int, str]:
    """feature -> label of the newest ok explanation by `explainer` (real labels, not nulls)."""
    return dict(con.execute(
        "SELECT feature, label FROM explanations WHERE dictionary_id = ? AND explainer = ? AND status = 'ok' "
        "AND null_kind IS NULL QUALIFY row_number() OVER (PARTITION BY feature ORDER BY created_at DESC) = 1",
        [dictionary_id, explainer]).fetchall())


@dataclass
class Bundle:
    """One finished unit of work (a feature explained and/or scored) and the rows it adds, as records.
    Written whole or not at all; a bundle whose ok work is already recorded (another process did it) is
    dropped whole, so nothing is stored twice."""

    explanations: list[Explanation] = field(default_factory=list)
    runs: list[ScoreRun] = field(default_factory=list)
    simulations: list[Simulation] = field(default_factory=list)
    scores: list[ScoreRow] = field(default_factory=list)
    calls: list[CallRow] = field(default_factory=list)

    def extend(self, other: Bundle) -> None:
        for name in ("explanations", "runs", "simulations", "scores", "calls"):
            getattr(self, name).extend(getattr(other, name))


def _done_work(con: Connection, bundles: list[Bundle]) -> tuple[set[tuple], set[tuple]]:
    """The ok explanations and ok score runs already stored among the bundles' work, by their keys: two
    queries per flush, not two per bundle."""
    features = sorted({e.feature for b in bundles for e in b.explanations if e.status == "ok"})
    explained = set(con.execute(
        "SELECT dictionary_id, feature, explainer, prompt_hash FROM explanations WHERE status = 'ok' "
        "AND feature IN (SELECT unnest(?::INTEGER[]))", [features]).fetchall()) if features else set()
    eids = sorted({r.explanation_id for b in bundles for r in b.runs if r.status == "ok"})
    scored = set(con.execute(
        "SELECT explanation_id, simulator, stage, settings_hash FROM score_runs WHERE status = 'ok' "
        "AND explanation_id IN (SELECT unnest(?::VARCHAR[]))", [eids]).fetchall()) if eids else set()
    return explained, scored


def _already_done(b: Bundle, explained: set[tuple], scored: set[tuple]) -> bool:
    return (any(e.status == "ok" and (e.dictionary_id, e.feature, e.explainer, e.prompt_hash) in explained
                for e in b.explanations)
            or any(r.status == "ok" and (r.explanation_id, r.simulator, r.stage, r.settings_hash) in scored
                   for r in b.runs))


def write_bundles(con: Connection, bundles: list[Bundle]) -> int:
    """Insert finished work in one transaction: each bundle's rows become visible together or not at all.
    Returns the bundles written."""
    with transaction(con):
        return insert_bundles(con, bundles)


def insert_bundles(con: Connection, bundles: list[Bundle]) -> int:
    """`write_bundles` inside the caller's transaction."""
    merged = Bundle()
    written = 0
    explained, scored = _done_work(con, bundles)
    for b in bundles:
        if _already_done(b, explained, scored):
            continue
        merged.extend(b)
        written += 1
    version = {"autointerp_version": __version__}
    insert_rows(con, "explanations", [{**e.model_dump(), **version} for e in merged.explanations])
    insert_rows(con, "score_runs", [{**r.model_dump(), **version} for r in merged.runs])
    insert_rows(con, "simulations", [s.model_dump() for s in merged.simulations])
    insert_rows(con, "scores", [s.model_dump() for s in merged.scores])
    insert_rows(con, "llm_calls", [c.model_dump() for c in merged.calls])
    return written


# ---------------------------------------------------------------- reference gains


@dataclass(frozen=True)
class GainPending:
    run_id: str  # a scored simulation run with no correlation gain yet
    explanation_id: str
    feature: int
    simulator: str
    reference_run_id: str  # the constant label's newest ok run on the same feature, simulator and settings


def gain_pending(con: Connection, dictionary_id: int, method: str) -> list[GainPending]:
    """Scored simulation runs without a `method` score whose feature has a reference run: the constant
    label's newest ok simulation run with the same simulator and settings (so the same contexts)."""
    rows = con.execute("""
        WITH ref AS (
            SELECT r.run_id, r.feature, r.simulator, r.settings_hash FROM score_runs r
            JOIN explanations e USING (explanation_id)
            WHERE r.dictionary_id = ? AND r.stage = 'simulation' AND r.status = 'ok' AND e.null_kind = 'constant'
            QUALIFY row_number() OVER (PARTITION BY r.feature, r.simulator, r.settings_hash
                                       ORDER BY r.created_at DESC, r.run_id) = 1)
        SELECT n.run_id, n.explanation_id, n.feature, n.simulator, ref.run_id FROM score_runs n
        JOIN ref ON ref.feature = n.feature AND ref.simulator = n.simulator AND ref.settings_hash = n.settings_hash
        WHERE n.dictionary_id = ? AND n.stage = 'simulation' AND n.status = 'ok'
          AND NOT EXISTS (SELECT 1 FROM scores s WHERE s.run_id = n.run_id AND s.method = ?)
        ORDER BY n.feature, n.run_id""", [dictionary_id, dictionary_id, method]).fetchall()
    return [GainPending(*r) for r in rows]


def add_scores(con: Connection, rows: list[ScoreRow]) -> int:
    """Scores computed later for runs already written, in one transaction; a (run, method) that already
    has a score is skipped, so two passes never write one twice. Returns the rows written."""
    with transaction(con):
        have = set(con.execute("SELECT run_id, method FROM scores WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
                               [sorted({r.run_id for r in rows})]).fetchall())
        new = [r for r in rows if (r.run_id, r.method) not in have]
        insert_rows(con, "scores", [r.model_dump() for r in new])
    return len(new)


# ---------------------------------------------------------------- behaviour


@dataclass(frozen=True)
class SimulationRunRef:
    run_id: str
    explanation_id: str
    feature: int
    simulator: str
    prompt_hash: str


def behaviour_pending(con: Connection, dictionary_id: int, settings_hash: str,
                      features: list[int] | None = None, retry_failed: bool = False) -> list[SimulationRunRef]:
    """The newest ok simulation run of each explanation and simulator that has no behaviour run with these
    settings (ok, or failed when failures are not being retried). Reference labels made only for
    correlation_gain (not in the null sample) are left out: their behaviour would double the cost."""
    rows = con.execute("""
        SELECT n.run_id, n.explanation_id, n.feature, n.simulator, n.prompt_hash FROM latest_simulation_runs n
        JOIN explanations e USING (explanation_id)
        WHERE n.dictionary_id = ? AND n.status = 'ok'
          AND NOT coalesce(try_cast(json_extract(e.config, '$.reference_label') AS BOOLEAN), false) AND NOT EXISTS (
            SELECT 1 FROM score_runs b WHERE b.source_run_id = n.run_id AND b.stage = 'behaviour'
            AND b.settings_hash = ? AND (b.status = 'ok' OR NOT ?))
        ORDER BY n.feature, n.explanation_id, n.simulator""", [dictionary_id, settings_hash, retry_failed]).fetchall()
    refs = [SimulationRunRef(*r) for r in rows]
    if features is not None:
        wanted = set(features)
        refs = [r for r in refs if r.feature in wanted]
    return refs


def feature_mean(con: Connection, dictionary_id: int, feature: int) -> float:
    row = con.execute("SELECT mean_act FROM features WHERE dictionary_id = ? AND feature = ?",
                      [dictionary_id, feature]).fetchone()
    if row is None:
        raise BadInput(f"dictionary {dictionary_id} has no feature {feature}")
    return float(row[0])


def simulated_contexts(con: Connection, run_id: str) -> list[SimulatedContext]:
    """One simulation run's contexts, each with its tokens, true and predicted activations: all from
    that run, so tokens and predictions always belong together."""
    return simulated_contexts_of(con, [run_id]).get(run_id, [])


def simulated_contexts_of(con: Connection, run_ids: list[str], tokens: bool = True
                          ) -> dict[str, list[SimulatedContext]]:
    """`simulated_contexts` of many runs in one query (by run id; a run without simulations is absent).
    `tokens=False` leaves token_ids empty (the reference gains need only the values: reading every
    context's tokens was most of their cost)."""
    token_ids, sequences = (("q.token_ids", "JOIN sequences q ON q.dictionary_id = s.dictionary_id AND q.seq = s.seq")
                            if tokens else ("[]::INTEGER[]", ""))
    rows = con.execute(f"""
        SELECT s.run_id, s.seq, s.kind, s.purpose, {token_ids}, e.acts, s.predicted FROM simulations s
        JOIN examples e ON e.dictionary_id = s.dictionary_id AND e.feature = s.feature AND e.seq = s.seq
             AND e.split = s.split AND e.kind = s.kind AND e.rank = s.rank
        {sequences}
        WHERE s.run_id IN (SELECT unnest(?::VARCHAR[]))
        ORDER BY s.run_id, s.purpose, s.kind DESC, s.rank""", [list(run_ids)]).fetchall()
    out: dict[str, list[SimulatedContext]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(SimulatedContext(seq=r[1], kind=r[2], purpose=r[3], token_ids=r[4],
                                                         acts=r[5], predicted=r[6]))
    return out
