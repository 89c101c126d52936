-- Planted dictionaries: features whose activation is a rule with a known description (collect/planted.py),
-- so an explainer's labels and a simulator's label-following can be checked against the truth.
-- `dictionaries.kind` gains 'planted'. DuckDB cannot alter a CHECK constraint: the table is rebuilt (the
-- views over it bind by name when queried, so they need no change).
CREATE TABLE dictionaries_planted (
    dictionary_id      INTEGER PRIMARY KEY,
    model              VARCHAR NOT NULL,
    hook               VARCHAR NOT NULL,
    kind               VARCHAR NOT NULL CHECK (kind IN ('neurons', 'sae', 'planted')),
    sae                VARCHAR,
    random_init        BOOLEAN NOT NULL DEFAULT FALSE,
    seed               BIGINT NOT NULL,
    dataset            VARCHAR NOT NULL,
    ctx_len            INTEGER NOT NULL,
    n_tokens           BIGINT,
    n_contexts         BIGINT,
    n_features         INTEGER NOT NULL,
    status             VARCHAR NOT NULL CHECK (status IN ('incomplete', 'complete')),
    config_hash        VARCHAR NOT NULL,
    config             JSON NOT NULL,
    autointerp_version VARCHAR NOT NULL,
    created_at         TIMESTAMP NOT NULL DEFAULT current_timestamp,
    completed_at       TIMESTAMP
);
INSERT INTO dictionaries_planted SELECT dictionary_id, model, hook, kind, sae, random_init, seed, dataset, ctx_len,
    n_tokens, n_contexts, n_features, status, config_hash, config, autointerp_version, created_at, completed_at
FROM dictionaries;
DROP TABLE dictionaries;
ALTER TABLE dictionaries_planted RENAME TO dictionaries;

-- The truth of each planted feature: never shown to an explainer, read by `check-llm` and by users' SQL.
CREATE TABLE planted_truth (
    dictionary_id INTEGER NOT NULL,
    feature       INTEGER NOT NULL,
    name          VARCHAR NOT NULL,   -- the rule's name (unique in its dictionary)
    description   VARCHAR NOT NULL,   -- the one-line description a person would write: the true label
    kind          VARCHAR NOT NULL,   -- the rule kind (token, bigram, inside, number, or, and, except, ...)
    spec          JSON NOT NULL,      -- the whole rule: name, description, kind, params, noise
    spec_hash     VARCHAR NOT NULL,   -- sha256 of the spec's canonical JSON (first 16 hex digits)
    noise         DOUBLE NOT NULL,
    source        VARCHAR NOT NULL,   -- 'builtin' or the rules file it came from
    PRIMARY KEY (dictionary_id, feature)
);
