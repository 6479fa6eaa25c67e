#!/usr/bin/env bash
# The main job: set up, then train, prune, export and compare ResNet-18 on Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/lightning-accel fit "$@"
