#!/usr/bin/env bash
# The test suite: unit (tiny model built from a config, seconds) and integration (the real SmolLM2,
# offline). Pass pytest arguments through, e.g. scripts/test.sh -m "not integration".
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check autointerp tests bench
.venv/bin/mypy
.venv/bin/lint-imports
exec .venv/bin/python -m pytest -q "$@"
