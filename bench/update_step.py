"""Policy-update benchmark on the built-in model (SmolLM2-135M-Instruct, fp32, CPU, 2 threads).

    .venv/bin/python bench/update_step.py            # ~4 minutes on 2 cores

One GRPO update step (``PolicyTrainer.train_step``: forward, GRPO loss, backward, clip, AdamW)
on a batch of 8 episodes x 256 tokens (64 prompt tokens, 192 generated and trained), for full
fine-tuning and LoRA (rank 16 on every linear layer), each in its own subprocess so that its peak
memory is its own. Reported per configuration:

- seconds per step (best and median of ``--steps`` after ``--warmup`` untimed steps), tokens/s
  (``8 * 256`` sequence tokens per step / best seconds), and the process CPU seconds per step
  (with the 1-minute load average: on a shared machine the wall time is inflated, the CPU time
  much less);
- peak RSS: ``ru_maxrss`` of the subprocess (model load included) and the peak of a 20 ms
  ``psutil`` RSS sampler running during the timed steps;
- model FLOP utilisation: ``6 * parameters * tokens / step seconds / peak``, where ``peak`` is the
  fp32 matmul peak of this machine measured in the same command (best GFLOP/s of large square
  ``torch.mm``s before, between and after the runs: the machine may be shared, the best run is
  the least disturbed). ``MFU same load`` divides instead by a peak measured right before each timed step,
  inside the worker (on a shared machine, the denominator under the same load as the step).
  ``parameters`` counts every weight of the model (tied embeddings once). For LoRA
  the same formula is printed for comparison, although it needs only ~4/6 of those FLOPs (no
  weight gradients for the frozen base).

TRL's ``GRPOTrainer`` (the baseline the update issue compares against) is not installed in this
environment, so that comparison is not run here; the output says so.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
THREADS = 2


def matmul_peak_gflops(sizes: tuple[int, ...] = (2048, 4096), repeats: int = 3) -> float:
    """Best fp32 ``torch.mm`` throughput over square sizes, GFLOP/s."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - started) / 1e9)
    return best


class RssSampler:
    """Peak resident set size of this process, sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self._process, self._interval = psutil.Process(), interval
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def synthetic_batch(episodes: int, tokens: int, prompt_tokens: int, vocab: int, seed: int = 0) -> list:
    """``episodes`` samples of ``tokens`` ids; groups of two with advantages +1 / -1."""
    from reinflow.train_batch import TrainSample

    rng = random.Random(seed)
    samples = []
    for k in range(episodes):
        ids = [1] + [rng.randrange(2, vocab) for _ in range(tokens - 1)]
        mask = [0] * prompt_tokens + [1] * (tokens - prompt_tokens)
        logprobs = [0.0] * prompt_tokens + [-2.0] * (tokens - prompt_tokens)
        samples.append(TrainSample(ids, mask, logprobs, 1.0 if k % 2 == 0 else -1.0, f"task{k // 2}#{k % 2}"))
    return samples


def worker(args: argparse.Namespace) -> dict:
    """One configuration, in this (fresh) process: load, warm up, time ``args.steps`` steps."""
    from reinflow.config import FullTuning, LoraTuning, load_config
    from reinflow.models import SMOLLM2, resolve_model
    from reinflow.policy import PolicyTrainer

    torch.set_num_threads(THREADS)
    config = load_config(ROOT / "configs" / "quickstart.yaml", [f"model.path={SMOLLM2}"])
    config.model.tuning = LoraTuning() if args.worker == "lora" else FullTuning()
    trainer = PolicyTrainer(config, resolve_model(SMOLLM2), device="cpu")
    samples = synthetic_batch(args.episodes, args.tokens, args.prompt_tokens, trainer.model.config.vocab_size)
    rss_loaded = RssSampler().peak
    for _ in range(args.warmup):
        trainer.train_step(samples)
    seconds, cpu_seconds, peaks = [], [], []
    with RssSampler() as sampler:
        for _ in range(args.steps):
            peaks.append(matmul_peak_gflops(sizes=(4096,), repeats=2))  # under the step's own load
            cpu = time.process_time()
            seconds.append(trainer.train_step(samples)["update_seconds"])
            cpu_seconds.append(time.process_time() - cpu)
    return {
        "tuning": args.worker,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainer.parameters.values()),
        "tokens_per_step": args.episodes * args.tokens,
        "step_seconds": seconds,
        "step_cpu_seconds": cpu_seconds,
        "adjacent_peak_gflops": peaks,
        "rss_after_load_bytes": rss_loaded,
        "rss_peak_during_steps_bytes": sampler.peak,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def run_configuration(tuning: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", tuning, "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--episodes", str(args.episodes), "--tokens", str(args.tokens),
               "--prompt-tokens", str(args.prompt_tokens)]
    done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(results: list[dict], peak_gflops: float) -> dict:
    rows = []
    for r in results:
        best, median = min(r["step_seconds"]), statistics.median(r["step_seconds"])
        flops = 6 * r["parameters"] * r["tokens_per_step"]
        rows.append({
            "tuning": r["tuning"],
            "trainable_parameters": r["trainable_parameters"],
            "best_step_seconds": round(best, 3),
            "median_step_seconds": round(median, 3),
            "tokens_per_second": round(r["tokens_per_step"] / best, 1),
            "cpu_seconds_per_step": round(statistics.median(r["step_cpu_seconds"]), 2),
            "peak_rss_mib": round(r["ru_maxrss_bytes"] / 2**20),
            "peak_rss_during_steps_mib": round(r["rss_peak_during_steps_bytes"] / 2**20),
            "model_flop_utilisation": round(flops / best / (peak_gflops * 1e9), 3),
            "model_flop_utilisation_median": round(flops / median / (peak_gflops * 1e9), 3),
            "model_flop_utilisation_same_load": round(statistics.median(
                flops / s / (p * 1e9) for s, p in zip(r["step_seconds"], r["adjacent_peak_gflops"])), 3),
        })
    return {"matmul_peak_gflops": round(peak_gflops, 1), "parameters": results[0]["parameters"],
            "tokens_per_step": results[0]["tokens_per_step"], "results": rows,
            "trl_baseline": "not run: TRL (GRPOTrainer) is not installed in this environment"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuning", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per episode")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="of which untrained prompt")
    parser.add_argument("--worker", choices=["full", "lora"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    torch.set_num_threads(THREADS)
    load_before = os.getloadavg()[0]
    peak = matmul_peak_gflops()
    results = [run_configuration(tuning, args) for tuning in args.tuning]
    peak = max([peak, matmul_peak_gflops()] + [p for r in results for p in r["adjacent_peak_gflops"]])
    figures = report(results, peak) | {"load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    print(f"fp32 matmul peak: {figures['matmul_peak_gflops']} GFLOP/s ({THREADS} threads); model "
          f"{figures['parameters'] / 1e6:.1f}M parameters; {figures['tokens_per_step']} tokens per step")
    print(f"{'tuning':<6} {'best s':>7} {'median s':>9} {'CPU s':>6} {'tokens/s':>9} {'peak RSS MiB':>13} "
          f"{'MFU':>6} {'MFU same load':>14}")
    for row in figures["results"]:
        print(f"{row['tuning']:<6} {row['best_step_seconds']:>7} {row['median_step_seconds']:>9} "
              f"{row['cpu_seconds_per_step']:>6} {row['tokens_per_second']:>9} {row['peak_rss_mib']:>13} "
              f"{row['model_flop_utilisation']:>6} {row['model_flop_utilisation_same_load']:>14}")
    print(f"1-minute load average before/after: {figures['load_average_1min']} on {os.cpu_count()} CPUs "
          "(above the thread count, another process shared the cores: wall times are inflated)")
    print(f"TRL GRPOTrainer baseline: {figures['trl_baseline']}")
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
