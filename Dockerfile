# The runtime container of lightning-accel: serves an export folder with LitServe on ONNX Runtime.
# CPU-only and torch-free: the image holds the runtime, the serving dependencies and the
# package (installed --no-deps), not PyTorch or Lightning.
#
#   docker build -t lightning-accel-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/export:/models:ro" lightning-accel-serve
#   curl -X POST localhost:8000/predict -H 'content-type: image/png' --data-binary @shirt.png
#
# benchmarks/serving_docker.sh builds and runs it where no image registry is reachable (a local
# stand-in for the python:3.11-slim base); benchmarks/serving_container.sh runs the same install
# and entry command in a fresh virtual environment where there is no Docker (docs/serving.md).

FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lightning_accel ./lightning_accel
COPY recipes ./recipes
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
# What `import lightning_accel.serving` needs at run time (kept in step with pyproject's
# dependencies and its `serve` extra, minus torch, lightning and the training stack).
ARG SERVE_DEPS="numpy onnx>=1.17 onnxruntime>=1.20 litserve>=0.2.19,<0.3 prometheus-client>=0.20 pillow>=10 orjson>=3.9 lightning-utilities filelock>=3.12"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir $SERVE_DEPS \
 && pip install --no-cache-dir --no-deps /wheels/*.whl \
 && rm -rf /wheels \
 && python -c "import sys, lightning_accel.serving; assert 'torch' not in sys.modules" \
 && useradd --create-home --uid 10001 serve
USER serve
WORKDIR /home/serve
# Mount (or COPY) the export folder here: model.onnx + manifest.json; read-only is fine.
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 CMD python -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"
# SIGTERM (docker stop) shuts down gracefully: in-flight requests finish, workers stop.
ENTRYPOINT ["python", "-m", "lightning_accel.cli.serve"]
CMD ["/models", "--host", "0.0.0.0", "--port", "8000"]
