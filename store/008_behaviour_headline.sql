-- A behaviour score you can read. The headline `behaviour` is the KL form: the share of the
-- ablation's KL divergence from the clean next-token distribution that the simulation removes (KL is
-- never negative, so the ratio's denominator never changes sign). The loss form is `behaviour_loss`,
-- defined only where the ablation's loss damage has a 95% CI above 0 (else NULL with the reason in its
-- note). New methods: 'ablation_kl' (the KL damage, nats per token: the weight of behaviour_captured) and
-- 'behaviour_resolved' (1 when the headline's CI is narrower than the stated bound).
-- Behaviour runs written before this migration are renamed to match: their 'behaviour' (loss form)
-- becomes 'behaviour_loss' (NULL with a note where its run's loss damage CI does not exclude 0), their
-- 'behaviour_random' (loss form) 'behaviour_loss_random', and their 'behaviour_kl' the headline.
-- (Numbered 008: 005-007 were taken when it was written.)
UPDATE scores SET method = 'behaviour_loss_random'
WHERE method = 'behaviour_random' AND run_id IN (SELECT run_id FROM score_runs WHERE stage = 'behaviour');
UPDATE scores SET method = 'behaviour_loss'
WHERE method = 'behaviour' AND run_id IN (SELECT run_id FROM score_runs WHERE stage = 'behaviour');
UPDATE scores SET method = 'behaviour'
WHERE method = 'behaviour_kl' AND run_id IN (SELECT run_id FROM score_runs WHERE stage = 'behaviour');
UPDATE scores SET value = NULL, ci_low = NULL, ci_high = NULL,
       note = 'loss damage CI does not exclude 0 (rescored by migration 008)'
WHERE method = 'behaviour_loss' AND value IS NOT NULL AND run_id IN (
    SELECT run_id FROM scores WHERE method = 'ablation_effect' AND NOT coalesce(ci_low > 0, false));

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
           max(ls.ci_low) FILTER (ls.method = 'behaviour') AS behaviour_low,
           max(ls.ci_high) FILTER (ls.method = 'behaviour') AS behaviour_high,
           max(ls.value) FILTER (ls.method = 'behaviour_resolved') = 1 AS behaviour_resolved,
           max(ls.value) FILTER (ls.method = 'behaviour_random') AS behaviour_random,
           max(ls.note) FILTER (ls.method = 'behaviour') AS behaviour_note,
           max(ls.value) FILTER (ls.method = 'behaviour_loss') AS behaviour_loss,
           max(ls.note) FILTER (ls.method = 'behaviour_loss') AS behaviour_loss_note,
           max(ls.value) FILTER (ls.method = 'ablation_effect') AS ablation_effect,
           max(ls.value) FILTER (ls.method = 'ablation_kl') AS ablation_kl,
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
-- mean margin over the null, how many labels have a behaviour score, a resolved one, or none because the
-- feature's ablation changes nothing measurable, and the share of the dictionary's behaviour its labels
-- capture (a ratio of sums: behaviour scores weighted by each feature's KL damage, never negative).
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
       avg(l.behaviour_loss) AS mean_behaviour_loss,
       count(l.behaviour) AS behaviour_scored,
       count(*) FILTER (l.behaviour_resolved) AS behaviour_resolved,
       count(*) FILTER (l.behaviour_note LIKE 'no effect%') AS behaviour_no_effect,
       sum(l.behaviour * l.ablation_kl) FILTER (l.behaviour IS NOT NULL AND l.ablation_kl IS NOT NULL)
         / nullif(sum(l.ablation_kl) FILTER (l.behaviour IS NOT NULL AND l.ablation_kl IS NOT NULL), 0)
         AS behaviour_captured
FROM dictionaries d
JOIN labels l USING (dictionary_id)
GROUP BY ALL;
