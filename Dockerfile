# syntax=docker/dockerfile:1
# Targets:
#   train    CPU PyTorch; `docker run -v models:/models -v ANNOTATIONS_DIR:/annotations:ro IMAGE` builds the
#            default model (synth -> train -> export) into /models unless one is already there.
#   service  NVIDIA CUDA runtime + onnxruntime-gpu, no torch; runs on CPU where no GPU is present.
#   bundled  service with the default model built in (no volume needed); needs the annotations as a
#            named build context: docker build --build-context annotations=../shared/data --target bundled .

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
COPY training ./training
COPY model_export ./model_export
COPY service ./service
COPY client ./client
COPY cli ./cli
# torch's CPU build first (PyPI's Linux wheel is the multi-GB CUDA build), then the project with [train]
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && make install PYTHON=python
RUN useradd --create-home --uid 10001 progress && chown -R progress /app
USER 10001
ENV ANNOTATIONS=/annotations/egoprocel.json
VOLUME ["/models"]
CMD ["sh", "-c", "test -f /models/progress_head.onnx || (make model ANNOTATIONS=$ANNOTATIONS && cp models/progress_head.onnx /models/)"]

# ---------------------------------------------------------------------------------------------
FROM train AS model-builder
COPY --from=annotations --chown=10001 egoprocel.json /annotations/egoprocel.json
RUN make model models/demo/index.json ANNOTATIONS=/annotations/egoprocel.json

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS service
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY training ./training
COPY model_export ./model_export
COPY service ./service
COPY client ./client
COPY cli ./cli
# the base dependencies only: onnxruntime-gpu, FastAPI, uvicorn, ... and no torch
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /src \
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
