# Sourced by the tools/*.sh scripts: run from the project root, import histlib from this checkout (no install
# needed), unbuffered output, and the project's venv Python when there is one ($PYTHON overrides).
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
