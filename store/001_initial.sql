-- The first schema: what the collect stage writes.
-- Public names (the SQL contract): dictionaries, features, contexts. The tables
-- sequences and examples hold the data behind the contexts view so that a
-- context's tokens are stored once, however many features point at it.

CREATE TABLE dictionaries (
    dictionary_id      INTEGER PRIMARY KEY,
    model              VARCHAR NOT NULL,
    hook               VARCHAR NOT NULL,
    kind               VARCHAR NOT NULL CHECK (kind IN ('neurons', 'sae')),
    sae                VARCHAR,
    random_init        BOOLEAN NOT NULL DEFAULT FALSE,
    seed               BIGINT NOT NULL,
    dataset            VARCHAR NOT NULL,
    ctx_len            INTEGER NOT NULL,
    n_tokens           BIGINT,            -- tokens actually collected (NULL until complete)
    n_contexts         BIGINT,
    n_features         INTEGER NOT NULL,
    status             VARCHAR NOT NULL CHECK (status IN ('incomplete', 'complete')),
    config_hash        VARCHAR NOT NULL,  -- same command line, same hash: how a re-run finds its dictionary
    config             JSON NOT NULL,
    autointerp_version VARCHAR NOT NULL,
    created_at         TIMESTAMP NOT NULL DEFAULT current_timestamp,
    completed_at       TIMESTAMP
);

CREATE TABLE sequences (
    dictionary_id INTEGER NOT NULL,
    seq           BIGINT NOT NULL,        -- index of the context in the run, 0-based
    split         VARCHAR NOT NULL CHECK (split IN ('explain', 'holdout')),
    token_ids     INTEGER[] NOT NULL,
    tokens        VARCHAR[] NOT NULL,
    PRIMARY KEY (dictionary_id, seq)
);

CREATE TABLE features (
    dictionary_id INTEGER NOT NULL,
    feature       INTEGER NOT NULL,
    max_act       FLOAT NOT NULL,
    mean_act      FLOAT NOT NULL,
    frac_active   FLOAT NOT NULL,         -- share of tokens with activation > the dictionary's threshold
    n_active      BIGINT NOT NULL,
    hist_bin_width DOUBLE NOT NULL,       -- histogram of positive activations: bin i is [i*w, (i+1)*w)
    hist_counts   BIGINT[] NOT NULL,
    PRIMARY KEY (dictionary_id, feature)
);

CREATE TABLE examples (
    dictionary_id INTEGER NOT NULL,
    feature       INTEGER NOT NULL,
    split         VARCHAR NOT NULL CHECK (split IN ('explain', 'holdout')),
    kind          VARCHAR NOT NULL CHECK (kind IN ('top', 'quantile', 'random')),
    rank          INTEGER NOT NULL,       -- top: 0 = highest; quantile: order within its bin; random: order drawn
    seq           BIGINT NOT NULL,
    max_act       FLOAT NOT NULL,
    acts          FLOAT[] NOT NULL,
    quantile      INTEGER,                -- quantile bin (0 = lowest), NULL unless kind = 'quantile'
    bin_low       FLOAT,
    bin_high      FLOAT
);

CREATE VIEW contexts AS
SELECT e.dictionary_id, e.feature, e.split, e.kind, e.rank, s.tokens, e.acts,
       e.max_act, e.seq, e.quantile, e.bin_low, e.bin_high
FROM examples e
JOIN sequences s USING (dictionary_id, seq);
