#!/usr/bin/env bash
# Build and run the serving image with Docker on a machine where no image registry is reachable:
# the `python:3.11-slim` base is stood in for by a Debian bookworm root built with debootstrap
# (Python 3.11 in a venv on PATH) and `docker import`ed under that tag; then the repository's
# Dockerfile is built unchanged, run on an export folder, health-checked, asked for one
# prediction and stopped with SIGTERM (docker stop). Needs root, docker.io, debootstrap and a
# running dockerd (as root: apt-get install docker.io debootstrap; dockerd &).
#
#   sudo bash benchmarks/serving_docker.sh EXPORT_DIR
set -euo pipefail
export_dir=$(realpath "${1:?usage: serving_docker.sh EXPORT_DIR (holding model.onnx and manifest.json)}")
cd "$(dirname "$0")/.."
port=${PORT:-8000}

if ! docker image inspect python:3.11-slim >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
    "$rootfs" http://deb.debian.org/debian >/dev/null
  chroot "$rootfs" python3 -m venv /opt/python
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' - python:3.11-slim >/dev/null
  rm -rf "$rootfs"
fi

started=$(date +%s)
docker build --network host -t lightning-accel-serve . >/dev/null
echo "built lightning-accel-serve in $(( $(date +%s) - started )) s: $(docker image inspect lightning-accel-serve --format '{{.Size}}') bytes"

docker rm -f lightning-accel-serve-check >/dev/null 2>&1 || true
chmod -R a+rX "$export_dir"
docker run -d --name lightning-accel-serve-check --network host -v "$export_dir:/models:ro" \
  lightning-accel-serve /models --host 127.0.0.1 --port "$port" >/dev/null
trap 'docker rm -f lightning-accel-serve-check >/dev/null 2>&1 || true' EXIT
status=starting
for second in $(seq 1 60); do
  sleep 1
  status=$(docker inspect --format '{{.State.Health.Status}}' lightning-accel-serve-check)
  [ "$status" = healthy ] && break
done
# the HEALTHCHECK asks port 8000; on another port it cannot turn healthy, so ask /health here
curl -sf "http://127.0.0.1:$port/health" >/dev/null
echo "health: $status after ${second} s; /health answers"

# one all-zero sample of the manifest's input shape, as JSON
body=$(python3 -c "
import json, sys
shape = json.load(open(sys.argv[1]))['inputs'][0]['shape'][1:]
def zeros(dims): return 0.0 if not dims else [zeros(dims[1:]) for _ in range(dims[0])]
print(json.dumps([zeros(shape)]))" "$export_dir/manifest.json")
curl -sf -X POST "http://127.0.0.1:$port/predict" -H 'content-type: application/json' \
  --data-binary "$body" | python3 -c "import json, sys; p = json.load(sys.stdin)['predictions'][0]; print('top-1:', p[0])"

docker stop lightning-accel-serve-check >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' lightning-accel-serve-check)
echo "docker stop (SIGTERM): exit code $code"
[ "$code" = 0 ]
