-- The reference-corrected correlation: each simulation run's correlation minus that of the constant
-- label ("nothing in particular") simulated on the same contexts by the same simulator and settings, with
-- a paired bootstrap CI (method 'correlation_gain', and 'correlation_random_gain' on random contexts).
-- A label that says nothing scores about 0 on it, whatever the simulator's content prior; the raw
-- correlation_top_random keeps OpenAI's definition. Views cannot be altered in place: re-created here.
DROP VIEW IF EXISTS dictionary_summary;
DROP VIEW IF EXISTS labels;

CREATE VIEW labels AS
WITH expl AS (SELECT * FROM latest_explanations),
sim AS (SELECT * FROM latest_simulation_runs),
wide AS (
    SELECT ls.explanation_id, ls.simulator,
           max(ls.value) FILTER (ls.method = 'correlation_top_random') AS correlation_top_random,
           max(ls.value) FILTER (ls.method = 'correlation_gain') AS correlation_gain,
           max(ls.ci_low) FILTER (ls.method = 'correlation_gain') AS correlation_gain_low,
           max(ls.ci_high) FILTER (ls.method = 'correlation_gain') AS correlation_gain_high,
           max(ls.value) FILTER (ls.method = 'correlation_random') AS correlation_random,
           max(ls.value) FILTER (ls.method = 'correlation_random_gain') AS correlation_random_gain,
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
           max(sm.margin) FILTER (ls.method = 'correlation_gain') AS correlation_gain_margin,
           max(sm.p_null) FILTER (ls.method = 'correlation_gain') AS correlation_gain_p,
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
CREATE VIEW dictionary_summary AS
SELECT d.dictionary_id, d.model, d.hook, d.kind, d.random_init, d.seed,
       coalesce(json_extract_string(d.config, '$.init_scheme'), CASE WHEN d.random_init THEN 'init' END) AS init_scheme,
       l.explainer, l.simulator,
       count(*) AS labels,
       count(*) FILTER (l.status = 'failed') AS failed,
       count(*) FILTER (l.score_status = 'failed') AS failed_scores,
       avg(l.correlation_top_random) AS mean_correlation_top_random,
       median(l.correlation_top_random) AS median_correlation_top_random,
       avg(l.correlation_top_random_margin) AS mean_correlation_top_random_margin,
       avg(l.correlation_gain) AS mean_correlation_gain,
       avg(l.correlation_gain_margin) AS mean_correlation_gain_margin,
       avg(l.correlation_random) AS mean_correlation_random,
       avg(l.correlation_random_gain) AS mean_correlation_random_gain,
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
