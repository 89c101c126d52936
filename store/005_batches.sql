-- Batch API runs and batch files.
-- * One `batches` row per provider batch (or exported batch file), written before anything is sent,
--   then updated as the file is uploaded, the batch created, polled and its results ingested: a killed
--   run finds its batches here and resumes polling them, so nothing is submitted twice.
-- * `group_key` ties the batches whose results are ingested together (a score round in echo mode is a
--   completions batch and a chat batch); every request's custom_id starts with it.
-- * `units` (JSON) is the work a group asks for (features to explain, or explanations to score), and
--   `config` (JSON) the settings its requests were built with, so its results are read the same way
--   after a restart or from a file produced elsewhere (`autointerp batch import`).
-- * llm_calls.batch_id marks each call whose result came from a batch.

CREATE TABLE batches (
    batch_key       VARCHAR PRIMARY KEY,    -- ours; the uploaded file is named autointerp-<batch_key>.jsonl
    group_key       VARCHAR NOT NULL,
    batch_id        VARCHAR,                -- the provider's, once created
    input_file_id   VARCHAR,
    output_file_id  VARCHAR,
    error_file_id   VARCHAR,
    provider        VARCHAR NOT NULL,       -- the endpoint (no credentials), or 'file' for exported batches
    url             VARCHAR NOT NULL,       -- /v1/chat/completions | /v1/completions | 'mixed' (a file)
    stage           VARCHAR NOT NULL CHECK (stage IN ('explain', 'score')),
    dictionary_id   INTEGER NOT NULL,
    status          VARCHAR NOT NULL,       -- preparing, uploaded, then the provider's (validating ... completed,
                                            -- failed, expired, cancelled); 'exported' for a file
    ingested_at     TIMESTAMP,              -- when its results were written (NULL: still to do)
    n_requests      INTEGER NOT NULL,
    n_completed     INTEGER NOT NULL DEFAULT 0,
    n_failed        INTEGER NOT NULL DEFAULT 0,
    cost_usd        DOUBLE,                 -- at batch prices, once ingested
    units           JSON NOT NULL,
    config          JSON NOT NULL,
    error           VARCHAR,
    created_at      TIMESTAMP NOT NULL DEFAULT current_timestamp,
    updated_at      TIMESTAMP NOT NULL DEFAULT current_timestamp
);

ALTER TABLE llm_calls ADD COLUMN batch_id VARCHAR;
