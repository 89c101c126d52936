-- The labelling agent's steps (label/agent.py): every candidate label with its calibration score, every
-- probe the explainer wrote with the subject's real activations on it, every revision, and the choice.
-- A feature's steps under one explainer and one set of strategy settings are one agent run; a killed
-- run resumes from its stored steps, asking nothing twice.
CREATE TABLE agent_steps (
    dictionary_id     INTEGER NOT NULL,
    feature           INTEGER NOT NULL,
    explainer         VARCHAR NOT NULL,   -- the explainer model
    strategy          VARCHAR NOT NULL CHECK (strategy IN ('best-of-k', 'agent')),
    settings_hash     VARCHAR NOT NULL,   -- the strategy's settings (k, rounds, probes, simulator, prompts)
    step              INTEGER NOT NULL,   -- order in the run, from 0
    round             INTEGER NOT NULL,   -- 0: the candidates; 1..: probe-and-revise rounds
    kind              VARCHAR NOT NULL CHECK (kind IN ('candidate', 'probe', 'revision', 'choice')),
    status            VARCHAR NOT NULL CHECK (status IN ('ok', 'failed')),
    text              VARCHAR,            -- the label (candidate, revision, choice) or the probe texts
    prompt            VARCHAR,            -- the explainer's request as sent (its last user message)
    activations       JSON,               -- probes: [{text, expect, tokens, acts, cut}], the subject's real values
    calibration_score DOUBLE,             -- the label's correlation on the calibration contexts only
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    code              VARCHAR,            -- a failed step's failure code
    error             VARCHAR,
    explanation_id    VARCHAR,            -- the choice: the explanation it became
    created_at        TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (dictionary_id, feature, explainer, settings_hash, step)
);

-- Output-side evidence (models/output.py): the tokens each feature of a model's dictionary promotes and
-- suppresses through the unembedding, computed once per dictionary when best-of-k or the agent first
-- needs it, and shown to their explainer. Planted dictionaries have none (no model).
CREATE TABLE output_tokens (
    dictionary_id INTEGER NOT NULL,
    feature       INTEGER NOT NULL,
    direction     VARCHAR NOT NULL CHECK (direction IN ('promotes', 'suppresses')),
    rank          INTEGER NOT NULL,   -- 0: the strongest
    token_id      INTEGER NOT NULL,
    token         VARCHAR NOT NULL,
    value         DOUBLE NOT NULL,    -- the direct-logit value (the final layer norm left out)
    PRIMARY KEY (dictionary_id, feature, direction, rank)
);
