-- Runs and history.
-- * Every scoring pass (simulation, or behaviour) is a score_runs row with its own run_id; scores and
--   simulations point at the run that made them, so two runs with other settings never mix.
-- * The queue's key is (explanation, simulator, stage, settings_hash): a run with other settings
--   (another prompt, --ablate zero after mean, other --sim-top) is other, pending work.
-- * Failed work stays as history. A retry (--retry-failed) adds a new row; views show the newest.
-- * Failures carry a machine-readable `code` (see autointerp/errors.py FailureCode), so
--   `SELECT code, count(*) ... GROUP BY code` needs no string matching.
-- * Null labels (what a label that says nothing scores) are explanations too: `null_kind` is
--   'shuffled' (another feature's label) or 'constant' (NULL for real labels), `null_of` the explainer
--   whose labels were shuffled, `label_feature` the feature a shuffled label was written for.
-- Roles in llm_calls: 'explainer' | 'simulator' | 'judge'.

DROP INDEX explanations_once;
ALTER TABLE explanations ADD COLUMN code VARCHAR;
ALTER TABLE explanations ADD COLUMN null_kind VARCHAR;
ALTER TABLE explanations ADD COLUMN null_of VARCHAR;
ALTER TABLE explanations ADD COLUMN label_feature INTEGER;
CREATE INDEX explanations_work ON explanations (dictionary_id, feature, explainer, prompt_hash);

CREATE TABLE runs_new (
    run_id          VARCHAR PRIMARY KEY,
    explanation_id  VARCHAR NOT NULL,
    dictionary_id   INTEGER NOT NULL,
    feature         INTEGER NOT NULL,
    stage           VARCHAR NOT NULL CHECK (stage IN ('simulation', 'behaviour')),
    simulator       VARCHAR NOT NULL,       -- the simulator model, or 'baseline:token-lookup'
    prompt_hash     VARCHAR NOT NULL,       -- templates used (simulation); the source run's (behaviour)
    settings_hash   VARCHAR NOT NULL,       -- prompt hash + every setting that changes the result
    config          JSON,                   -- those settings
    source_run_id   VARCHAR,                -- behaviour: the simulation run whose predictions it used
    status          VARCHAR NOT NULL CHECK (status IN ('ok', 'failed')),
    error           VARCHAR,
    code            VARCHAR,
    autointerp_version VARCHAR,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

INSERT INTO runs_new
SELECT 'legacy-' || md5(r.explanation_id || r.simulator || r.prompt_hash), r.explanation_id, e.dictionary_id,
       e.feature, 'simulation', r.simulator, r.prompt_hash, 'legacy-' || r.prompt_hash, NULL, NULL, r.status,
       r.error, NULL, NULL, r.created_at
FROM score_runs r JOIN explanations e USING (explanation_id);

-- Behaviour scores written before runs existed: one behaviour run per explanation and simulator.
INSERT INTO runs_new
SELECT DISTINCT 'legacy-behaviour-' || md5(s.explanation_id || s.simulator), s.explanation_id, s.dictionary_id,
       s.feature, 'behaviour', s.simulator, 'legacy', 'legacy-ablate-mean', '{"ablate": "mean"}', NULL, 'ok',
       NULL, NULL, NULL, min(s.created_at) OVER (PARTITION BY s.explanation_id, s.simulator)
FROM scores s WHERE s.method IN ('behaviour', 'behaviour_kl', 'ablation_effect');

DROP TABLE score_runs;
ALTER TABLE runs_new RENAME TO score_runs;

ALTER TABLE scores ADD COLUMN run_id VARCHAR;
UPDATE scores SET run_id = CASE
    WHEN method IN ('behaviour', 'behaviour_kl', 'ablation_effect')
        THEN 'legacy-behaviour-' || md5(explanation_id || simulator)
    ELSE (SELECT r.run_id FROM score_runs r WHERE r.explanation_id = scores.explanation_id
          AND r.simulator = scores.simulator AND r.stage = 'simulation' ORDER BY r.created_at DESC LIMIT 1) END;

ALTER TABLE simulations ADD COLUMN run_id VARCHAR;
UPDATE simulations SET run_id = (SELECT r.run_id FROM score_runs r WHERE r.explanation_id = simulations.explanation_id
    AND r.simulator = simulations.simulator AND r.stage = 'simulation' ORDER BY r.created_at DESC LIMIT 1);

ALTER TABLE llm_calls ADD COLUMN run_id VARCHAR;

UPDATE score_runs SET source_run_id = (SELECT r.run_id FROM score_runs r WHERE r.explanation_id = score_runs.explanation_id
    AND r.simulator = score_runs.simulator AND r.stage = 'simulation' ORDER BY r.created_at DESC LIMIT 1)
WHERE stage = 'behaviour';

-- The newest explanation per unit of work (dictionary, feature, explainer, prompt), and the newest
-- simulation run per explanation and simulator: what the views below show.
CREATE VIEW latest_explanations AS
SELECT * FROM explanations
QUALIFY row_number() OVER (PARTITION BY dictionary_id, feature, explainer, prompt_hash
                           ORDER BY created_at DESC, explanation_id) = 1;

CREATE VIEW latest_simulation_runs AS
SELECT * FROM score_runs WHERE stage = 'simulation'
QUALIFY row_number() OVER (PARTITION BY explanation_id, simulator ORDER BY created_at DESC, run_id) = 1;

-- One row per explanation, simulator and score method, from the newest runs: the newest explanation
-- per unit of work (dictionary, feature, explainer, prompt), its newest simulation run per simulator,
-- and the newest behaviour run made from that simulation run. Older runs stay in `scores`.
CREATE VIEW latest_scores AS
WITH expl AS (SELECT * FROM latest_explanations),
sim AS (SELECT * FROM latest_simulation_runs),
beh AS (
    SELECT * FROM score_runs WHERE stage = 'behaviour'
    QUALIFY row_number() OVER (PARTITION BY source_run_id ORDER BY created_at DESC, run_id) = 1)
SELECT e.dictionary_id, e.feature, e.explanation_id, e.explainer, e.null_kind, e.null_of, sim.simulator,
       s.method, s.value, s.ci_low, s.ci_high, s.n_examples, s.note, s.run_id
FROM expl e JOIN sim USING (explanation_id) JOIN scores s ON s.run_id = sim.run_id
UNION ALL
SELECT e.dictionary_id, e.feature, e.explanation_id, e.explainer, e.null_kind, e.null_of, sim.simulator,
       s.method, s.value, s.ci_low, s.ci_high, s.n_examples, s.note, s.run_id
FROM expl e JOIN sim USING (explanation_id) JOIN beh ON beh.source_run_id = sim.run_id
JOIN scores s ON s.run_id = beh.run_id;

-- Each real label's score beside the shuffled-label null of the same dictionary, explainer, simulator
-- and method: the null's mean, the margin over it, and p = (1 + #nulls >= value) / (1 + #nulls).
CREATE VIEW score_margins AS
WITH nulls AS (
    SELECT dictionary_id, null_of AS explainer, simulator, method, value FROM latest_scores
    WHERE null_kind = 'shuffled' AND value IS NOT NULL),
null_stats AS (
    SELECT dictionary_id, explainer, simulator, method, avg(value) AS null_mean, count(*) AS null_n
    FROM nulls GROUP BY ALL)
SELECT r.*, n.null_mean, n.null_n, r.value - n.null_mean AS margin,
       CASE WHEN r.value IS NOT NULL THEN
       (1 + (SELECT count(*) FROM nulls x WHERE x.dictionary_id = r.dictionary_id AND x.explainer = r.explainer
             AND x.simulator = r.simulator AND x.method = r.method AND x.value >= r.value))
         / (1 + n.null_n) END AS p_null
FROM latest_scores r
LEFT JOIN null_stats n USING (dictionary_id, explainer, simulator, method)
WHERE r.null_kind IS NULL;

-- One row per explanation (the newest per unit of work) and simulator (its newest run): every score a
-- column, with its margin over the shuffled-label null and p against it (real labels only).
CREATE OR REPLACE VIEW labels AS
WITH expl AS (SELECT * FROM latest_explanations),
sim AS (SELECT * FROM latest_simulation_runs),
wide AS (
    SELECT ls.explanation_id, ls.simulator,
           max(ls.value) FILTER (ls.method = 'correlation_top_random') AS correlation_top_random,
           max(ls.value) FILTER (ls.method = 'correlation_random') AS correlation_random,
           max(ls.value) FILTER (ls.method = 'explained_variance') AS explained_variance,
           max(ls.value) FILTER (ls.method = 'detection') AS detection,
           max(ls.value) FILTER (ls.method = 'fuzzing') AS fuzzing,
           max(ls.value) FILTER (ls.method = 'detection_auc') AS detection_auc,
           max(ls.value) FILTER (ls.method = 'fuzzing_auc') AS fuzzing_auc,
           max(ls.value) FILTER (ls.method = 'behaviour') AS behaviour,
           max(ls.value) FILTER (ls.method = 'behaviour_random') AS behaviour_random,
           max(ls.value) FILTER (ls.method = 'behaviour_kl') AS behaviour_kl,
           max(ls.value) FILTER (ls.method = 'ablation_effect') AS ablation_effect,
           max(ls.note) FILTER (ls.method = 'behaviour') AS behaviour_note,
           max(sm.margin) FILTER (ls.method = 'correlation_top_random') AS correlation_top_random_margin,
           max(sm.p_null) FILTER (ls.method = 'correlation_top_random') AS correlation_top_random_p,
           max(sm.margin) FILTER (ls.method = 'correlation_random') AS correlation_random_margin,
           max(sm.p_null) FILTER (ls.method = 'correlation_random') AS correlation_random_p,
           max(sm.margin) FILTER (ls.method = 'explained_variance') AS explained_variance_margin,
           max(sm.p_null) FILTER (ls.method = 'explained_variance') AS explained_variance_p,
           max(sm.margin) FILTER (ls.method = 'detection') AS detection_margin,
           max(sm.p_null) FILTER (ls.method = 'detection') AS detection_p,
           max(sm.margin) FILTER (ls.method = 'fuzzing') AS fuzzing_margin,
           max(sm.p_null) FILTER (ls.method = 'fuzzing') AS fuzzing_p,
           max(sm.margin) FILTER (ls.method = 'behaviour') AS behaviour_margin,
           max(sm.p_null) FILTER (ls.method = 'behaviour') AS behaviour_p
    FROM latest_scores ls LEFT JOIN score_margins sm USING (run_id, method)
    GROUP BY ALL)
SELECT e.dictionary_id, e.feature, e.explanation_id, e.label, e.explainer, e.status, e.error, e.code,
       e.null_kind, e.null_of, sim.simulator, sim.run_id, sim.status AS score_status, sim.error AS score_error,
       sim.code AS score_code, w.* EXCLUDE (explanation_id, simulator), e.created_at
FROM expl e
LEFT JOIN sim USING (explanation_id)
LEFT JOIN wide w ON w.explanation_id = e.explanation_id AND w.simulator = sim.simulator;

-- One row per dictionary, explainer and simulator (null labels are explainers 'null:shuffled:X' and
-- 'null:constant', shown beside the real ones): label counts, means and medians of every score, the
-- mean margin over the null, and the share of the dictionary's behaviour its labels capture
-- (a ratio of sums: behaviour scores weighted by each feature's ablation effect).
CREATE OR REPLACE VIEW dictionary_summary AS
SELECT d.dictionary_id, d.model, d.hook, d.kind, d.random_init, d.seed,
       coalesce(json_extract_string(d.config, '$.init_scheme'), CASE WHEN d.random_init THEN 'init' END) AS init_scheme,
       l.explainer, l.simulator,
       count(*) AS labels,
       count(*) FILTER (l.status = 'failed') AS failed,
       count(*) FILTER (l.score_status = 'failed') AS failed_scores,
       avg(l.correlation_top_random) AS mean_correlation_top_random,
       median(l.correlation_top_random) AS median_correlation_top_random,
       avg(l.correlation_top_random_margin) AS mean_correlation_top_random_margin,
       avg(l.correlation_random) AS mean_correlation_random,
       avg(l.correlation_random_margin) AS mean_correlation_random_margin,
       avg(l.explained_variance) AS mean_explained_variance,
       median(l.explained_variance) AS median_explained_variance,
       avg(l.explained_variance_margin) AS mean_explained_variance_margin,
       avg(l.detection) AS mean_detection,
       avg(l.detection_margin) AS mean_detection_margin,
       avg(l.fuzzing) AS mean_fuzzing,
       avg(l.fuzzing_margin) AS mean_fuzzing_margin,
       avg(l.behaviour) AS mean_behaviour,
       median(l.behaviour) AS median_behaviour,
       avg(l.behaviour_margin) AS mean_behaviour_margin,
       avg(l.behaviour_random) AS mean_behaviour_random,
       avg(l.behaviour_kl) AS mean_behaviour_kl,
       sum(l.behaviour * l.ablation_effect) FILTER (l.behaviour IS NOT NULL AND l.ablation_effect > 0)
         / nullif(sum(l.ablation_effect) FILTER (l.behaviour IS NOT NULL AND l.ablation_effect > 0), 0)
         AS behaviour_captured
FROM dictionaries d
JOIN labels l USING (dictionary_id)
GROUP BY ALL;
