"""The store: the only package with SQL, and (in `db` and `sandbox`) the only importers of duckdb. Other modules call
these named functions with typed records; none builds SQL.

- `db`: connections, migrations, transactions, Arrow inserts
- `sandbox`: user SQL (the sandbox, one-SELECT checks, timeouts) and `--where` conditions
- `collection`: dictionaries, features and contexts (what collect writes)
- `work`: the label and behaviour queues and their typed writes
- `batches`: Batch API runs and batch files (the `batches` table, atomic ingestion)
- `planted`: planted dictionaries' truth and the scores `check-llm` reads
- `agent`: the labelling agent's steps
- `roles`: roles stopped for unusable replies, remembered across runs
- `neighbours`: nearest neighbours and hard negatives per dictionary
- `reads`: status, compare, export and report reads
"""

from autointerp.store.agent import (
    add_agent_step,
    add_output_tokens,
    agent_steps,
    has_output_tokens,
    output_tokens,
)
from autointerp.store.batches import (
    BatchRow,
    add_batches,
    batch_failures,
    finish_group,
    get_batch,
    group_batches,
    list_batches,
    open_batches,
    record_cancel,
    update_batch,
)
from autointerp.store.collection import (
    DictionaryRow,
    begin_dictionary,
    complete_dictionary,
    delete_dictionary,
    feature_contexts,
    feature_stats,
    feature_summaries,
    find_dictionary,
    get_dictionary,
    list_dictionaries,
    read_feature_contexts,
)
from autointerp.store.db import (
    LOCK_WAIT_S,
    Connection,
    DBError,
    Migration,
    applied_migrations,
    check_schema,
    insert_rows,
    known_migrations,
    lock_holder,
    migrate,
    open_store,
    transaction,
)
from autointerp.store.neighbours import (
    HardNegative,
    add_neighbours,
    explain_sequences,
    feature_max_acts,
    hard_negatives,
    has_neighbours,
)
from autointerp.store.planted import (
    LabelScore,
    RoleUsage,
    TruthRow,
    add_planted_truth,
    call_usage,
    planted_dictionaries,
    planted_scores,
    planted_truth,
    scorable_features,
)
from autointerp.store.reads import (
    LabelScores,
    SchemaObject,
    ScoreValue,
    Table,
    dictionary_status,
    label_scores,
    labels_arrow_schema,
    labels_columns,
    labels_table,
    llm_usage,
    schema_objects,
    score_values,
    summary_table,
)
from autointerp.store.results import (
    Bundle,
    GainPending,
    PendingScore,
    SimulationRunRef,
    add_scores,
    behaviour_pending,
    explained_features,
    feature_mean,
    gain_pending,
    insert_bundles,
    null_explanations,
    ok_labels,
    simulated_contexts,
    simulated_contexts_of,
    unscored_explanations,
    write_bundles,
)
from autointerp.store.roles import RoleStop, add_role_stops, role_stops
from autointerp.store.sandbox import (
    check_where,
    query,
    sandbox,
    select_features,
    unique_columns,
    user_query,
)

__all__ = [
    "add_agent_step", "add_output_tokens", "agent_steps", "has_output_tokens", "output_tokens",
    "BatchRow", "add_batches", "batch_failures", "finish_group", "get_batch", "group_batches", "list_batches",
    "open_batches", "record_cancel", "update_batch",
    "LOCK_WAIT_S", "Bundle", "Connection", "DBError", "DictionaryRow", "LabelScores", "Migration", "PendingScore",
    "ScoreValue", "SimulationRunRef", "Table", "applied_migrations", "begin_dictionary", "behaviour_pending",
    "check_schema", "complete_dictionary", "delete_dictionary", "dictionary_status", "explained_features",
    "feature_contexts", "feature_mean", "feature_stats", "feature_summaries", "find_dictionary", "get_dictionary", "insert_rows",
    "known_migrations", "label_scores", "labels_arrow_schema", "labels_columns", "labels_table", "list_dictionaries", "llm_usage", "lock_holder", "migrate",
    "null_explanations", "ok_labels", "open_store", "query", "read_feature_contexts", "sandbox", "score_values",
    "select_features", "simulated_contexts", "simulated_contexts_of", "summary_table", "transaction", "unscored_explanations", "user_query",
    "write_bundles", "GainPending", "add_scores", "gain_pending", "SchemaObject", "schema_objects",
    "LabelScore", "RoleUsage", "TruthRow", "add_planted_truth", "call_usage", "scorable_features", "planted_dictionaries",
    "planted_scores", "planted_truth",
    "check_where", "unique_columns", "insert_bundles", "RoleStop", "add_role_stops", "role_stops",
    "check_where", "unique_columns",
    "HardNegative", "add_neighbours", "explain_sequences", "feature_max_acts", "hard_negatives", "has_neighbours",
]
