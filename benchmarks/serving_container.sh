#!/usr/bin/env bash
# The container's install and entry command, run where no Docker daemon or base image exists:
# a fresh virtual environment (no system site-packages, so no torch) gets the Dockerfile's
# SERVE_DEPS and the wheel built from this checkout (--no-deps), then serves a read-only copy of
# an export folder with the Dockerfile's CMD (/models replaced by that copy), passes its
# HEALTHCHECK command, answers POST /predict, and stops on SIGTERM with exit code 0.
#
#   flock /tmp/heavy.lock bash benchmarks/serving_container.sh [EXPORT_DIR]
#
# EXPORT_DIR defaults to the pruned export benchmarks/serving.py writes. Takes ~1-2 min
# (package downloads), so it stays out of the test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
EXPORT="${1:-/tmp/lightning-accel-serving/pruned}"
WORK="$(mktemp -d /tmp/serving-container.XXXXXX)"
PORT="${PORT:-18600}"
trap 'chmod -R u+w "$WORK" 2>/dev/null; rm -rf "$WORK"' EXIT
started=$(date +%s)

deps=$(sed -n 's/^ARG SERVE_DEPS="\(.*\)"$/\1/p' "$ROOT/Dockerfile")
healthcheck=$(sed -n 's/^HEALTHCHECK .* CMD //p' "$ROOT/Dockerfile" | sed "s/:8000/:$PORT/")
[ -n "$deps" ] && [ -n "$healthcheck" ] || { echo "Dockerfile: SERVE_DEPS or HEALTHCHECK not found"; exit 1; }

echo "== wheel from the checkout"
"$ROOT/.venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheels" "$ROOT"
echo "== fresh venv (no system site-packages): $deps"
"$ROOT/.venv/bin/python" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
# shellcheck disable=SC2086
"$PY" -m pip install -q --disable-pip-version-check $deps
"$PY" -m pip install -q --disable-pip-version-check --no-deps "$WORK"/wheels/*.whl
cd "$WORK"  # not the checkout: the installed wheel is what runs
"$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
  || { echo "torch is installed in the serving venv"; exit 1; }
"$PY" -c "import sys, lightning_accel.serving; assert 'torch' not in sys.modules"

echo "== entry command on a read-only copy of $EXPORT"
cp -r "$EXPORT" "$WORK/models" && rm -f "$WORK/models/.lightning_accel.lock"
chmod -R a-w "$WORK/models"
"$PY" -m lightning_accel.cli.serve "$WORK/models" --host 0.0.0.0 --port "$PORT" &
SERVER=$!
for _ in $(seq 1 150); do
  if "$PY" -c "$(echo "$healthcheck" | sed -e 's/^python -c "//' -e 's/"$//')" 2>/dev/null; then break; fi
  sleep 0.2
done
"$PY" -c "$(echo "$healthcheck" | sed -e 's/^python -c "//' -e 's/"$//')" && echo "HEALTHCHECK passed"
"$PY" - "$PORT" "$WORK/models" <<'PYEOF'
import json, sys, urllib.request
port, models = sys.argv[1], sys.argv[2]
shape = json.load(open(f"{models}/manifest.json"))["inputs"][0]["shape"][1:]
body = json.dumps({"inputs": [[[[0.0] * shape[2]] * shape[1]] * shape[0]]}).encode()
request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body, {"content-type": "application/json"})
answer = json.load(urllib.request.urlopen(request, timeout=30))
print("POST /predict:", answer["predictions"][0][:2])
PYEOF
kill -TERM "$SERVER"
wait "$SERVER"; code=$?
echo "exit code after SIGTERM: $code; total $(( $(date +%s) - started )) s"
exit "$code"
