# syntax=docker/dockerfile:1
# Everything comes from this repository (`docker build .`, no other context): the EgoProceL timings the
# synthetic data rides on ship inside the package.
# Targets:
#   train    CPU PyTorch + onnxruntime (CPU); `docker run -v models:/models IMAGE` builds the default model
#            (synth -> train -> export) into /models unless one is already there.
#   service  NVIDIA CUDA runtime + onnxruntime-gpu ([serve-gpu]), no torch; runs on CPU where no GPU is present.
#   bundled  service with the default model and the web page's demo pack built in (no volume needed).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS train
# make drives the same pipeline as on a developer machine (make model)
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md Makefile ./
COPY configs ./configs
COPY src ./src
# torch's CPU build first (PyPI's Linux wheel is the multi-GB CUDA build), then the project with what
# `make model` runs (synth, train, export: [train]) and `make verify` checks against ([serve]: CPU onnxruntime)
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && make install PYTHON=python EXTRAS=train,serve
RUN useradd --create-home --uid 10001 progress && chown -R progress /app
USER 10001
VOLUME ["/models"]
CMD ["sh", "-c", "test -f /models/progress_head.onnx || (make model && cp models/progress_head.onnx /models/)"]

# ---------------------------------------------------------------------------------------------
FROM train AS model-builder
RUN make model models/demo/index.json

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS service
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# the server with onnxruntime-gpu ([serve-gpu]: FastAPI, uvicorn, Redis, picows, ...) and no torch
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "/src[serve-gpu]" \
    && useradd --create-home --uid 10001 progress \
    && mkdir -p /models /state \
    && chown progress /models /state
USER 10001
WORKDIR /home/progress
ENV PATH=/opt/venv/bin:$PATH \
    PROGRESS_MODEL_PATH=/models/progress_head.onnx \
    PROGRESS_DEMO_DIR=/models/demo \
    PROGRESS_HOST=0.0.0.0 \
    PROGRESS_PORT=8000
EXPOSE 8000
VOLUME ["/models", "/state"]
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["progress", "serve"]

# ---------------------------------------------------------------------------------------------
FROM service AS bundled
COPY --from=model-builder /app/models/progress_head.onnx /models/progress_head.onnx
COPY --from=model-builder /app/models/demo /models/demo
