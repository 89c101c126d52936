-- Explain and score: explanations, the simulator's predictions, scores, and every LLM call.
-- Public names (the SQL contract): explanations, scores, llm_calls, labels.

CREATE TABLE explanations (
    explanation_id  VARCHAR PRIMARY KEY,
    dictionary_id   INTEGER NOT NULL,
    feature         INTEGER NOT NULL,
    label           VARCHAR,                -- NULL when status = 'failed'
    explainer       VARCHAR NOT NULL,       -- the explainer model, or 'baseline:token-lookup'
    prompt_hash     VARCHAR NOT NULL,       -- hash of the prompt templates used
    status          VARCHAR NOT NULL CHECK (status IN ('ok', 'failed')),
    error           VARCHAR,                -- why it failed
    config          JSON,
    autointerp_version VARCHAR NOT NULL,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    CHECK ((status = 'ok') = (label IS NOT NULL))
);
-- One explanation per feature, explainer and prompt: the work queue's "done" mark.
CREATE UNIQUE INDEX explanations_once ON explanations (dictionary_id, feature, explainer, prompt_hash);

CREATE TABLE score_runs (
    explanation_id  VARCHAR NOT NULL,
    simulator       VARCHAR NOT NULL,       -- the simulator model, or 'baseline:token-lookup'
    prompt_hash     VARCHAR NOT NULL,
    status          VARCHAR NOT NULL CHECK (status IN ('ok', 'failed')),
    error           VARCHAR,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (explanation_id, simulator, prompt_hash)
);

CREATE TABLE simulations (
    explanation_id  VARCHAR NOT NULL,
    simulator       VARCHAR NOT NULL,
    dictionary_id   INTEGER NOT NULL,
    feature         INTEGER NOT NULL,
    seq             BIGINT NOT NULL,
    split           VARCHAR NOT NULL,
    kind            VARCHAR NOT NULL,
    rank            INTEGER NOT NULL,
    purpose         VARCHAR NOT NULL CHECK (purpose IN ('calibration', 'scoring')),
    predicted       FLOAT[] NOT NULL
);

CREATE TABLE scores (
    explanation_id  VARCHAR NOT NULL,
    dictionary_id   INTEGER NOT NULL,
    feature         INTEGER NOT NULL,
    simulator       VARCHAR NOT NULL,
    method          VARCHAR NOT NULL,
    value           DOUBLE,                 -- NULL when undefined (e.g. no variance)
    n_examples      INTEGER NOT NULL,
    ci_low          DOUBLE,
    ci_high         DOUBLE,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE llm_calls (
    call_id         VARCHAR PRIMARY KEY,
    role            VARCHAR NOT NULL,       -- 'explainer' | 'simulator'
    model           VARCHAR NOT NULL,
    endpoint        VARCHAR NOT NULL,
    prompt_hash     VARCHAR,
    prompt_tokens   INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_s       DOUBLE NOT NULL,
    cost_usd        DOUBLE NOT NULL,
    status          VARCHAR NOT NULL CHECK (status IN ('ok', 'error')),
    error           VARCHAR,
    dictionary_id   INTEGER,
    feature         INTEGER,
    explanation_id  VARCHAR,                -- the explanation it made or scored, when there is one
    created_at      TIMESTAMP NOT NULL
);

CREATE VIEW labels AS
SELECT e.dictionary_id, e.feature, e.explanation_id, e.label, e.explainer, e.status, e.error,
       s.simulator,
       max(s.value) FILTER (s.method = 'correlation_top_random') AS correlation_top_random,
       max(s.value) FILTER (s.method = 'correlation_random')     AS correlation_random,
       max(s.value) FILTER (s.method = 'explained_variance')     AS explained_variance,
       max(s.value) FILTER (s.method = 'detection')              AS detection,
       max(s.value) FILTER (s.method = 'fuzzing')                AS fuzzing,
       max(s.value) FILTER (s.method = 'behaviour')              AS behaviour,
       e.created_at
FROM explanations e
LEFT JOIN scores s USING (explanation_id)
GROUP BY ALL;
