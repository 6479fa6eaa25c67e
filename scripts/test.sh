#!/usr/bin/env bash
# The test suite: set up, then run pytest (CPU only; GPU-only tests skip with a reason).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
