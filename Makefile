# Two commands on a fresh machine:  `make train`  and  `make test`.
SHELL := /bin/bash
# Environment defaults (OMP_WAIT_POLICY=PASSIVE, telemetry off...) live in reinflow/run/environment.py;
# the CLI, the flows and tests/conftest.py apply them.
PYTEST_ARGS ?=

# GPU=1: also install vLLM from the GPU lock (constraints-gpu.txt), for `rollout.engine: vllm`.
GPU ?= 0

.PHONY: setup train train-quickstart demonstrations test test-slow reliability-report clean vllm-cpu-env test-vllm check-gpu-lock
setup:
	@GPU=$(GPU) bash scripts/setup.sh

# The main job: the tool-using math agent (configs/calculator_agent.yaml), CPU, offline: a warm
# start on the scripted solver's demonstrations, then GRPO on held-out-style multiplications.
DEMONSTRATIONS := data/calculator_agent/demonstrations.jsonl
train: setup $(DEMONSTRATIONS)
	.venv/bin/reinflow train --conf configs/calculator_agent.yaml

# The warm start's demonstrations (sums and differences: the form, not the task), written once.
demonstrations $(DEMONSTRATIONS): | setup
	@test -s $(DEMONSTRATIONS) || .venv/bin/python -m agents.math_demonstrations $(DEMONSTRATIONS)

# The fast one-call job (no tools): configs/quickstart.yaml.
train-quickstart: setup
	.venv/bin/reinflow train --conf configs/quickstart.yaml

# The fast suite (well under 15 minutes on 2 cores).
test: setup
	.venv/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

# End-to-end runs on real models; CI runs them after the fast suite. Exit 5 = none selected.
test-slow: setup
	.venv/bin/python -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The reliability battery (tests/reliability, slow cases included) and its table in docs/RELIABILITY.md.
RELIABILITY_TESTS ?= tests/reliability
reliability-report: setup
	REINFLOW_RELIABILITY_REPORT=docs/RELIABILITY.md .venv/bin/python -m pytest $(RELIABILITY_TESTS) -m "reliability" $(PYTEST_ARGS)

# The GPU lock resolves against the registry (a dry run: nothing installed; the registry's CUDA torch,
# not this machine's CPU build), and pins everything it would install. A pin change that breaks
# `make setup GPU=1` fails here (scripts/check_gpu_lock.py; about 30 s).
check-gpu-lock: setup
	.venv/bin/python scripts/check_gpu_lock.py

# vLLM's CPU build in a second environment (.venv-vllm/, built once), and the vLLM engine tests there
# (weights synced in memory, LoRA versions, a 2-iteration `reinflow train` on rollout.engine=vllm).
vllm-cpu-env:
	@bash scripts/vllm_cpu_env.sh

test-vllm: vllm-cpu-env
	.venv-vllm/bin/python -m pytest tests/test_vllm_engine.py $(PYTEST_ARGS)

# The seed tutorial's AgentScope 1.x agent's environment (.venv-agentscope1/, built once from
# constraints-agentscope1.txt); tests/test_seed_agentscope1_agent.py (make test-slow) builds it too.
.PHONY: agentscope1-env
agentscope1-env:
	@bash scripts/agentscope1_env.sh

clean:
	rm -rf .venv .venv-vllm data/quickstart data/calculator_agent runs .prefect-results
