"""Policy-update benchmark on the built-in model (SmolLM2-135M-Instruct, fp32, CPU, 2 threads),
ours against TRL's ``GRPOTrainer`` on the same batch.

    .venv/bin/python bench/update_step.py            # ~8 minutes on 2 cores (ours and TRL)

One GRPO update step on a batch of 8 episodes x 256 tokens (64 prompt tokens, 192 generated and
trained; random token ids, seeded; groups of two with advantages +1 / -1), for full fine-tuning
and LoRA (rank 16 on every linear layer), each side and configuration in its own subprocess so
that its peak memory is its own:

- **ours**: ``PolicyTrainer.train_step`` (collate, forward, GRPO loss, backward, clip, AdamW,
  LR scheduler step), timed by the step itself (``update_seconds``);
- **TRL**: ``GRPOTrainer`` (``trl``, the ``bench`` extra) on the same model, the same 8 sequences
  split into the same prompt and completion ids, the same advantages, the TRL ``loss_type`` that
  aggregates like our ``train.loss_aggregation`` (``dapo`` for ``token_mean``), the same lr, AdamW,
  weight decay and grad clip, no generation: its generation + scoring step is replaced by the
  prepared batch, and one timed step is TRL's ``training_step`` (loss + backward) + clip + AdamW
  step + scheduler step + ``zero_grad``, from its own training loop (``bench/_trl_grpo.py`` says
  exactly what is in and out). TRL's gradient checkpointing is off (ours recomputes nothing;
  ``--trl-gradient-checkpointing`` turns TRL's default on). Both take ``old_logp`` from the step's
  own forward (one optimisation epoch), and the first step's pre-clip gradient norm of both is
  printed: equal when both compute the same gradient (LoRA adapters are initialised after the
  same seed on both sides).

Reported per side and configuration:

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
  weight gradients for the frozen base);
- the ratios ours / TRL of tokens/s and peak RSS, and the issue's requirements: ours >= 1.3x TRL's
  tokens/s at no more than its peak RSS, MFU >= 0.5 for full fine-tuning.

Without ``trl`` installed (``pip install -c constraints.txt -e '.[bench]'``) only our side runs
and the output says why.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.util
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
GROUP_SIZE = 2
TRL_MISSING = ("not run: TRL is not installed; install the pinned baseline with "
               "`.venv/bin/pip install -c constraints.txt -e '.[bench]'`")
REQUIRED_SPEEDUP, REQUIRED_MFU = 1.3, 0.5


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
    from reinflow.training.train_batch import TrainSample

    rng = random.Random(seed)
    samples = []
    for k in range(episodes):
        ids = [1] + [rng.randrange(2, vocab) for _ in range(tokens - 1)]
        mask = [0] * prompt_tokens + [1] * (tokens - prompt_tokens)
        logprobs = [0.0] * prompt_tokens + [-2.0] * (tokens - prompt_tokens)
        samples.append(TrainSample(ids, mask, logprobs, 1.0 if k % 2 == 0 else -1.0, f"task{k // 2}#{k % 2}"))
    return samples


def worker(args: argparse.Namespace) -> dict:
    """One side and configuration, in this (fresh) process: load, warm up, time ``args.steps`` steps."""
    from reinflow.config import FullTuning, LoraTuning, load_config
    from reinflow.config.models import resolve_model

    torch.set_num_threads(THREADS)
    side, tuning = ("trl", args.worker[4:]) if args.worker.startswith("trl-") else ("ours", args.worker)
    # no truncated importance weight: the synthetic batch has no real engine log-probs (TRL applies
    # one only to vLLM-generated samples); with it, ours would train on a gradient ~1000x smaller
    config = load_config(ROOT / "configs" / "quickstart.yaml", [f"model.path={args.model}",
                                                                 "train.importance_sampling_cap=null", *args.set])
    config.model.tuning = LoraTuning() if tuning == "lora" else FullTuning()
    folder = resolve_model(args.model)
    measure = _trl_steps if side == "trl" else _our_steps
    return {"side": side, "tuning": tuning, "tokens_per_step": args.episodes * args.tokens} | measure(
        args, config, folder
    ) | {"ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _our_steps(args: argparse.Namespace, config, folder: Path) -> dict:
    from reinflow.training.policy import PolicyTrainer

    trainer = PolicyTrainer(config, folder, device="cpu")
    samples = synthetic_batch(args.episodes, args.tokens, args.prompt_tokens, trainer.model.config.vocab_size)
    rss_loaded = RssSampler().peak
    grad_norms = [trainer.train_step(samples)["grad_norm"] for _ in range(args.warmup)]
    seconds, cpu_seconds, peaks = [], [], []
    with RssSampler() as sampler:
        for _ in range(args.steps):
            peaks.append(matmul_peak_gflops(sizes=(4096,), repeats=2))  # under the step's own load
            cpu = time.process_time()
            metrics = trainer.train_step(samples)
            seconds.append(metrics["update_seconds"])
            cpu_seconds.append(time.process_time() - cpu)
            grad_norms.append(metrics["grad_norm"])
    return {
        "loss_aggregation": config.train.loss_aggregation,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainer.parameters.values()),
        "step_seconds": seconds,
        "step_cpu_seconds": cpu_seconds,
        "adjacent_peak_gflops": peaks,
        "first_step_grad_norm": grad_norms[0],
        "rss_after_load_bytes": rss_loaded,
        "rss_peak_during_steps_bytes": sampler.peak,
    }


def _trl_steps(args: argparse.Namespace, config, folder: Path) -> dict:
    """TRL's side (``bench/_trl_grpo.py``); the RSS sampler starts with the first timed step."""
    from transformers import AutoConfig

    from _trl_grpo import run_trl

    vocab = AutoConfig.from_pretrained(folder).vocab_size
    samples = synthetic_batch(args.episodes, args.tokens, args.prompt_tokens, vocab)
    peaks: list[float] = []
    samplers: list[RssSampler] = []

    def before_timed_step() -> None:
        if not samplers:
            samplers.append(RssSampler().__enter__())
        peaks.append(matmul_peak_gflops(sizes=(4096,), repeats=2))  # under the step's own load

    figures = run_trl(config, folder, samples, GROUP_SIZE, args.warmup, args.steps, THREADS,
                      before_timed_step, gradient_checkpointing=args.trl_gradient_checkpointing)
    samplers[0].__exit__()
    return figures | {"adjacent_peak_gflops": peaks, "rss_peak_during_steps_bytes": samplers[0].peak}


def run_configuration(worker_name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", worker_name, "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--episodes", str(args.episodes), "--tokens", str(args.tokens),
               "--prompt-tokens", str(args.prompt_tokens), "--model", args.model]
    if args.trl_gradient_checkpointing:
        command.append("--trl-gradient-checkpointing")
    for override in args.set:
        command += ["--set", override]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"error: the {worker_name} worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(r: dict, peak_gflops: float) -> dict:
    """One result row: times, tokens/s, memory and MFU of one side and configuration."""
    best, median = min(r["step_seconds"]), statistics.median(r["step_seconds"])
    flops = 6 * r["parameters"] * r["tokens_per_step"]
    return {
        "side": r["side"],
        "tuning": r["tuning"],
        "loss": r.get("loss_type", r.get("loss_aggregation")),
        "trainable_parameters": r["trainable_parameters"],
        "best_step_seconds": round(best, 3),
        "median_step_seconds": round(median, 3),
        "tokens_per_second": round(r["tokens_per_step"] / best, 1),
        "cpu_seconds_per_step": round(statistics.median(r["step_cpu_seconds"]), 2),
        "peak_rss_mib": round(r["ru_maxrss_bytes"] / 2**20),
        "peak_rss_during_steps_mib": round(r["rss_peak_during_steps_bytes"] / 2**20),
        "first_step_grad_norm": round(r["first_step_grad_norm"], 6),
        "torch_threads": r.get("torch_threads", [THREADS]),
        "model_flop_utilisation": round(flops / best / (peak_gflops * 1e9), 3),
        "model_flop_utilisation_median": round(flops / median / (peak_gflops * 1e9), 3),
        "model_flop_utilisation_same_load": round(statistics.median(
            flops / s / (p * 1e9) for s, p in zip(r["step_seconds"], r["adjacent_peak_gflops"])), 3),
    }


def compare(rows: list[dict]) -> list[dict]:
    """Per tuning with both sides: ratios ours / TRL and the issue's requirements."""
    comparisons = []
    for ours in (row for row in rows if row["side"] == "ours"):
        trl = next((row for row in rows if row["side"] == "trl" and row["tuning"] == ours["tuning"]), None)
        if trl is None:
            continue
        speedup = ours["tokens_per_second"] / trl["tokens_per_second"]
        memory = ours["peak_rss_mib"] / trl["peak_rss_mib"]
        comparisons.append({
            "tuning": ours["tuning"],
            "tokens_per_second_ours_over_trl": round(speedup, 2),
            "peak_rss_ours_over_trl": round(memory, 2),
            "peak_rss_during_steps_ours_over_trl": round(
                ours["peak_rss_during_steps_mib"] / trl["peak_rss_during_steps_mib"], 2),
            "meets_speedup": speedup >= REQUIRED_SPEEDUP,
            "meets_memory": memory <= 1.0,
        })
    return comparisons


def report(results: list[dict], peak_gflops: float, trl_note: str) -> dict:
    rows = [summarise(r, peak_gflops) for r in results]
    full = [row for row in rows if row["side"] == "ours" and row["tuning"] == "full"]
    return {"matmul_peak_gflops": round(peak_gflops, 1), "parameters": results[0]["parameters"],
            "tokens_per_step": results[0]["tokens_per_step"], "results": rows, "comparison": compare(rows),
            "meets_mfu_full": full[0]["model_flop_utilisation"] >= REQUIRED_MFU if full else None,
            "trl_baseline": trl_note}


def print_figures(figures: dict) -> None:
    print(f"fp32 matmul peak: {figures['matmul_peak_gflops']} GFLOP/s ({THREADS} threads); model "
          f"{figures['parameters'] / 1e6:.1f}M parameters; {figures['tokens_per_step']} tokens per step")
    print(f"{'side':<5} {'tuning':<6} {'loss':<10} {'best s':>7} {'median s':>9} {'CPU s':>6} {'tokens/s':>9} "
          f"{'peak RSS MiB':>13} {'in steps':>9} {'MFU':>6} {'MFU same load':>14} {'1st grad norm':>14}")
    for row in figures["results"]:
        print(f"{row['side']:<5} {row['tuning']:<6} {row['loss']:<10} {row['best_step_seconds']:>7} "
              f"{row['median_step_seconds']:>9} {row['cpu_seconds_per_step']:>6} {row['tokens_per_second']:>9} "
              f"{row['peak_rss_mib']:>13} {row['peak_rss_during_steps_mib']:>9} {row['model_flop_utilisation']:>6} "
              f"{row['model_flop_utilisation_same_load']:>14} {row['first_step_grad_norm']:>14}")
    for c in figures["comparison"]:
        print(f"{c['tuning']}: ours/TRL tokens/s {c['tokens_per_second_ours_over_trl']}x "
              f"(required >= {REQUIRED_SPEEDUP}: {'met' if c['meets_speedup'] else 'NOT met'}); peak RSS "
              f"{c['peak_rss_ours_over_trl']}x, during steps {c['peak_rss_during_steps_ours_over_trl']}x "
              f"(required <= 1: {'met' if c['meets_memory'] else 'NOT met'})")
    if figures["meets_mfu_full"] is not None:
        print(f"full fine-tuning MFU >= {REQUIRED_MFU}: {'met' if figures['meets_mfu_full'] else 'NOT met'}")
    print(f"1-minute load average before/after: {figures['load_average_1min']} on {os.cpu_count()} CPUs "
          "(above the thread count, another process shared the cores: wall times are inflated)")
    print(f"TRL GRPOTrainer baseline: {figures['trl_baseline']}")


def trl_skip_reason(args: argparse.Namespace) -> str | None:
    """Why the TRL side does not run, or ``None`` when it does."""
    if args.no_trl:
        return "not run: --no-trl"
    if importlib.util.find_spec("trl") is None:
        return TRL_MISSING
    return None


def trl_description(args: argparse.Namespace) -> str:
    from importlib.metadata import version

    checkpointing = "on" if args.trl_gradient_checkpointing else "off"
    return (f"trl {version('trl')} GRPOTrainer, its own training loop on the precomputed batch (no generation), "
            f"gradient checkpointing {checkpointing}; what is timed: see bench/_trl_grpo.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuning", nargs="+", default=["full", "lora"], choices=["full", "lora"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256, help="tokens per episode")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="of which untrained prompt")
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct", help="e.g. builtin:tiny-random-llama for a smoke run")
    parser.add_argument("--no-trl", action="store_true", help="skip the TRL baseline")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for our side, e.g. train.activation_checkpointing=true (repeatable)")
    parser.add_argument("--trl-gradient-checkpointing", action="store_true",
                        help="TRL with its default gradient checkpointing (recomputes activations)")
    parser.add_argument("--worker", choices=["full", "lora", "trl-full", "trl-lora"], help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.episodes % GROUP_SIZE:
        parser.error(f"--episodes must be a multiple of the group size {GROUP_SIZE}, got {args.episodes}")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    torch.set_num_threads(THREADS)
    skipped = trl_skip_reason(args)
    if skipped:
        print(f"TRL GRPOTrainer baseline {skipped}", file=sys.stderr)
    load_before = os.getloadavg()[0]
    peak = matmul_peak_gflops()
    sides = ["ours"] if skipped else ["ours", "trl"]
    names = [tuning if side == "ours" else f"trl-{tuning}" for tuning in args.tuning for side in sides]
    results = [run_configuration(name, args) for name in names]
    peak = max([peak, matmul_peak_gflops()] + [p for r in results for p in r["adjacent_peak_gflops"]])
    figures = report(results, peak, skipped or trl_description(args)) | {
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    print_figures(figures)
    print(json.dumps(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
