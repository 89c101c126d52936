#!/usr/bin/env bash
# The main job on the embedded default: collect SmolLM2-135M's layer-6 MLP neurons over the
# offline corpus, then show what is in the database.
set -euo pipefail
cd "$(dirname "$0")/.."
DB=${AUTOINTERP_DB:-autointerp.duckdb}
TOKENS=${TOKENS:-100000}
A=.venv/bin/autointerp

$A collect --tokens "$TOKENS" --db "$DB"
echo; echo "\$ autointerp status"
$A status --db "$DB"
echo; echo "\$ autointerp sql \"SELECT feature, max_act, mean_act, frac_active FROM features ORDER BY max_act DESC LIMIT 5\""
$A sql "SELECT feature, max_act, mean_act, frac_active FROM features ORDER BY max_act DESC LIMIT 5" --db "$DB"
F=$($A sql "SELECT feature FROM features WHERE dictionary_id = (SELECT max(dictionary_id) FROM dictionaries) ORDER BY max_act DESC LIMIT 1" --db "$DB" --format csv | tail -1)
echo; echo "\$ autointerp show $F --kind top --limit 5"
$A show "$F" --kind top --limit 5 --db "$DB"
