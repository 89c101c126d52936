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
# Two workers (the machine's 2 cores), each taking whole files so a module's fixtures are built once, in the order
# tests/conftest.py sets (the slow files first, so they start at once; xdist's reordering by file size is off). With
# more than one worker each runs one thread (OMP_NUM_THREADS, which torch and the embedded llama.cpp read): two
# threads per worker on two cores only contend. The slowest tests are listed at the end.
WORKERS=${PYTEST_WORKERS:-2}
if [ "$WORKERS" != 1 ] && [ "$WORKERS" != 0 ]; then export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}; fi
exec .venv/bin/python -m pytest -q -n "$WORKERS" --dist loadfile --no-loadscope-reorder --durations=25 "$@"
