# loraflow, CPU image: starts on the embedded defaults (bundled models, SQLite, FAISS).
# Build: docker build -t loraflow .   Run: docker run -p 8001:8001 -v loraflow-data:/data loraflow
FROM python:3.11-slim

# TORCH_INDEX_URL can point pip at a CPU-only wheel index to keep the image small.
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LORAFLOW_DATA_DIR=/data \
    API_HOST=0.0.0.0 \
    API_PORT=8001 \
    HF_HUB_OFFLINE=1 \
    GRADIO_ANALYTICS_ENABLED=False

WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY scripts ./scripts
COPY src ./src

# The llamacpp extra (the default LOCAL_ENGINE=hybrid's engine for lone requests, and
# LOCAL_ENGINE=llamacpp) is compiled here with
# portable flags (scripts/setup.sh); the compiler is removed again in the same layer, and
# libgomp1 (llama.cpp's OpenMP runtime) is installed explicitly so that removal keeps it.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libgomp1 \
    && python -m venv .venv \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         .venv/bin/pip install --index-url "$TORCH_INDEX_URL" "torch==2.13.0"; \
       fi \
    && LORAFLOW_EXTRAS=postgres,llamacpp,ray bash scripts/setup.sh \
    && apt-get purge -y --auto-remove build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && .venv/bin/python -c "import llama_cpp" \
    && useradd --create-home --uid 1000 loraflow \
    && mkdir -p /data && chown loraflow:loraflow /data

USER 1000
VOLUME ["/data"]
EXPOSE 8001
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s \
    CMD ["/app/.venv/bin/python", "-c", "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8001/health', timeout=8)"]
CMD ["/app/.venv/bin/loraflow", "serve"]
