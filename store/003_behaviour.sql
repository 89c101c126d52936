-- Behaviour scores, and the views that summarise them.
-- scores.note says why a value is NULL (e.g. a feature whose ablation changes nothing measurable).
ALTER TABLE scores ADD COLUMN note VARCHAR;

CREATE OR REPLACE VIEW labels AS
SELECT e.dictionary_id, e.feature, e.explanation_id, e.label, e.explainer, e.status, e.error,
       s.simulator,
       max(s.value) FILTER (s.method = 'correlation_top_random') AS correlation_top_random,
       max(s.value) FILTER (s.method = 'correlation_random')     AS correlation_random,
       max(s.value) FILTER (s.method = 'explained_variance')     AS explained_variance,
       max(s.value) FILTER (s.method = 'detection')              AS detection,
       max(s.value) FILTER (s.method = 'fuzzing')                AS fuzzing,
       max(s.value) FILTER (s.method = 'detection_auc')          AS detection_auc,
       max(s.value) FILTER (s.method = 'fuzzing_auc')            AS fuzzing_auc,
       max(s.value) FILTER (s.method = 'behaviour')              AS behaviour,
       max(s.value) FILTER (s.method = 'behaviour_kl')           AS behaviour_kl,
       max(s.value) FILTER (s.method = 'ablation_effect')        AS ablation_effect,
       max(s.note)  FILTER (s.method = 'behaviour')              AS behaviour_note,
       e.created_at
FROM explanations e
LEFT JOIN scores s USING (explanation_id)
GROUP BY ALL;

-- One row per dictionary and explainer: mean and median of every score, and the share of the
-- dictionary's behaviour its labels capture (behaviour scores weighted by each feature's ablation effect).
CREATE VIEW dictionary_summary AS
SELECT d.dictionary_id, d.model, d.hook, d.kind, d.random_init, d.seed, l.explainer,
       count(*) AS labels,
       count(*) FILTER (l.status = 'failed') AS failed,
       avg(l.correlation_top_random) AS mean_correlation_top_random,
       median(l.correlation_top_random) AS median_correlation_top_random,
       avg(l.correlation_random) AS mean_correlation_random,
       avg(l.explained_variance) AS mean_explained_variance,
       median(l.explained_variance) AS median_explained_variance,
       avg(l.detection) AS mean_detection,
       avg(l.fuzzing) AS mean_fuzzing,
       avg(l.behaviour) AS mean_behaviour,
       median(l.behaviour) AS median_behaviour,
       avg(l.behaviour_kl) AS mean_behaviour_kl,
       sum(l.behaviour * l.ablation_effect) FILTER (l.behaviour IS NOT NULL AND l.ablation_effect > 0)
         / nullif(sum(l.ablation_effect) FILTER (l.behaviour IS NOT NULL AND l.ablation_effect > 0), 0)
         AS behaviour_captured
FROM dictionaries d
JOIN labels l USING (dictionary_id)
GROUP BY ALL;
