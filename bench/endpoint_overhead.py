"""The OpenAI-compatible endpoint's overhead per LLM call against the in-process ``TunedModel``.

    .venv/bin/python bench/endpoint_overhead.py                   # the built-in SmolLM2-135M, CPU
    .venv/bin/python bench/endpoint_overhead.py --model builtin:tiny-random-llama --rounds 2

Both modes run the same 16 concurrent episodes on one ``hf`` engine: each episode is a chat of
``--turns`` LLM calls (a GSM8K-style question, then "Check your answer." after every reply), at
temperature 1 with a fixed seed per episode and turn, so both modes sample the same tokens (but for
rare float-rounding differences between batch compositions).

- **in-process**: each episode calls ``TunedModel.generate_turn`` directly (the path every
  AgentScope call of an in-process workflow takes, without the agent's own work);
- **endpoint**: each episode is opened on a real endpoint (uvicorn on loopback) and driven by its
  own thread with the OpenAI SDK (``chat.completions.create``, the SDK's message object sent back
  as it came): HTTP, JSON, validation, the hop between the server's and the rollout's event loops.
  The client threads share this process's GIL (an agent in its own process would not).

The modes alternate for ``--rounds`` rounds after one warm-up round of each; the table shows each
mode's median generated tokens/s and tokens per CPU second of this process (on a shared machine
the wall clock follows the other jobs; the CPU time this process spends does much less), and the
ratios endpoint / in-process (the goal: at least 0.90).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import asyncio
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from openai import OpenAI
from transformers import AutoTokenizer

from reinflow.config import EndpointConfig
from reinflow.config.models import SMOLLM2, resolve_model
from reinflow.endpoint.server import EndpointServer
from reinflow.engines.hf import HFEngine
from reinflow.rollout.tuned_model import TunedModel
from reinflow.rollout.workflow import Task

EPISODES = 16
SYSTEM = "You are a math assistant. Think step by step, then give the answer."
QUESTIONS = [
    "A baker makes 24 muffins and sells 3 boxes of 5. How many muffins are left?",
    "Tom reads 12 pages a day. How many pages does he read in 3 weeks?",
    "A train travels 60 km per hour for 2.5 hours. How far does it go?",
    "Sara has $40 and buys two books at $7.50 each. How much money does she have left?",
]
FOLLOW_UP = "Check your answer."


def first_messages(k: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}]


def new_models(engine: HFEngine, tokenizer, args: argparse.Namespace) -> list[TunedModel]:
    return [TunedModel(engine, tokenizer, max_model_len=2048, max_new_tokens_per_turn=args.max_new_tokens,
                       temperature=1.0, seed=k) for k in range(EPISODES)]


async def in_process(models: list[TunedModel], turns: int) -> None:
    async def episode(model: TunedModel, k: int) -> None:
        chat = first_messages(k)
        for _ in range(turns):
            turn, _ = await model.generate_turn(chat, [])
            chat = [*chat, {"role": "assistant", "content": turn.response_text}, {"role": "user", "content": FOLLOW_UP}]

    await asyncio.gather(*(episode(model, k) for k, model in enumerate(models)))


async def via_endpoint(models: list[TunedModel], turns: int, server: EndpointServer) -> None:
    def agent(base_url: str, k: int) -> None:
        client, messages = OpenAI(base_url=base_url, api_key=server.token, max_retries=0), first_messages(k)
        for _ in range(turns):
            reply = client.chat.completions.create(model="policy", messages=messages)
            messages += [reply.choices[0].message, {"role": "user", "content": FOLLOW_UP}]

    async def episode(model: TunedModel, k: int, threads: ThreadPoolExecutor) -> None:
        opened = server.registry.open(model, Task(f"t-{k}", QUESTIONS[k % len(QUESTIONS)], None))
        try:
            await asyncio.get_running_loop().run_in_executor(threads, agent, server.base_url(opened), k)
        finally:
            server.registry.close(opened)

    with ThreadPoolExecutor(max_workers=EPISODES) as threads:  # one agent thread per episode, all at once
        await asyncio.gather(*(episode(model, k, threads) for k, model in enumerate(models)))


def measure(mode: str, engine: HFEngine, tokenizer, server: EndpointServer,
            args: argparse.Namespace) -> tuple[float, float]:
    """(generated tokens per wall second, per CPU second of this process) of one round of ``mode``."""
    models = new_models(engine, tokenizer, args)
    started, cpu_started = time.perf_counter(), time.process_time()
    runner = in_process(models, args.turns) if mode == "in-process" else via_endpoint(models, args.turns, server)
    asyncio.run(runner)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    tokens = sum(len(turn.output_ids) for model in models for turn in model.turns)
    print(f"  {mode:<11} {tokens:>6} tokens in {seconds:6.2f} s = {tokens / seconds:7.1f} tokens/s; "
          f"{cpu_seconds:6.2f} CPU s = {tokens / cpu_seconds:7.1f} tokens/CPU s", flush=True)
    return tokens / seconds, tokens / cpu_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=SMOLLM2, help="a model path reinflow resolves (default: the built-in SmolLM2)")
    parser.add_argument("--turns", type=int, default=3, help="LLM calls per episode")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="most tokens per call")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds of each mode")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
          f"model {args.model}; {EPISODES} episodes x {args.turns} calls x <= {args.max_new_tokens} tokens")
    folder = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    engine = HFEngine(folder, max_model_len=2048, max_batch_size=EPISODES, device="cpu")
    server = EndpointServer(EndpointConfig())
    server.start()
    try:
        print("warm-up")
        for mode in ("in-process", "endpoint"):
            measure(mode, engine, tokenizer, server, args)
        results: dict[str, list[tuple[float, float]]] = {"in-process": [], "endpoint": []}
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}")
            for mode in (("in-process", "endpoint") if round_index % 2 == 0 else ("endpoint", "in-process")):
                results[mode].append(measure(mode, engine, tokenizer, server, args))
    finally:
        server.stop()
        asyncio.run(engine.close())
    wall = {mode: statistics.median(value[0] for value in values) for mode, values in results.items()}
    cpu = {mode: statistics.median(value[1] for value in values) for mode, values in results.items()}
    print("\n| mode | median tokens/s | median tokens per CPU second |\n|---|---:|---:|")
    for mode in results:
        print(f"| {mode} | {wall[mode]:.1f} | {cpu[mode]:.1f} |")
    ratio, cpu_ratio = wall["endpoint"] / wall["in-process"], cpu["endpoint"] / cpu["in-process"]
    print(f"\nendpoint / in-process throughput ratio: {ratio:.3f} ({(1 - ratio) * 100:.1f}% fewer tokens/s through the "
          f"endpoint); per CPU second: {cpu_ratio:.3f} ({(1 - cpu_ratio) * 100:.1f}% more CPU per token)")


if __name__ == "__main__":
    main()
