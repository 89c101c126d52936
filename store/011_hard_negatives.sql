-- Hard negatives for best-of-k and the agent (label/negatives.py): each feature's nearest neighbours in its
-- dictionary (decoder cosine for SAE latents, activation correlation over the explain-split tokens for
-- neurons and planted features), and the explain-split contexts where a neighbour fires and the feature
-- does not. Computed once per dictionary from the stored sequences; holdout sequences are never read.
CREATE TABLE neighbour_runs (
    dictionary_id INTEGER PRIMARY KEY,
    measure       VARCHAR NOT NULL CHECK (measure IN ('decoder_cosine', 'activation_correlation')),
    n_sequences   INTEGER NOT NULL,   -- explain-split sequences read
    settings      JSON NOT NULL,      -- neighbours per feature, negatives per feature, firing rules
    created_at    TIMESTAMP NOT NULL DEFAULT current_timestamp
);

CREATE TABLE feature_neighbours (
    dictionary_id INTEGER NOT NULL,
    feature       INTEGER NOT NULL,
    rank          INTEGER NOT NULL,   -- 0: the nearest
    neighbour     INTEGER NOT NULL,
    similarity    DOUBLE NOT NULL,    -- the run's measure; only positive values are kept
    PRIMARY KEY (dictionary_id, feature, rank)
);

CREATE TABLE hard_negatives (
    dictionary_id INTEGER NOT NULL,
    feature       INTEGER NOT NULL,
    rank          INTEGER NOT NULL,   -- order shown to the explainer
    seq           BIGINT NOT NULL,    -- an explain-split sequence
    neighbour     INTEGER NOT NULL,   -- the neighbour that fires there
    neighbour_act DOUBLE NOT NULL,    -- the neighbour's max activation in the sequence
    peak          INTEGER NOT NULL,   -- the token position of that max
    feature_act   DOUBLE NOT NULL,    -- the feature's max activation in the sequence (level 0 on its scale)
    PRIMARY KEY (dictionary_id, feature, rank)
);

-- The temperature each candidate label was asked at (best-of-k varies it; NULL: not a candidate).
ALTER TABLE agent_steps ADD COLUMN temperature DOUBLE;
