#!/usr/bin/env bash
# The main job on the embedded default, offline: collect SmolLM2-135M's layer-6 MLP neurons over the
# Python docs, label a few of them with SmolLM2-135M-Instruct (a local llama.cpp server) and score
# the labels by simulation beside their nulls, then show what is in the database.
#   scripts/demo.sh          30k tokens in contexts of 32, 2 features: the first labelled feature is printed as soon
#                            as it is done
#   scripts/demo.sh --long   100k tokens in contexts of 64, 4 features (the longer demo)
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${AUTOINTERP_DB:-autointerp.duckdb}
if [ "${1:-}" = "--long" ]; then
  TOKENS=${TOKENS:-100000}; LAST=${LAST:-4}; CTX=64
else
  # Contexts of 32: each simulated context is a prompt line per token, read at ~100 tokens/s by the 135M model on
  # 2 cores, so shorter contexts halve the labelling time.
  TOKENS=${TOKENS:-30000}; LAST=${LAST:-2}; CTX=32
fi
A=${AUTOINTERP:-.venv/bin/autointerp}
# Small prompts for the 135M model on 2 cores.
OPTS=(--explain-top 6 --explain-quantile 4 --sim-top 6 --sim-random 6 --judge-quiet 0.1 --db "$DB")
LABELS="SELECT feature, explainer, label, round(correlation_top_random, 3) AS corr, round(explained_variance, 3) AS ev, error FROM labels"

# The first feature alone: collected, labelled, scored beside its baseline and null labels, and shown.
$A run --tokens "$TOKENS" --ctx-len "$CTX" --label-features 0:1 "${OPTS[@]}"
Q="$LABELS WHERE feature = 0 ORDER BY explainer"
echo; echo "\$ autointerp sql \"$Q\""
$A sql "$Q" --db "$DB"

if [ "$LAST" -gt 1 ]; then
  echo; echo "\$ autointerp label --features 1:$LAST"
  $A label --features "1:$LAST" "${OPTS[@]}"
  # Behaviour for the labels made since the first feature, the null labels among them, so that every row of
  # status has its behaviour score beside its nulls'.
  echo; echo "\$ autointerp behaviour"
  $A behaviour --db "$DB"
fi
echo; echo "\$ autointerp status"
$A status --db "$DB"
Q="$LABELS ORDER BY feature, explainer"
echo; echo "\$ autointerp sql \"$Q\""
$A sql "$Q" --db "$DB"
Q="SELECT role, count(*) AS calls, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens, round(sum(cost_usd), 4) AS usd FROM llm_calls GROUP BY role"
echo; echo "\$ autointerp sql \"$Q\""
$A sql "$Q" --db "$DB"
F=$($A sql "SELECT feature FROM features WHERE dictionary_id = (SELECT max(dictionary_id) FROM dictionaries) ORDER BY max_act DESC LIMIT 1" --db "$DB" --format csv | tail -1)
echo; echo "\$ autointerp show $F --kind top --limit 5"
$A show "$F" --kind top --limit 5 --db "$DB"
