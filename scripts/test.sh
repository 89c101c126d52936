#!/usr/bin/env bash
# Lint, types, the docs' check and build, then the test suite: unit (tiny model built from a config, seconds) and integration (the real SmolLM2,
# offline). Pass pytest arguments through, e.g. scripts/test.sh -m "not integration".
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check autointerp tests bench scripts
.venv/bin/mypy
.venv/bin/lint-imports
# The docs: generated reference pages equal what the code makes now; the site builds with no broken link.
.venv/bin/python scripts/gen_docs.py --check
SITE=$(mktemp -d)
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$SITE"
rm -rf "$SITE"
# Two workers (the machine's 2 cores: most tests wait on a subprocess, a server or the 135M model on one core), each
# taking whole files so a module's fixtures are built once; the slow files are collected first, so they start first.
# The slowest tests are listed at the end, so a run says where its minutes went.
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile --durations=25 "$@"
