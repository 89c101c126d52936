#!/usr/bin/env bash
# The main job on the embedded default, offline: collect SmolLM2-135M's layer-6 MLP neurons over the
# Python docs, label a few of them with SmolLM2-135M-Instruct (a local llama.cpp server) and score
# the labels by simulation, then show what is in the database.
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${AUTOINTERP_DB:-autointerp.duckdb}
TOKENS=${TOKENS:-100000}
LABEL=${LABEL:-0:4}
A=.venv/bin/autointerp

# Small prompts for the 135M model on 2 cores (~1 minute per labelled feature).
$A run --tokens "$TOKENS" --label-features "$LABEL" --explain-top 6 --explain-quantile 4 --sim-top 6 --sim-random 6 --judge-quiet 0.1 \
  --db "$DB"
echo; echo "\$ autointerp status"
$A status --db "$DB"
Q="SELECT feature, explainer, label, round(correlation_top_random, 3) AS corr, round(explained_variance, 3) AS ev, error FROM labels ORDER BY feature, explainer"
echo; echo "\$ autointerp sql \"$Q\""
$A sql "$Q" --db "$DB"
Q="SELECT role, count(*) AS calls, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, round(sum(cost_usd), 4) AS usd FROM llm_calls GROUP BY role"
echo; echo "\$ autointerp sql \"$Q\""
$A sql "$Q" --db "$DB"
F=$($A sql "SELECT feature FROM features WHERE dictionary_id = (SELECT max(dictionary_id) FROM dictionaries) ORDER BY max_act DESC LIMIT 1" --db "$DB" --format csv | tail -1)
echo; echo "\$ autointerp show $F --kind top --limit 5"
$A show "$F" --kind top --limit 5 --db "$DB"
