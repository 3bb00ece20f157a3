"""The engine comparison of bench/rollout_engine.py (``--engine`` other than ``hf``): the same
episodes through the `hf` engine, the `vllm` engine and llama.cpp in turns, each engine's start-up
apart, the decode floor measured around each round where the `hf` engine is in the run, and the
table of tokens/s with the vllm/hf and hf/llama.cpp ratios.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from reinflow.config.models import SMOLLM2, smollm2_gguf_path
from reinflow.engines.base import Engine, SamplingParams
from reinflow.engines.factory import create_engine
from reinflow.engines.vllm import require_vllm
from reinflow.errors import EngineUnavailableError, one_line

from decode_floor import linear_floor
from episode_batch import Turn
from llama_cpp_engine import LlamaCppBatch, require_llama_cpp
from rollout_requests import FollowUp, Request, Result, run_streams


COMPARED = {"hf": ["hf"], "vllm": ["vllm"], "both": ["hf", "vllm"], "llama.cpp": ["hf", "llama.cpp"],
            "all": ["hf", "vllm", "llama.cpp"]}
"""The engines each ``--engine`` choice runs (``hf`` alone: every mode; the others: the episodes)."""


def check_engines(args) -> None:
    """SystemExit, saying what to install, where a chosen engine is missing; sets ``args.gguf``."""
    kinds = COMPARED[args.engine]
    if "vllm" in kinds:
        try:
            require_vllm()
        except EngineUnavailableError as error:
            raise SystemExit(f"error: {error}") from None
    if "llama.cpp" in kinds:
        require_llama_cpp()
        if args.gguf is None and args.model != SMOLLM2:
            raise SystemExit("error: --engine llama.cpp with --model other than the built-in one needs --gguf")
        args.gguf = args.gguf or smollm2_gguf_path()


def stop_ids(folder: Path) -> list[int]:
    """The ids that end a turn, as the `hf` engine reads them: the generation config's EOS."""
    from transformers import GenerationConfig

    eos = GenerationConfig.from_pretrained(folder).eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


@dataclass(frozen=True)
class EngineRun:
    """One engine's start-up and its rounds of the episodes mode (and the decode floor's tokens/s
    around each round, where it is measured)."""

    startup_seconds: float
    rounds: list[Result]
    floors: list[float] = field(default_factory=list)

    @property
    def floor_ratio(self) -> float | None:
        """Tokens/s over all rounds / the mean floor around them."""
        return self.total.tokens_per_second * len(self.floors) / sum(self.floors) if self.floors else None

    @property
    def total(self) -> Result:
        return Result(sum(r.tokens for r in self.rounds), sum(r.seconds for r in self.rounds))


async def start_engine(kind: str, folder: Path, prompt_ids: list[int], args) -> tuple[Engine, float]:
    """An engine of ``kind`` and the seconds to build it and answer a 4-token warm-up request."""
    started = time.perf_counter()
    if kind == "llama.cpp":
        engine = LlamaCppBatch(args.gguf, max_sequences=args.streams, threads=args.threads)
        engine.run_episodes([[Turn(prompt_ids, max_new_tokens=4)]], args.stop_ids, lambda prompt, output: prompt)
        print(f"  llama.cpp on {args.gguf.name}: {engine.describe()}", flush=True)
        return engine, time.perf_counter() - started
    engine = create_engine(kind, folder, dtype=args.dtype, max_model_len=2048, max_batch_size=args.streams,
                           device=args.device, vllm_memory_fraction=args.vllm_memory_fraction)
    await engine.generate(prompt_ids, SamplingParams(max_new_tokens=4, temperature=1.0, top_p=1.0))
    return engine, time.perf_counter() - started


async def run_episodes(engine: Engine | LlamaCppBatch, streams: list[list[Request]], follow_up: FollowUp,
                       stop_ids: list[int]) -> Result:
    """One round of episodes through an engine, or through llama.cpp (the same turns, all at once)."""
    if isinstance(engine, LlamaCppBatch):
        episodes = [[Turn(r.prompt_ids, r.sampling.max_new_tokens, r.sampling.temperature, r.sampling.seed or 0)
                     for r in stream] for stream in streams]
        run = engine.run_episodes(episodes, stop_ids, follow_up.extend)
        return Result(run.tokens, run.seconds)
    return await run_streams(engine, streams, follow_up)


async def compare_engines(kinds: list[str], folder: Path, tokenizer, rounds: list[list[list[Request]]],
                          args) -> tuple[dict[str, EngineRun], dict[str, str]]:
    """Every engine of ``kinds`` started, then each round's episodes through each engine in turn
    (between two decode-floor passes when ``args.floor_model`` is set). Returns the runs, and the
    one-line error of each engine that could not start."""
    follow_up = FollowUp.of(tokenizer)
    floor = (lambda: linear_floor(args.floor_model, args.streams, args.floor_passes)) if args.floor_model else None
    engines: dict[str, Engine] = {}
    runs: dict[str, EngineRun] = {}
    failed: dict[str, str] = {}
    for kind in kinds:
        print(f"starting the {kind} engine", flush=True)
        try:
            engines[kind], startup = await start_engine(kind, folder, rounds[0][0][0].prompt_ids, args)
        except Exception as error:  # reported in the table; the other engine still runs
            failed[kind] = f"{type(error).__name__}: {one_line(error)}"
            print(f"  the {kind} engine could not start: {failed[kind]}", flush=True)
            continue
        runs[kind] = EngineRun(startup, [])
        print(f"  started in {startup:.1f}s (load average {os.getloadavg()[0]:.2f})", flush=True)
    before = floor() if floor else None
    try:
        for index, streams in enumerate(rounds):
            for kind, engine in engines.items():
                result = await run_episodes(engine, streams, follow_up, args.stop_ids)
                runs[kind].rounds.append(result)
                if floor:
                    after = floor()
                    runs[kind].floors.append(args.streams / min(before, after))
                    before = after
                print(f"round {index + 1}/{len(rounds)} {kind:<9} {result.tokens:>6} tokens {result.seconds:7.1f}s "
                      f"{result.tokens_per_second:7.1f} tok/s (load average {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        for engine in engines.values():
            await engine.close()
    return runs, failed


def print_comparison(runs: dict[str, EngineRun], failed: dict[str, str], rows: int, turns: int) -> None:
    """Each engine's start-up, tokens, seconds and tokens/s over all rounds (its best round, and
    the ratio to the decode floor where measured), the vllm/hf and the hf/llama.cpp ratios."""
    label = f"{rows} episodes x {turns} turns"
    print(f"\n{'engine (' + label + ')':<34} {'start-up s':>10} {'tokens':>7} {'s':>7} {'tok/s':>7} {'best':>7}"
          + (f" {'/ (b)':>6}" if any(run.floors for run in runs.values()) else ""))
    for kind, run in runs.items():
        total, best = run.total, max(r.tokens_per_second for r in run.rounds)
        print(f"{kind:<34} {run.startup_seconds:>10.1f} {total.tokens:>7} {total.seconds:>7.1f} "
              f"{total.tokens_per_second:>7.1f} {best:>7.1f}" + (f" {run.floor_ratio:>6.2f}" if run.floors else ""))
    for kind, error in failed.items():
        print(f"{kind:<34} could not start: {error}")
    for top, bottom in (("vllm", "hf"), ("hf", "llama.cpp")):
        if top in runs and bottom in runs:
            ratio = runs[top].total.tokens_per_second / runs[bottom].total.tokens_per_second
            each = ", ".join(f"{t.tokens_per_second / b.tokens_per_second:.2f}"
                             for t, b in zip(runs[top].rounds, runs[bottom].rounds))
            print(f"{top} / {bottom} tokens/s: {ratio:.2f} (each round: {each}); start-up is not in the tokens/s")
    if any(run.floors for run in runs.values()):
        floors = [f for run in runs.values() for f in run.floors]
        print(f"(b) decode floor (all nn.Linear at batch {rows}, fp32): {min(floors):.1f}..{max(floors):.1f} tok/s "
              "over the run; / (b) is against the mean floor around each engine's rounds")
