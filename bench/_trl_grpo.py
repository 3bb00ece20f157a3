"""TRL's ``GRPOTrainer`` as the baseline of ``bench/update_step.py``: the same batch, no generation.

``PrecomputedGRPOTrainer`` is TRL's own trainer with one method replaced: its generation + reward
scoring step (``_generate_and_score_completions``) returns a batch prepared once from our
``TrainSample``s (prompt ids left-padded, completion ids right-padded, advantages, the trained
token count), so ``trainer.train()`` runs TRL's unchanged training loop on exactly our sequences.

What one timed step is (a ``TrainerCallback``, from ``on_step_begin`` to ``on_step_end``): TRL's
``training_step`` (``_prepare_inputs``, which hands out the prepared batch; ``compute_loss``:
forward with TRL's fused lm_head, the clipped GRPO loss; ``accelerator.backward``), gradient
clipping, the AdamW step, the LR scheduler step and ``zero_grad``. Outside it: the dataloader
fetch of the (ignored) prompts and TRL's logging. Ours (``PolicyTrainer.train_step``) times
collate, forward, loss, backward, clip, AdamW step and scheduler step.

Settings mirror our trainer's: one micro-batch per step (``per_device_train_batch_size`` = the
batch, no accumulation), ``num_iterations`` 1 (TRL then takes ``old_logp`` from the same forward,
detached, as ours does), ``beta`` = ``kl_coef`` (0: no reference model), ``epsilon`` =
``clip_ratio``, ``epsilon_high`` = ``clip_ratio_high``, the sampling temperature, fp32 (``bf16=False``), fused AdamW with our lr, weight
decay and betas, a constant LR, ``max_grad_norm``. The loss type is the TRL one that aggregates
like ours (``LOSS_TYPES``): our ``token_mean`` divides the batch's token sum by its trained-token
count, which is TRL's ``dapo`` (normaliser ``num_items_in_batch``, the trained tokens of the
generation batch); our ``sequence_mean`` is TRL's ``grpo`` (mean over sequences of per-sequence
token means). Gradient checkpointing (on in TRL's defaults) is off unless asked for: ours does
not recompute activations, so with it off both sides do the same arithmetic. LoRA: the same
``LoraConfig`` as ours (rank, alpha, dropout, target modules), the adapter initialised after
``torch.manual_seed(train.seed)`` on both sides.

Same optimisation, checked: the first step's pre-clip gradient norm is printed for both sides;
on the tiny test model it agrees to all printed digits, full and LoRA. Where TRL's work differs
from ours it is TRL's own design, kept as is: on a device without Triton (any CPU) its fused
lm_head scores *every* position (prompt included; labels -100 are masked afterwards) in
``[4096 tokens x 32768 vocab]`` fp32 tiles folded in torch, forward and again in backward, while
ours runs the lm_head only on the trained positions, in 128-row chunks.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

LOSS_TYPES = {"token_mean": "dapo", "sequence_mean": "grpo"}
"""Our ``train.loss_aggregation`` → the TRL ``loss_type`` with the same normaliser."""


def prompt_length(sample) -> int:
    """Tokens before the first trained one; the trained tokens must be one contiguous tail."""
    mask = sample.loss_mask
    start = mask.index(1) if 1 in mask else len(mask)
    if any(flag != 1 for flag in mask[start:]):
        raise ValueError(f"sample {sample.episode_id}: TRL needs one prompt then one completion, "
                         "but its trained tokens are not a contiguous tail")
    return start


def trl_batch(samples: list, group_size: int) -> dict[str, torch.Tensor]:
    """The dict ``GRPOTrainer._generate_and_score_completions`` returns, from our samples."""
    starts = [prompt_length(s) for s in samples]
    prompt_width = max(starts)
    completion_width = max(len(s.token_ids) - start for s, start in zip(samples, starts))
    rows = len(samples)
    prompt_ids = torch.zeros(rows, prompt_width, dtype=torch.long)
    prompt_mask = torch.zeros(rows, prompt_width, dtype=torch.long)
    completion_ids = torch.zeros(rows, completion_width, dtype=torch.long)
    completion_mask = torch.zeros(rows, completion_width, dtype=torch.long)
    for row, (s, start) in enumerate(zip(samples, starts)):
        prompt, completion = s.token_ids[:start], s.token_ids[start:]
        prompt_ids[row, prompt_width - start:] = torch.tensor(prompt, dtype=torch.long)  # left-padded
        prompt_mask[row, prompt_width - start:] = 1
        completion_ids[row, :len(completion)] = torch.tensor(completion, dtype=torch.long)  # right-padded
        completion_mask[row, :len(completion)] = 1
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        "num_items_in_batch": completion_mask.sum(),
    }


def _trainer_class():
    from trl import GRPOTrainer

    class PrecomputedGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` whose generation + scoring step returns a fixed prepared batch."""

        def __init__(self, *args, batch: dict[str, torch.Tensor], **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._prepared = batch

        def _generate_and_score_completions(self, inputs: list[dict]) -> dict[str, torch.Tensor]:
            return dict(self._prepared)

    return PrecomputedGRPOTrainer


def _timer_class():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall and CPU seconds of every optimizer step after ``warmup``; the logged figures of each."""

        def __init__(self, warmup: int, before_step: Callable[[], None]) -> None:
            self.warmup, self.before_step = warmup, before_step
            self.seconds: list[float] = []
            self.cpu_seconds: list[float] = []
            self.logs: list[dict] = []
            self.threads: list[int] = []
            self._started = (0.0, 0.0)

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step >= self.warmup:
                self.before_step()
            self.threads.append(torch.get_num_threads())
            self._started = (time.perf_counter(), time.process_time())

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step > self.warmup:  # global_step is already incremented here
                self.seconds.append(time.perf_counter() - self._started[0])
                self.cpu_seconds.append(time.process_time() - self._started[1])

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs or {}))

    return StepTimer


def _unused_reward(completions, **kwargs) -> list[float]:
    raise RuntimeError("the bench feeds precomputed advantages: TRL's reward functions are never called")


def grpo_config(config, samples: list, group_size: int, max_steps: int, output_dir: Path,
                gradient_checkpointing: bool):
    """TRL's ``GRPOConfig`` mirroring our ``ExperimentConfig`` (see the module docstring)."""
    from trl import GRPOConfig

    train = config.train
    if train.epochs_per_batch != 1:
        raise ValueError(f"the TRL baseline needs train.epochs_per_batch 1, got {train.epochs_per_batch}")
    return GRPOConfig(
        output_dir=str(output_dir), use_cpu=True, bf16=False, fp16=False, report_to="none",
        save_strategy="no", disable_tqdm=True, logging_steps=1, seed=train.seed, data_seed=train.seed,
        gradient_checkpointing=gradient_checkpointing,
        per_device_train_batch_size=len(samples), gradient_accumulation_steps=1, num_iterations=1,
        num_generations=group_size, max_steps=max_steps,
        max_completion_length=max(len(s.token_ids) - prompt_length(s) for s in samples),
        loss_type=LOSS_TYPES[train.loss_aggregation], beta=train.kl_coef, epsilon=train.clip_ratio,
        epsilon_high=train.clip_ratio_high,  # None: TRL's symmetric clip, as ours
        temperature=config.rollout.temperature or 1.0,
        learning_rate=train.lr, weight_decay=train.weight_decay, max_grad_norm=train.max_grad_norm,
        optim="adamw_torch_fused", lr_scheduler_type="constant", warmup_steps=0,
    )


def run_trl(config, model_folder: Path, samples: list, group_size: int, warmup: int, steps: int,
            threads: int, before_step: Callable[[], None], gradient_checkpointing: bool = False) -> dict:
    """Build TRL's trainer on ``samples`` and run ``warmup + steps`` optimizer steps; timings."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

    from reinflow.config import LoraTuning

    tuning = config.model.tuning
    peft_config = None
    if isinstance(tuning, LoraTuning):
        peft_config = LoraConfig(r=tuning.rank, lora_alpha=tuning.alpha, lora_dropout=tuning.dropout,
                                 target_modules=list(tuning.target_modules), task_type="CAUSAL_LM")
    torch.manual_seed(config.train.seed)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    prompts = Dataset.from_dict({"prompt": ["unused: the batch is precomputed"] * (len(samples) // group_size)})
    timer = _timer_class()(warmup, before_step)
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as output_dir:
        args = grpo_config(config, samples, group_size, warmup + steps, Path(output_dir), gradient_checkpointing)
        trainer = _trainer_class()(
            model=model, reward_funcs=_unused_reward, args=args, train_dataset=prompts,
            processing_class=AutoTokenizer.from_pretrained(model_folder), peft_config=peft_config,
            callbacks=[timer], batch=trl_batch(samples, group_size),
        )
        trainer.remove_callback(PrinterCallback)  # keep stdout for the JSON result
        torch.set_num_threads(threads)
        trainer.train()
    first = next(log for log in timer.logs if "grad_norm" in log)
    return {
        "loss_type": args.loss_type,
        "gradient_checkpointing": gradient_checkpointing,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "step_seconds": timer.seconds,
        "step_cpu_seconds": timer.cpu_seconds,
        "torch_threads": sorted(set(timer.threads)),
        "first_step_grad_norm": float(first["grad_norm"]),
        "first_step_loss": float(first["loss"]),
    }
