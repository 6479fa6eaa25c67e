#!/usr/bin/env bash
# Idempotent set-up: a virtual environment in .venv with the package, its extras and the data.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import lightning_accel, torchvision, sklearn, pytest, sweeps, openvino, litserve, prometheus_client, PIL, httpx, matplotlib, onnxconverter_common" 2>/dev/null; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[zoo,dev,openvino,serve,plots]"
  # W&B's sweep engine (Bayesian search in local sweeps): its metadata pins numpy<2, yet it runs
  # with numpy 2, so it goes in without its pins; its other needs come with the dev extra.
  .venv/bin/python -m pip install -q --no-deps "sweeps==0.3.0"
fi

# Fashion-MNIST comes from Debian's package; it is never downloaded at run time.
if [ -z "${LIGHTNING_ACCEL_FASHION_MNIST:-}" ] \
   && [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq dataset-fashion-mnist
  else
    echo "Fashion-MNIST not found: put its IDX files in a folder and set LIGHTNING_ACCEL_FASHION_MNIST" >&2
  fi
fi
