-- Roles stopped because their first replies were all unusable (label/roles.py): a later label run on
-- this database with the same endpoint and model does not ask them again, and says so in its summary;
-- `--retry-stopped-roles` asks them again. Rows are history: the newest row of an
-- (endpoint, model, role) decides, and a retry that got usable replies adds a row with stopped = false.
CREATE TABLE role_stops (
    endpoint   VARCHAR NOT NULL,   -- the endpoint(s) asked, credentials removed; 'embedded:llama.cpp' for the default
    model      VARCHAR NOT NULL,
    role       VARCHAR NOT NULL,   -- 'judge' (detection and fuzzing) or 'simulator'
    stopped    BOOLEAN NOT NULL,   -- false: a retry got usable replies, so the role is asked again
    replies    INTEGER NOT NULL,   -- replies counted (after their re-asks) when recorded
    usable     INTEGER NOT NULL,
    reason     VARCHAR NOT NULL,   -- the summary's line
    created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
